"""The benchmark suite: every comparison side by side in one run, results + README.

    python -m benchmarks                      # full run (documented duration in README.md)
    python -m benchmarks --quick              # smaller sizes, < 5 min on 2 cores
    python -m benchmarks --only fc,cntk       # a subset (others keep their last results)
    python -m benchmarks --list               # what there is

Each benchmark is an existing script run as a subprocess with its own flags
(``REGISTRY`` below: name → quick and full command, how to read its result
file, the Markdown it contributes). The scripts check that what they time is
correct (ntkscale against its peer, or against a reference) before they report
a speed; a script that fails, or a peer that is missing, is reported with the
reason instead of a number.

Outputs (``--results-dir``, default ``benchmarks/results``):

* ``suite.json``: machine, versions, date, and per benchmark its command,
  status, duration, load average and parsed tables (merged: a ``--only`` run
  replaces just its entries);
* ``suite-raw/<quick|full>/``: each script's own result file (the scripts
  write there through ``NTKSCALE_BENCH_RESULTS``) and its log;
* ``ntkscale/costs/data/cpu.json`` (package data; ``costmodel_cpu.json`` under a custom ``--results-dir``): the cost-model calibration;
* plots in ``benchmarks/plots`` (``<results-dir>/plots`` with a custom
  results dir) and the section of ``benchmarks/README.md`` between
  ``<!-- suite:begin -->`` and ``<!-- suite:end -->`` (``<results-dir>/README.md``
  with a custom results dir).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import importlib.metadata as md
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PY = sys.executable
BEGIN, END = "<!-- suite:begin -->", "<!-- suite:end -->"

sys.path.insert(0, str(HERE))
from common import NT_VENV, machine, nt_python  # noqa: E402
from protocol import check_main  # noqa: E402


@dataclasses.dataclass
class Ctx:
    quick: bool
    results: Path
    raw: Path
    plots: Path
    readme: Optional[Path]
    scratch: Path
    nt: Optional[Path]

    @property
    def mode(self) -> str:
        return "quick" if self.quick else "full"

    @property
    def nt_flags(self) -> List[str]:
        return [] if self.nt else ["--no-nt"]

    @property
    def nt_note(self) -> str:
        return (f"neural-tangents comparison not run: its venv is not built at {NT_VENV} "
                "(build it once with `bash benchmarks/nt_venv.sh`, ~2.8 GB)")


Table = Dict[str, Any]  # {"caption": str, "columns": [...], "rows": [{...}]}


@dataclasses.dataclass
class Bench:
    name: str
    title: str
    what: str
    command: Callable[[Ctx], List[str]]
    read: Callable[[Ctx], Dict[str, Any]]
    quick_s: int
    full_s: int
    default: bool = True
    precheck: Optional[Callable[[Ctx], Dict[str, Any]]] = None
    before: Optional[Callable[[Ctx], None]] = None


def _script(name: str) -> List[str]:
    return [PY, str(HERE / name)]


def _load(path: Path) -> Any:
    if not path.exists():
        raise RuntimeError(f"the script wrote no {path.name} in {path.parent}")
    return json.loads(path.read_text())


def _f(v: Any, digits: int = 3) -> Any:
    """Round floats to ``digits`` significant figures for the tables."""
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return float(f"{v:.{digits}g}")
    return v


# ----------------------------------------------------------------------------- fc


def fc_read(ctx: Ctx) -> Dict[str, Any]:
    res = _load(ctx.raw / "fc.json")
    if res.get("skipped"):
        return {"tables": [], "notes": [ctx.nt_note], "load": res["machine"].get("load_1min"), "targets": []}
    rows = []
    for r in res["rows"]:  # cross calls first: most Gram blocks are cross blocks
        lo, hi = r["speedup_iqr"]
        rows.append({"call": r["call"], "dtype": r["dtype"], "n": r["n"],
                     "ntkscale s (median, min–max)": f"{r['ours_s']:.3g} ({r['ours_min_s']:.3g}–{r['ours_max_s']:.3g})",
                     "neural-tangents s": f"{r['nt_s']:.3g} ({r['nt_min_s']:.3g}–{r['nt_max_s']:.3g})",
                     "speedup (IQR)": f"**{r['speedup_vs_nt']:.2f}×** ({lo:.2f}–{hi:.2f})",
                     "GEMM floor s": _f(r["gemm_s"]), "ntkscale / floor": _f(r["ours_over_gemm"]),
                     "ntkscale peak MiB": _f(r["ours_peak_mib"]), "NT peak MiB": _f(r["nt_peak_mib"]),
                     "max rel diff vs NT": _f(r["max_rel_diff_vs_nt"], 2)})
    a = res["args"]
    r0 = res["rows"][0] if res["rows"] else {}
    notes = ["Fair protocol (benchmarks/protocol.py): both libraries in their own processes, pinned to the same "
             f"CPUs {r0.get('cpus')} with {r0.get('threads')} threads (BLAS, numba, XLA), outputs checked equal "
             "before timing (max rel ≤ 1e-7 float64, ≤ 2e-3 float32), interleaved ABBA repeats, medians with "
             "min–max; peak MiB is the peak RSS above each process's resident size before the call.",
             "GEMM floor: the input GEMM x1 @ x2ᵀ alone in the same process and dtype."]
    return {"tables": [{"caption": f"FC ReLU depth {a['depth']} NTK, n = {a['n']}, d = {a['d']}, "
                                   f"median of {a['repeats']}", "rows": rows}],
            "notes": notes, "load": res["machine"].get("load_1min"), "targets": res.get("targets", [])}


# ----------------------------------------------------------------------------- cntk


def cntk_before(ctx: Ctx) -> None:
    (ctx.raw / "cntk.jsonl").unlink(missing_ok=True)


def cntk_cmd(ctx: Ctx) -> List[str]:
    configs = ["8:32:float64", "8:32:float32"] if ctx.quick else \
        ["8:64:float64", "8:64:float32", "28:16:float64", "28:16:float32"]
    return _script("bench_cntk.py") + ["--configs", *configs, "--repeats", "3" if ctx.quick else "5",
                                       "--out", str(ctx.raw / "cntk.jsonl")] + ctx.nt_flags


def cntk_read(ctx: Ctx) -> Dict[str, Any]:
    path = ctx.raw / "cntk.jsonl"
    if not ctx.nt:
        return {"tables": [], "notes": [ctx.nt_note], "targets": []}
    if not path.exists():
        raise RuntimeError("bench_cntk.py wrote no cntk.jsonl")
    rows = []
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for r in recs:  # cross calls first (the script runs them first)
        lo, hi = r["ratio_iqr"]
        rows.append({"call": r["call"], "image": f"{r['hw']}×{r['hw']}×1", "dtype": r["dtype"], "n": r["n"],
                     "ntkscale s (median, min–max)":
                         f"{r['seconds']:.3g} ({r['seconds_min']:.3g}–{r['seconds_max']:.3g})",
                     "neural-tangents s": f"{r['nt_seconds']:.3g} ({r['nt_seconds_min']:.3g}–{r['nt_seconds_max']:.3g})",
                     "speedup (IQR)": f"**{r['ratio']:.1f}×** ({lo:.1f}–{hi:.1f})",
                     "max rel err vs NT": _f(r["max_rel_err"], 2),
                     "flops/entry": _f(r["flops_per_entry"]), "GFLOP/s": _f(r["gflops"]),
                     "% of peak": _f(100 * r["fraction_of_peak"], 2) if r.get("fraction_of_peak") else "-"})
    targets_path = ctx.raw / "cntk_cntk_targets.json"
    targets = _load(targets_path)["targets"] if targets_path.exists() else []
    notes = ["Fair protocol (benchmarks/protocol.py): equal n and dtype on both sides, same pinned CPUs and "
             "threads, outputs checked equal before timing (max rel ≤ 1e-7 float64, ≤ 2e-3 float32), "
             "interleaved repeats, medians with min–max."]
    return {"tables": [{"caption": "CNTK-GAP depth 3 (`stax.presets.cntk(3)`) NTK, cross kernel n × n then the "
                                   "symmetric call", "rows": rows}],
            "notes": notes, "load": recs[0]["load"][0] if recs else None, "targets": targets}


# ----------------------------------------------------------------------------- estimator


def estimator_cmd(ctx: Ctx, tiny: bool = False) -> List[str]:
    if tiny:
        return _script("bench_estimator.py") + ["--tiny"]
    return _script("bench_estimator.py") + (["--quick"] if ctx.quick else []) + ctx.nt_flags


def estimator_read(ctx: Ctx, tiny: bool = False) -> Dict[str, Any]:
    res = _load(ctx.raw / ("estimator_tiny.json" if tiny else "estimator.json"))
    tm = res["timing"]
    rows = [{"what": r["what"], "fit s": _f(r["fit_s"]), "fit CPU s": _f(r.get("fit_cpu_s", "-")),
             "predict s": _f(r["predict_s"]),
             "total s": _f(r["total_s"]), "max rel diff vs sklearn": _f(r["max_rel_diff_vs_sklearn"], 2)}
            for r in tm["rows"]]
    acc = []
    for r in res["accuracy"]["rows"]:
        acc.append({"dataset": r["dataset"], "kernel": r["kernel"], "ntkscale": r["ntkscale"],
                    "neural-tangents (this run)": r.get("neural-tangents (this run)") or "-",
                    "neural-tangents (recorded)": r.get("neural-tangents (recorded)") or "-",
                    "note": r.get("note", "")})
    notes = [f"Kernels for the timing rows: {tm['kernel_s']:.2f} s (FC3 NTK, {tm['n_train']} + "
             f"{tm['n_test']}×{tm['n_train']} entries). Same predictions from all three rows (max rel ≤ 1e-6) "
             "checked before timing."]
    nt = res["accuracy"].get("nt")
    if nt:
        notes.append(f"neural-tangents {nt['nt']} (jax {nt['jax']}) ran the MNIST rows live on the same data: "
                     f"its K(test, train) matches ours to {max(nt['kte_max_rel_diff_nngp'], nt['kte_max_rel_diff_ntk']):.1e} "
                     "(max rel), and the accuracies agree within 0.002.")
    elif not tiny:
        notes.append(ctx.nt_note)
    return {"tables": [{"caption": f"NTKRegressor vs scikit-learn KernelRidge, {tm['data']} {tm['n_train']}/"
                                   f"{tm['n_test']}, FC3 NTK, float64, 10 outputs, ridge 1e-6 × mean diagonal",
                        "rows": rows},
                       {"caption": "Accuracy (kernel regression on centred one-hot targets, ridge 1e-6 relative)",
                        "rows": acc}],
            "notes": notes, "load": res["machine"].get("load_1min")}


# ----------------------------------------------------------------------------- cholesky


def cholesky_n(ctx: Ctx) -> int:
    return 2048 if ctx.quick else 15000


def cholesky_cmd(ctx: Ctx) -> List[str]:
    extra = ["--tile", "512"] if ctx.quick else []
    return _script("bench_cholesky.py") + ["--n", str(cholesky_n(ctx)), "--workdir", str(ctx.scratch / "cholesky"),
                                           *extra]


def cholesky_read(ctx: Ctx) -> Dict[str, Any]:
    r = _load(ctx.raw / f"cholesky_{cholesky_n(ctx)}.json")
    if not r["residual"] < 1e-10:
        raise RuntimeError(f"tiled Cholesky solve residual {r['residual']:.3g} >= 1e-10")
    row = {"n": r["n"], "dtype": r["dtype"], "scipy cho_factor s": _f(r.get("scipy_s", "-")),
           "tiled s": _f(r["tiled_s"]), "tile": r["tile"], "tiles": r["tiles"],
           "dask.array.linalg.cholesky s": _f(r.get("dask_s", "-")),
           "tiled / scipy": _f(r.get("tiled_vs_scipy", "-")), "tiled / dask": _f(r.get("tiled_vs_dask", "-")),
           "solve residual": _f(r["residual"], 2)}
    return {"tables": [{"caption": "Tiled out-of-core Cholesky (Zarr in, Zarr out) vs scipy (in memory) and "
                                   "dask.array.linalg.cholesky; SPD matrix G Gᵀ/256 + I", "rows": [row]}],
            "notes": ["Checked: the relative residual of a 4-column solve through the tiled factor is < 1e-10."],
            "load": r["machine"].get("load_1min")}


# ----------------------------------------------------------------------------- cg


def cg_cmd(ctx: Ctx) -> List[str]:
    if ctx.quick:
        return _script("bench_cg.py") + ["--n", "1000", "--rank", "100", "--ridges", "4", "--repeat", "1",
                                         "--stored-n"]
    return _script("bench_cg.py")


def cg_read(ctx: Ctx) -> Dict[str, Any]:
    res = _load(ctx.raw / "cg.json")
    tables, bad = [], []
    for run in res["runs"]:
        rows = []
        for r in run["solvers"]:
            if r.get("converged") is False:
                bad.append(f"{r['solver']} at n={run['n']}")
            rows.append({"solver": r["solver"], "iterations": r.get("iterations", "-"),
                         "iterations / plain": _f(r.get("iter_ratio", "-")), "build s": _f(r.get("build_s", "-")),
                         "solve s": _f(r.get("solve_s", "-")), "total s": _f(r["total_s"])})
        tables.append({"caption": f"MNIST FC3 NTK, n = {run['n']}, 10 right-hand sides, ridge 1e-6 × mean "
                                  f"diagonal, rtol {run['rtol']}: time to solution", "rows": rows})
        for label, rp in run.get("ridge_path", {}).items():
            rows = [{"variant": r["variant"], "products": r["products"], "columns": r.get("columns", "-"),
                     "seconds": _f(r["seconds"]), "vs one ridge": _f(r.get("ratio_vs_one_ridge") or "-")}
                    for r in rp["rows"]]
            for r in rp["rows"]:
                if r.get("converged") is False:
                    bad.append(f"{r['variant']} ({label}) at n={run['n']}")
            tables.append({"caption": f"Ridge path, n = {run['n']}, Gram {label}", "rows": rows})
    if bad:
        raise RuntimeError("not converged: " + ", ".join(bad))
    return {"tables": tables, "notes": ["Checked: every CG variant converged to its tolerance."],
            "load": res["machine"].get("load_1min"), "targets": res.get("targets", [])}


# ----------------------------------------------------------------------------- gram

GRAM_CHECK = r"""
import json, sys
from pathlib import Path
import numpy as np
from ntkscale import stax
from ntkscale.config.run import RunConfig
from ntkscale.stages.gram import GramPipeline
from ntkscale.store.gram_store import GramStore
tmp = Path(sys.argv[1])
tmp.mkdir(parents=True, exist_ok=True)
layers = [["Dense", {"W_std": 2 ** 0.5, "b_std": 0.1}], ["Relu", {}]] * 3 + [["Dense", {"W_std": 2 ** 0.5, "b_std": 0.1}]]
x = np.random.default_rng(0).standard_normal((300, 784)).astype(np.float32)
np.save(tmp / "x.npy", x)
raw = {"data": {"train": {"x": "x.npy"}}, "kernel": {"layers": layers, "get": ["nngp", "ntk"]},
       "store": "check.zarr", "block_size": 128, "dtype": "float32",
       "cluster": {"kind": "local", "n_workers": 2, "threads_per_worker": 1, "processes": False,
                   "dashboard_address": ":0"}}
GramPipeline(RunConfig.from_mapping(raw, tmp), progress=False).run()
s = GramStore.open(tmp / "check.zarr")
ref = stax.from_spec(layers)[2](x, None, get=("nngp", "ntk"))
err = max(float(np.max(np.abs(s.train_array(k)[...] - r)) / np.max(np.abs(r))) for k, r in zip(("nngp", "ntk"), ref))
assert err < 1e-5, f"the pipeline's Gram differs from kernel_fn's: max rel {err:.3g}"
print(json.dumps({"n": 300, "block_size": 128, "workers": "2 (threads)", "max_rel_diff": err}))
"""


def gram_precheck(ctx: Ctx) -> Dict[str, Any]:
    d = ctx.scratch / "gram-check"
    out = subprocess.run([PY, "-c", GRAM_CHECK, str(d)], capture_output=True, text=True, cwd=REPO, timeout=600)
    shutil.rmtree(d, ignore_errors=True)
    if out.returncode != 0:
        raise RuntimeError("the Gram pipeline check failed:\n" + out.stderr[-1500:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def gram_cmd(ctx: Ctx) -> List[str]:
    if ctx.quick:
        return _script("bench_gram.py") + ["--n", "2048", "--block", "1024", "--sweep", "1024", "--repeat", "1",
                                           "--shm", "", "--dir", str(ctx.scratch), "--name", "gram"]
    return _script("bench_gram.py") + ["--dir", str(ctx.scratch), "--name", "gram"]


def gram_read(ctx: Ctx) -> Dict[str, Any]:
    res = _load(ctx.raw / "gram.json")
    im = res["in_memory"]
    rows = [{"what": "in-memory kernel_fn, all cores", "wall s": _f(im["seconds"]), "CPU s": _f(im["cpu_s"]),
             "M entries/s": _f(im["entries_per_s"] / 1e6)}]
    tmpfs = res.get("tmpfs", [])
    for r in res.get("pipeline", []) + tmpfs:
        where = ", store on tmpfs" if r in tmpfs else ""
        rows.append({"what": f"pipeline, {r['workers']} worker(s) + {r['io_threads']} io thread{where}",
                     "wall s": _f(r["seconds"]), "CPU s": _f(r["cpu_s"]), "M entries/s": _f(r["entries_per_s"] / 1e6),
                     "kernel busy": _f(r.get("compute_busy", "-"), 2),
                     "write GiB/s/task": _f(r.get("write_gib_per_s_per_task") or "-", 2)})
    sweep = [{"block": r["block_size"], "blocks": r["blocks"], "wall s": _f(r["seconds"]),
              "M entries/s": _f(r["entries_per_s"] / 1e6), "worker peak RSS MiB": _f(r["worker_peak_rss_mib"])}
             for r in res.get("block_sweep", [])]
    notes = [f"2 workers / in-memory: {res['ratio_vs_in_memory']:.2f} (wall), "
             f"{res.get('cpu_ratio_vs_in_memory', float('nan')):.2f} (CPU s); 2 workers / 1 worker: "
             f"{res['speedup_2_vs_1_worker']:.2f} (wall, best run"
             + (f"; {res['median_speedup_2_vs_1_worker']:.2f} median" if "median_speedup_2_vs_1_worker" in res
                else "") + "). \"1 worker\" is one single-threaded worker without a writer thread (one core)."]
    if "dd_page_cache_gib_per_s" in res:
        notes.append(f"Store bandwidth: `dd` on the same disk {res['dd_page_cache_gib_per_s']:.2f} GiB/s (page "
                     f"cache), {res['dd_fdatasync_gib_per_s']:.2f} GiB/s (fdatasync); per-task Zarr writes in the "
                     "table above.")
    if "small_blocks" in res:
        notes.append(f"Scheduler overhead {1e3 * res['small_blocks']['overhead_per_block_s']:.1f} ms per block "
                     f"(block 128); a no-op Dask task {1e3 * res.get('noop_task_s_per_slot', float('nan')):.2f} ms "
                     "per slot.")
    check = ctx.raw / "gram_check.json"
    if check.exists():
        c = json.loads(check.read_text())
        notes.insert(0, f"Checked before timing: a {c['n']}-row Gram through the pipeline (workers: {c['workers']}, "
                        f"block {c['block_size']}, Zarr store) equals `kernel_fn`'s (max rel {c['max_rel_diff']:.1e}).")
    return {"tables": [{"caption": f"Gram engine end to end vs the in-memory kernel: FC3 NNGP+NTK, n = {res['n']}, "
                                   f"d = {res['d']}, {res['dtype']}, block {res['block']}", "rows": rows},
                       {"caption": "Block size (2 workers)", "rows": sweep}],
            "notes": notes + ["Throughput plots: see the scaling section."], "load": res["machine"].get("load_1min")}


# ----------------------------------------------------------------------------- scaling


def _gram_json(ctx: Ctx) -> Optional[Path]:
    """The bench_gram result to plot: this run's in a full run; in a quick run the committed
    full-size one when there is one (the quick sweep has one block size)."""
    order = [ctx.raw / "gram.json", HERE / "results" / "gram.json"]
    for p in (order[::-1] if ctx.quick else order):
        if p.exists():
            return p
    return None


def scaling_cmd(ctx: Ctx) -> List[str]:
    cmd = _script("scaling.py") + ["--out", str(ctx.raw / "scaling.json"), "--plots", str(ctx.plots)]
    g = _gram_json(ctx)
    return cmd + (["--quick"] if ctx.quick else []) + (["--gram", str(g)] if g else [])


def scaling_read(ctx: Ctx) -> Dict[str, Any]:
    res = _load(ctx.raw / "scaling.json")
    k = res["kernel"]

    def pick(group, **kw):
        return [r for r in k if r["group"] == group and all(r.get(a) == b for a, b in kw.items())]

    fc = []
    for dtype in ("float64", "float32"):
        for r in pick("fc-n", dtype=dtype):
            fc.append({"kernel": r["label"], "dtype": dtype, "n1 × n2": f"{r['n1']}×{r['n2']}",
                       "CPU s": _f(r["cpu_s"]), "ns / entry": _f(r["s_per_entry"] * 1e9)})
    conv = []
    for r in sorted(pick("cntk-hw") + pick("cntk21") + pick("myrtle"), key=lambda r: (r["dtype"], r["group"],
                                                                                    r.get("depth", 0), r["hw"])):
        conv.append({"kernel": r["label"], "code path": r["path"], "dtype": r["dtype"],
                     "n1 × n2": f"{r['n1']}×{r['n2']}", "CPU s": _f(r["cpu_s"]),
                     "ms / entry": _f(r["s_per_entry"] * 1e3)})
    solver = []
    if res.get("solver"):
        names = list(dict.fromkeys(r["solver"] for r in res["solver"]))
        for n in sorted({r["n"] for r in res["solver"]}):
            row = {"n": n}
            for name in names:
                m = [r for r in res["solver"] if r["n"] == n and r["solver"] == name]
                row[f"{name} CPU s"] = _f(m[0]["cpu_s"]) if m else "-"
            solver.append(row)
    plots = [p for p in ("kernel_fc.png", "kernel_conv.png", "solvers.png", "gram_engine.png")
             if (ctx.plots / p).exists()]
    m = res["machine"]
    notes = [f"One thread, CPU seconds (`time.process_time`), best of {res['repeats']}; load "
             f"{m.get('load_1min')} → {m.get('load_1min_end')} on {m.get('cores')} cores. {len(k)} kernel "
             "measurements, each checked against an independent evaluation (compiled paths vs the array-API "
             "path, the array-API path vs its transpose) before it counts; every solver's residual checked.",
             "The Gram-engine plot reads the full-size `results/gram.json` in a quick run (the quick sweep has "
             "one block size) and this run's `bench_gram.py` result in a full run; its title names the source."]
    return {"tables": [{"caption": "FC3 (d = 784) vs n, one thread", "rows": fc},
                       {"caption": "Convolutional kernels at CIFAR-like sizes, one thread", "rows": conv},
                       {"caption": "Solver CPU seconds to solution vs n (MNIST FC3 NTK, one thread)", "rows": solver}],
            "notes": notes, "plots": plots, "load": m.get("load_1min")}


# ----------------------------------------------------------------------------- cost model

#: The disk's fsync'd write bandwidth (bytes/s) measured with ``dd`` on the day of the recorded
#: scale run (benchmarks/README.md, "Larger than RAM"): the scale re-prediction also uses it.
SCALE_RUN_WRITE_BPS = 159e6


def _scaling_json(ctx: Ctx) -> Path:
    for p in (ctx.raw / "scaling.json", ctx.results / "suite-raw" / ("full" if ctx.quick else "quick") / "scaling.json"):
        if p.exists():
            return p
    return ctx.raw / "scaling.json"


def _calibration(ctx: Ctx) -> Path:
    """The CPU calibration: ntkscale's package data for the default results
    directory, ``costmodel_cpu.json`` in a custom one."""
    if ctx.results == HERE / "results":
        return REPO / "ntkscale" / "costs" / "data" / "cpu.json"
    return ctx.results / "costmodel_cpu.json"


def costmodel_cmd(ctx: Ctx) -> List[str]:
    # --write-dir: the store's fsync'd write bandwidth, measured now when the scaling
    # measurements carry none (scaling.py records one)
    return [PY, "-m", "ntkscale.costs.model", str(_scaling_json(ctx)), "--out", str(_calibration(ctx)),
            "--plot", str(ctx.plots / "costmodel_fit.png"),
            "--write-dir", os.environ.get("NTKSCALE_BENCH_DIR", "/var/tmp")]


def costmodel_read(ctx: Ctx) -> Dict[str, Any]:
    sys.path.insert(0, str(REPO))
    from ntkscale.costs.model import summary_rows  # noqa: PLC0415

    cal = _load(_calibration(ctx))
    f = cal["fit"]
    rows = [{k: _f(v) for k, v in r.items()} for r in summary_rows(cal)]
    targets = [{"kernel": p["label"], "dtype": p["dtype"], "path": p["path"], "measured s": _f(p["measured_s"]),
                "predicted s": _f(p["predicted_s"]), "error": f"{100 * p['rel_err']:+.0f} %"}
               for p in cal["points"] if p["input_shape"] == [32, 32, 3]]
    notes = [f"{cal['label']}. Fit over {f['n_points']} measurements: median |error| "
             f"{100 * f['median_abs_rel_err']:.1f} %, max {100 * f['max_abs_rel_err']:.0f} %, R² of log time "
             f"{f['r2_log']:.4f}.",
             "Model: seconds per call = entries × Σ a·feature + overhead per call, per dtype and code path; "
             "features are `kernel_fn.cost(input_shape)` flops and bytes per entry (the FC input GEMM apart; "
             "the slab kernels add flops / lanes, the share paid once per group of pairs it vectorises over). "
             "Layer types that run inside one compiled loop cannot be timed apart, so the model's layer types are "
             "the code paths: flat layers (Dense/activations, numba), conv layers on the slab kernel "
             "(CNTK), the slab kernel with AvgPool stages (pooled: Myrtle; a call also runs each input's "
             "self pair, n1·n2 + n1 + n2 pairs, which the fit counts), and other image nets on the array-API "
             "path."]
    tables = [{"caption": "Fitted rates per dtype and code path", "rows": rows},
              {"caption": "At the projection's target size (32×32×3): measured vs predicted", "rows": targets}]
    st = cal.get("storage")
    if st:
        from heldout import scale_points  # noqa: PLC0415 (a benchmarks/ script)

        seq = (f"; one fsync'd file of the same size: {st['sequential_bytes_per_s'] / 1e9:.3g} GB/s"
               if st.get("sequential_bytes_per_s") else "")
        notes.append(f"Store writes: {st['write_bytes_per_s'] / 1e9:.3g} GB/s, the median of "
                     f"{len(st.get('all_write_bytes_per_s', [1]))} writes (range "
                     f"{min(st.get('all_write_bytes_per_s', [0])) / 1e9:.3g}–"
                     f"{max(st.get('all_write_bytes_per_s', [0])) / 1e9:.3g}) of {st['nbytes'] >> 20} MiB in "
                     f"{st['path']} as the store writes (files of {st.get('chunk_bytes', 0) >> 20} MiB, each fsync'd, "
                     f"then their directory){seq} ({st['date']}, load {st.get('load_1min')}). The projection's wall "
                     "time is max(compute, writes): the block tasks scheduled on the workers, and the bytes the store "
                     "writes (every kernel's full square, mirrors included, plus the diagonals) at that bandwidth, "
                     "overlapped; it says which binds.")
        scale = HERE / "results" / "scale.json"
        if scale.exists():
            then = {r["n"]: r for r in scale_points(scale, str(_calibration(ctx)), SCALE_RUN_WRITE_BPS)}
            tables.append({"caption": "The recorded `scale.py` Gram runs (FC3 NTK, d = 784, float64, +2000 test rows, "
                                      "block 1024, 2 workers; results/scale.json) re-predicted with the write term",
                           "rows": [{"n": r["n"], "compute s": _f(r["compute_s"]), "write GB": _f(r["write_gb"]),
                                     "write s": _f(r["write_s"]), "predicted s": _f(r["predicted_s"]),
                                     "binds": r["binds"], "measured blocks s": _f(r["measured_blocks_s"]),
                                     "error": f"{100 * r['rel_err_blocks']:+.0f} %",
                                     "error, compute only": f"{100 * r['rel_err_compute_only']:+.0f} %",
                                     f"predicted s at {SCALE_RUN_WRITE_BPS / 1e9:g} GB/s": _f(then[r["n"]]["predicted_s"]),
                                     f"error at {SCALE_RUN_WRITE_BPS / 1e9:g} GB/s":
                                         f"{100 * then[r['n']]['rel_err_blocks']:+.0f} %",
                                     "measured stage s (with cluster start)": _f(r["measured_stage_s"]),
                                     "load": r["load_1min"]}
                                    for r in scale_points(scale, str(_calibration(ctx)))]})
            notes.append("The scale runs were measured at load 4.9–7.6 with the chunk files fsync'd; \"measured "
                         "blocks\" is the engine's first to last progress line, which the projection models (it "
                         "leaves out the cluster's start). \"predicted s\" uses the calibration's write bandwidth "
                         f"(above); the columns at {SCALE_RUN_WRITE_BPS / 1e9:g} GB/s use the disk's fsync'd rate "
                         "that `dd` measured on the day of the scale run (the \"Larger than RAM\" section). The disk is "
                         "shared with other jobs' I/O, so its bandwidth moves with them: a write-bound projection is "
                         "only as good as a bandwidth measured when and where the store is written.")
    return {"tables": tables, "notes": notes, "plots": ["costmodel_fit.png"]}


# ----------------------------------------------------------------------------- projection


def projection_cmd(ctx: Ctx) -> List[str]:
    return [PY, "-m", "benchmarks.literature", "--calibration", str(_calibration(ctx)),
            "--devices", "1,64", "--json-out", str(ctx.raw / "projection.json")]


def projection_read(ctx: Ctx) -> Dict[str, Any]:
    res = _load(ctx.raw / "projection.json")
    rows = []
    for r in res["rows"]:
        rows.append({"net (CIFAR-10, 32×32×3)": r["net"], "dtype": r["dtype"], "code path": r["code_path"],
                     "flops / entry": _f(r["flops_per_entry"]),
                     "ntkscale core-s / entry": _f(r["ours_s_per_entry"]),
                     "ntkscale core-hours, 50k train Gram": _f(r["ours_device_hours_50k"]),
                     "wall on 64 cores": f"{r['wall_hours_50k_64'] / 24:.3g} days",
                     "ntkscale core-hours, 60k × 60k": _f(r["ours_device_hours_60k"]),
                     "published V100 GPU-hours, 60k × 60k": _f(r["nt_gpu_hours_60k"]),
                     "published by": r.get("published_code", "neural-tangents"),
                     "cores per V100 (whole job)": _f(r["devices_per_v100"])})
    notes = [res["rows"][0]["calibration"] + ". No GPU calibration exists (no GPU was lent to this task), so "
             "`ntkscale project --device gpu` says so instead of guessing; the CPU figures are per core and the "
             "wall column assumes 64 cores share the blocks evenly (compute only).",
             "Published figures, both neural-tangents' own, from its README (the PyPI description of "
             "neural-tangents 0.6.5, section Performance; sources in `benchmarks/literature.py`): Myrtle-5/7/10 "
             "kernels on full 60k CIFAR-10, 316 / 330 / 508 V100 GPU-hours in 64-bit (the Myrtle architecture is "
             "Shankar et al. 2020's); a 21-layer CNN-GAP on 3×32×32 inputs, 2.7001 ms per NTK entry on a V100 in "
             "32-bit (tested with neural-tangents 0.2.1; its 60k × 60k column is that rate × 60000²).",
             "One unit throughout: \"cores per V100 (whole job)\" is our projected core-hours for the 60k × 60k "
             "Gram (its n(n+1)/2 pairs, both kernels) over the published GPU-hours for the same Gram; ours are "
             "projections from the cost model, not runs. Myrtle runs on the compiled slab kernel with AvgPool "
             "stages (\"pooled\"), CNTK-GAP on the compiled slab path.",
             "Reproduce one: `ntkscale project --n 50000 --input-shape 32,32,3 --net myrtle5 --devices 8 --device cpu`."]
    tables = [{"caption": "Projected CIFAR-10 Gram runs from the CPU cost model, next to neural-tangents' "
                          "published figures", "rows": rows}]
    held = HERE / "results" / "heldout.json"
    targets: List[Dict[str, Any]] = []
    if held.exists():
        h = _load(held)
        pr, me, small = h["prediction"], h["measured"], h.get("prediction_small_images_fit")
        tables.append({"caption": "Held-out check (`python benchmarks/heldout.py`, results/heldout.json): the "
                                  "projection of a real `ntkscale gram` run, made before the run",
                       "rows": [{"run": f"{h['net']} {'×'.join(map(str, h['input_shape']))} {h['dtype']}, "
                                        f"n = {h['n']}, NNGP+NTK, {h['workers']} workers, block {h['block_size']}",
                                 "projected s": _f(pr["wall_seconds"]), "binds": pr["binds"],
                                 "measured s (whole command)": _f(me["wall_s"]),
                                 "measured block phase s": _f(me.get("engine_s") or me.get("blocks_seconds")),
                                 "error": f"{100 * h['rel_error']:+.0f} %",
                                 "stated uncertainty": f"±{100 * pr['stated_uncertainty']:.0f} %",
                                 "fit without 32×32 images: projected s": _f(small["wall_seconds"]) if small else "-",
                                 "rate check now / calibration": _f(h["rate_check"]["measured_over_predicted"]),
                                 "load": f"{h['machine']['load_1min']} → {h['load_1min_end']}"}]})
        rc = h["rate_check"]
        over = me["wall_s"] > h["budget_s"]
        notes.append(f"Held-out check, {h['machine']['date']}: {h['why_n']}; the run took {me['wall_s'] / 60:.1f} min"
                     f"{' (over that budget: it ran slower than the scaled projection)' if over else ''}. "
                     "The calibration's 32×32 measurements "
                     f"are single calls of at most 8 × 5 pairs on one thread; it never saw {h['n']} images, two "
                     "workers at once or the engine, so the error is out of sample. The target, |error| within the "
                     "projection's stated uncertainty (the calibration fit's largest relative error), is "
                     f"{'met' if h['targets'][0]['met'] else '**missed**'}.")
        if me.get("compute_seconds"):
            notes.append(f"Where the error comes from: the workers' kernel calls took {me['compute_seconds']:.0f} s "
                         f"in all against the {pr['device_seconds']:.0f} core-seconds projected "
                         f"({me['compute_seconds'] / pr['device_seconds']:.2f}×); the rate check just before the run "
                         f"(one 8 × 4 call on one thread) took {rc['cpu_s']:.3g} CPU s against "
                         f"{rc['predicted_s']:.3g} s predicted ({rc['measured_over_predicted']:.2f}×). Scaled by the "
                         f"rate check the projection would have erred by {100 * h['rel_error_drift_corrected']:+.0f} %. "
                         "The calibration's one-core rates were measured on a quiet day (load 0.4); on this shared "
                         "machine one core now runs about 2× slower, which no calibration made that day can see.")
        conc = HERE / "results" / "heldout_concurrency.json"
        if conc.exists():
            c = _load(conc)
            together = ", ".join(f"{r['cpu_s']:.3g}" for r in c["together"])
            notes.append(f"One core alone vs both at once ({c['date']}, load {c['load_1min']}; "
                         "`python benchmarks/heldout.py --concurrency`): the same one-thread 8 × 4 Myrtle-5 call took "
                         f"{c['alone']['cpu_s']:.3g} CPU s alone and "
                         f"{together} s with {c['procs']} processes at once ({c['slowdown_cpu']:.2f}×): the two "
                         "workers barely slow each other; the drift is the core's speed itself.")
        targets = h["targets"]
    return {"tables": tables, "notes": notes, "targets": targets}


def solvers_read(ctx: Ctx) -> Dict[str, Any]:
    res = _load(ctx.raw / ("solvers_quick.json" if ctx.quick else "solvers.json"))
    rows = [{"n": r["n"], "method": r["method"], "seconds": _f(r.get("seconds", "-")),
             "peak MiB above baseline": _f(r.get("peak_mib", "-")), "residual": _f(r.get("residual", "-"), 2),
             "CG iterations": r.get("iterations", "-"), "note": r.get("error", "")} for r in res["rows"]]
    wins = res.get("cg_wins_from_n")
    return {"tables": [{"caption": "MNIST FC3 NTK, 10 targets, ridge 1e-6 × mean diagonal, float64; each solver in a "
                                   "fresh process, answers checked (residual ≤ 1e-5) before times are reported",
                        "rows": rows}],
            "notes": [f"CG first beats every dense method at n = {wins}." if wins else
                      "No CG variant beat the dense methods at these sizes."]}


# ----------------------------------------------------------------------------- registry

REGISTRY: List[Bench] = [
    Bench("fc", "FC kernel vs neural-tangents", "FC ReLU depth-3 NTK Gram throughput and memory, float32/float64",
          lambda c: _script("bench_fc.py") + (["--n", "1024", "--repeats", "1"] if c.quick else []) + c.nt_flags,
          fc_read, 40, 120),
    Bench("cntk", "CNTK kernel vs neural-tangents", "CNTK-GAP depth 3 throughput, compiled slab kernel",
          cntk_cmd, cntk_read, 45, 400, before=cntk_before),
    Bench("estimator", "Estimators and accuracy", "NTKRegressor vs sklearn KernelRidge; MNIST/digits accuracy",
          estimator_cmd, estimator_read, 70, 180),
    Bench("cholesky", "Tiled Cholesky vs scipy and dask", "factorisation time, Zarr in/out",
          cholesky_cmd, cholesky_read, 20, 240),
    Bench("cg", "CG vs Cholesky", "plain / preconditioned / multi-shift CG, ridge paths",
          cg_cmd, cg_read, 35, 400),
    Bench("gram", "Gram engine", "pipeline end to end vs in-memory, 1 vs 2 workers, block size, store vs dd",
          gram_cmd, gram_read, 70, 800, precheck=gram_precheck),
    Bench("scaling", "Scaling study", "kernel time vs n, d, depth, image size; solver time vs n; plots",
          scaling_cmd, scaling_read, 60, 350),
    Bench("costmodel", "Cost model", "fit flops/bytes per entry to the scaling measurements",
          costmodel_cmd, costmodel_read, 5, 5),
    Bench("projection", "CIFAR-10 projection", "Myrtle-5/7/10 and CNTK-GAP 21 on 50k CIFAR-10 vs neural-tangents",
          projection_cmd, projection_read, 5, 5),
    Bench("solvers", "Solver crossover", "scipy / scikit-learn / tiled Cholesky / CG / CG+Nyström over n, time and "
          "peak memory", lambda c: _script("bench_solvers.py") + (["--n", "1000", "2000", "--quick"] if c.quick else []),
          solvers_read, 120, 5400, default=False),
    Bench("tiny", "Smoke test", "estimator benchmark at tiny size (digits as vectors, 300/100)",
          lambda c: estimator_cmd(c, tiny=True), lambda c: estimator_read(c, tiny=True), 15, 15, default=False),
]
BY_NAME = {b.name: b for b in REGISTRY}


# ----------------------------------------------------------------------------- running


def versions(nt: Optional[Path]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for pkg in ("ntkscale", "numpy", "scipy", "numba", "dask", "distributed", "zarr", "scikit-learn", "matplotlib"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    out["python"] = sys.version.split()[0]
    if nt is not None:
        code = ("import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
                "('neural-tangents', 'jax', 'jaxlib')}))")
        try:
            got = subprocess.run([str(nt), "-c", code], capture_output=True, text=True, timeout=60)
            out["nt_venv"] = json.loads(got.stdout.strip().splitlines()[-1])
        except Exception as exc:  # pragma: no cover
            out["nt_venv"] = f"unreadable ({exc})"
    else:
        out["nt_venv"] = None
    return out


def _stream(proc: subprocess.Popen, log, quiet: bool) -> None:
    for line in proc.stdout:  # type: ignore[union-attr]
        log.write(line)
        log.flush()
        if not quiet:
            sys.stdout.write("  │ " + line)
            sys.stdout.flush()


def run_one(b: Bench, ctx: Ctx, quiet: bool = False) -> Dict[str, Any]:
    entry: Dict[str, Any] = {"name": b.name, "title": b.title, "what": b.what, "mode": ctx.mode,
                             "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                             "load_1min_start": round(os.getloadavg()[0], 2)}
    t0 = time.perf_counter()
    try:
        cmd = b.command(ctx)
    except Exception as exc:
        return dict(entry, status="failed", reason=f"could not build the command: {exc}", seconds=0.0)
    entry["command"] = shlex.join([("python" if c == PY else os.path.relpath(c, REPO) if c.startswith(str(REPO))
                                    else c) for c in cmd])
    print(f"\n== {b.name}: {b.title}\n   {entry['command']}", flush=True)
    if b.before:
        b.before(ctx)
    if b.precheck:
        try:
            check = b.precheck(ctx)
            (ctx.raw / f"{b.name}_check.json").write_text(json.dumps(check) + "\n")
            print(f"   check: {json.dumps(check)}", flush=True)
        except Exception as exc:
            entry.update(status="failed", reason=f"correctness check failed, nothing timed: {exc}",
                         seconds=time.perf_counter() - t0)
            return entry
    env = dict(os.environ, NTKSCALE_BENCH_RESULTS=str(ctx.raw), PYTHONUNBUFFERED="1")
    log_path = ctx.raw / f"{b.name}.log"
    timeout = (b.quick_s if ctx.quick else b.full_s) * 6 + 120
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        reader = threading.Thread(target=_stream, args=(proc, log, quiet), daemon=True)
        reader.start()
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)  # the script's own process group only
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            rc = None
        reader.join(timeout=10)
    entry["seconds"] = round(time.perf_counter() - t0, 1)
    entry["load_1min_end"] = round(os.getloadavg()[0], 2)
    tail = log_path.read_text().splitlines()[-15:]
    if rc is None:
        entry.update(status="failed", reason=f"timed out after {timeout} s; last output:\n" + "\n".join(tail))
        return entry
    if rc != 0:
        entry.update(status="failed", reason=f"exit status {rc}; last output:\n" + "\n".join(tail))
        return entry
    try:
        entry.update(b.read(ctx))
        entry["status"] = "ok"
    except Exception as exc:
        entry.update(status="failed", reason=f"could not read or check its results: {exc}")
    return entry


# ----------------------------------------------------------------------------- Markdown


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def _dur(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min"


def md_table(t: Table) -> List[str]:
    rows = t["rows"]
    if not rows:
        return [f"*{t['caption']}: no rows*", ""]
    cols = list(dict.fromkeys(c for r in rows for c in r))
    out = [f"*{t['caption']}*", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(_cell(r.get(c, "")) for c in cols) + " |" for r in rows]
    return out + [""]


def render(suite: Dict[str, Any], ctx: Ctx) -> str:
    last = suite["last_run"]
    m, v = last["machine"], last["versions"]
    nt = v.get("nt_venv")
    nt_txt = (f"neural-tangents {nt['neural-tangents']} / jax {nt['jax']} (CPU) in its venv" if isinstance(nt, dict)
              else "neural-tangents venv not built")
    rel = (lambda p: os.path.relpath(p, ctx.readme.parent)) if ctx.readme else (lambda p: str(p))
    lines = [BEGIN, "", "## The suite: `python -m benchmarks`", "",
             "<!-- generated by benchmarks/suite.py from results/suite.json: edit the code, not this section -->", "",
             "One entry point runs every comparison side by side and rewrites this section:", "",
             "```",
             "python -m benchmarks --quick     # smaller sizes: under 5 minutes on 2 cores",
             "python -m benchmarks             # full sizes (the per-script sections above)",
             "python -m benchmarks --only fc,cntk --results-dir /tmp/r   # a subset, elsewhere",
             "python -m benchmarks --list",
             "```", "",
             "neural-tangents is used when its venv is already built (`bash benchmarks/nt_venv.sh`, a separate "
             "step); without it, the comparisons say so and report ntkscale alone. Every script asserts that what "
             "it times is correct before it reports a speed; a failed check or a missing peer is reported with "
             "its reason instead of a number. Results: `results/suite.json` (machine, versions, date, each "
             "benchmark's command and tables), each script's own file under `results/suite-raw/<mode>/`, the "
             "calibration `ntkscale/costs/data/cpu.json` (package data, read by `ntkscale project` and `plan`), plots in `plots/`.", "",
             f"Last run: **{last['mode']}**{' (--only ' + ','.join(last['only']) + ')' if last.get('only') else ''}, "
             f"{last['date']}, {last['duration_s'] / 60:.1f} min; {m.get('cpu')}, {m.get('cores')} cores, "
             f"{m.get('memory_gib')} GiB, load {m.get('load_1min')} → {last.get('load_1min_end')} (shared machine: "
             f"absolute times are inflated, ratios and one-thread CPU seconds are what count); Python "
             f"{v.get('python')}, numpy {v.get('numpy')}, scipy {v.get('scipy')}, numba {v.get('numba')}, dask "
             f"{v.get('dask')}, zarr {v.get('zarr')}, scikit-learn {v.get('scikit-learn')}; {nt_txt}.", ""]
    lines += ["| benchmark | what | status | mode | duration (last run) | expected quick / full |",
              "|---|---|---|---|---|---|"]
    for b in REGISTRY:
        e = suite["benchmarks"].get(b.name)
        if not b.default and e is None:
            continue
        st = "not run" if e is None else ("ok" if e["status"] == "ok" else f"**{e['status']}**")
        took = f"{e.get('seconds', 0):.0f} s" if e else "-"
        lines.append(f"| [{b.name}](#suite-{b.name}) | {b.what} | {st} | {e['mode'] if e else '-'} | {took} | "
                     f"~{_dur(b.quick_s)} / ~{_dur(b.full_s)} |")
    judged = [(b.name, t) for b in REGISTRY for t in (suite["benchmarks"].get(b.name) or {}).get("targets", [])]
    if judged:
        missed = sum(not t["met"] for _, t in judged)
        lines += ["", f"**Targets: {len(judged) - missed} of {len(judged)} met** (each benchmark asserts its own; "
                      "`python -m benchmarks --check` exits 1 and names every missed one):", "",
                  "| benchmark | target | measured | goal | |", "|---|---|---|---|---|"]
        for name, t in judged:
            value = "-" if t["value"] is None else f"{t['value']:.3g}"
            lines.append(f"| {name} | {t['name']} | {value} | {t['op']} {t['goal']:g} | "
                         f"{'met' if t['met'] else '**missed**'} |")
    full_est = sum(b.full_s for b in REGISTRY if b.default)
    lines += ["", f"The full run takes about {full_est / 60:.0f} minutes on this 2-core machine at load 3-6: the sum "
                  "of the expected full durations above (estimator, scaling, costmodel and projection timed in one "
                  "full suite run, 8.9 min together; the others from their scripts' full-size runs). The quick "
                  "run's measured duration is in the line above.", ""]
    for b in REGISTRY:
        e = suite["benchmarks"].get(b.name)
        if e is None:
            continue
        lines += [f'<a id="suite-{b.name}"></a>', "", f"### {b.name}: {b.title}", "",
                  f"`{e.get('command', '?')}` — {e['mode']}, {e['date']}, {e.get('seconds', 0):.0f} s, load "
                  f"{e.get('load_1min_start')} → {e.get('load_1min_end')}", ""]
        if e["status"] != "ok":
            lines += [f"**{e['status']}**: this benchmark reports no numbers. Reason:", "", "```",
                      *e.get("reason", "?").splitlines(), "```", ""]
            continue
        for t in e.get("tables", []):
            lines += md_table(t)
        for n in e.get("notes", []):
            lines += [f"- {n}"]
        if e.get("notes"):
            lines.append("")
        for p in e.get("plots", []):
            lines += [f"![{p}]({rel(ctx.plots / p)})", ""]
    lines.append(END)
    return "\n".join(lines) + "\n"


def write_readme(path: Path, section: str) -> None:
    """Replace the text between the markers (append markers at the end if absent)."""
    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text:
        i, j = text.index(BEGIN), text.index(END) + len(END)
        new = text[:i] + section.rstrip("\n") + text[j:]
    else:
        new = text + ("\n" if text and not text.endswith("\n") else "") + ("\n" if text else "") + section
    path.write_text(new)


# ----------------------------------------------------------------------------- main


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (under 5 minutes on 2 cores)")
    ap.add_argument("--only", default=None, help="comma-separated benchmark names (see --list)")
    ap.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    ap.add_argument("--results-dir", default=None, help="where results go (default: benchmarks/results)")
    ap.add_argument("--readme", default=None, help="Markdown file whose suite section is rewritten")
    ap.add_argument("--no-readme", action="store_true", help="leave every README alone")
    ap.add_argument("--quiet", action="store_true", help="do not echo the scripts' output")
    ap.add_argument("--render-only", action="store_true", help="rewrite the README section from suite.json")
    ap.add_argument("--check", action="store_true",
                    help="judge the recorded targets: exit 1 naming every missed one (2 if none recorded)")
    args = ap.parse_args(argv)
    if args.check:
        return check_main(Path(args.results_dir).resolve() if args.results_dir else HERE / "results")

    if args.list:
        for b in REGISTRY:
            print(f"{b.name:11s} {'' if b.default else '(only with --only) '}{b.title}: {b.what}; "
                  f"~{b.quick_s} s quick, ~{b.full_s} s full")
        return 0
    if args.only:
        names = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = [n for n in names if n not in BY_NAME]
        if unknown:
            print(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BY_NAME)}", file=sys.stderr)
            return 2
        selected = [b for b in REGISTRY if b.name in names]
    else:
        selected = [b for b in REGISTRY if b.default]

    custom = args.results_dir is not None
    results = Path(args.results_dir).resolve() if custom else HERE / "results"
    mode = "quick" if args.quick else "full"
    readme = None if args.no_readme else (Path(args.readme) if args.readme else
                                          (results / "README.md" if custom else HERE / "README.md"))
    ctx = Ctx(quick=args.quick, results=results, raw=results / "suite-raw" / mode,
              plots=(results / "plots") if custom else HERE / "plots", readme=readme,
              scratch=Path(tempfile.mkdtemp(prefix="ntkscale-suite-", dir=os.environ.get("NTKSCALE_BENCH_DIR"))),
              nt=nt_python())
    if args.render_only:
        shutil.rmtree(ctx.scratch, ignore_errors=True)
        if readme is not None:
            write_readme(readme, render(json.loads((results / "suite.json").read_text()), ctx))
            print(f"README section rewritten: {readme}")
        return 0
    ctx.raw.mkdir(parents=True, exist_ok=True)
    ctx.plots.mkdir(parents=True, exist_ok=True)
    info = machine()
    print(f"ntkscale benchmark suite, {mode}: {', '.join(b.name for b in selected)}; {info['cpu']}, "
          f"{info['cores']} cores, load {info['load_1min']}")
    if ctx.nt is None:
        print(f"note: {ctx.nt_note}")
    else:
        print(f"neural-tangents venv found: {ctx.nt}")
    t0 = time.perf_counter()
    suite_path = results / "suite.json"
    try:
        suite = json.loads(suite_path.read_text())
        suite.setdefault("benchmarks", {})
    except (OSError, ValueError):
        suite = {"benchmarks": {}}
    statuses = {}
    try:
        for b in selected:
            entry = run_one(b, ctx, quiet=args.quiet)
            suite["benchmarks"][b.name] = entry
            statuses[b.name] = entry["status"]
            mark = "ok" if entry["status"] == "ok" else f"{entry['status'].upper()}: {entry.get('reason', '')}"
            print(f"== {b.name}: {mark} ({entry.get('seconds', 0):.0f} s)", flush=True)
    finally:
        shutil.rmtree(ctx.scratch, ignore_errors=True)
    suite["last_run"] = {"mode": mode, "only": [b.name for b in selected] if args.only else None,
                         "date": info["date"], "duration_s": round(time.perf_counter() - t0, 1), "machine": info,
                         "load_1min_end": round(os.getloadavg()[0], 2), "versions": versions(ctx.nt),
                         "argv": sys.argv[1:] if argv is None else list(argv)}
    suite["schema"] = 1
    results.mkdir(parents=True, exist_ok=True)
    suite_path.write_text(json.dumps(suite, indent=1, default=str) + "\n")
    if readme is not None:
        write_readme(readme, render(suite, ctx))
    dur = suite["last_run"]["duration_s"]
    print(f"\nsuite {mode}: {dur:.0f} s ({dur / 60:.1f} min); "
          + ", ".join(f"{k} {v}" for k, v in statuses.items()))
    print(f"results: {suite_path}" + (f"; README section: {readme}" if readme else ""))
    return 0 if all(s == "ok" for s in statuses.values()) else 1
