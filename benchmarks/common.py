"""Shared pieces of the benchmark scripts: machine facts, the neural-tangents
worker, result files."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

HERE = Path(__file__).resolve().parent
# NTKSCALE_BENCH_RESULTS redirects every script's result files (the suite and its tests use it).
RESULTS = Path(os.environ.get("NTKSCALE_BENCH_RESULTS", HERE / "results"))
NT_VENV = Path(os.environ.get("NT_VENV", Path.home() / ".cache" / "ntkscale" / "nt-venv"))


def machine() -> Dict[str, Any]:
    import numpy as np

    try:
        import psutil

        mem = round(psutil.virtual_memory().total / 2 ** 30, 1)
    except Exception:  # pragma: no cover
        mem = None
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:  # pragma: no cover
        pass
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem,
        "python": platform.python_version(), "numpy": np.__version__,
        "load_1min": round(os.getloadavg()[0], 2),
    }


def nt_python() -> Optional[Path]:
    """The neural-tangents venv's python, or None (build it: bash benchmarks/nt_venv.sh)."""
    py = NT_VENV / "bin" / "python"
    return py if py.exists() else None


def run_nt(args: List[str], timeout: float = 1800) -> Dict[str, Any]:
    """Run benchmarks/nt_worker.py in the neural-tangents venv; its JSON line."""
    py = nt_python()
    if py is None:
        raise RuntimeError(f"neural-tangents venv not found at {NT_VENV}; build it with bash benchmarks/nt_venv.sh")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([str(py), str(HERE / "nt_worker.py"), *args], capture_output=True, text=True,
                         timeout=timeout, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"neural-tangents worker failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def save_result(name: str, result: Dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, default=float) + "\n")
    return path


def print_table(rows: List[Dict[str, Any]], columns: List[str], file=sys.stdout) -> None:
    print("| " + " | ".join(columns) + " |", file=file)
    print("|" + "---|" * len(columns), file=file)
    for row in rows:
        cells = []
        for c in columns:
            v = row.get(c, "")
            cells.append(f"{v:.3g}" if isinstance(v, float) else str(v))
        print("| " + " | ".join(cells) + " |", file=file)
