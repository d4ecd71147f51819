"""Project wall time and device-hours of a Gram run from shapes alone.

``project(n, input_shape, net, device_kind, n_devices, dtype)`` needs no data:
the network's flops and bytes per entry come from ``kernel_fn.cost(input_shape)``,
the seconds per flop / byte / block from a cost-model calibration
(``ntkscale.costs.model``), and the block grid from the planner (``ntkscale.gram.plan``)
— the same grid ``ntkscale gram`` would run: the upper triangle of the n × n
train Gram (diagonal blocks computed as triangles), the n_test × n cross Gram
and the diagonals.

Calibrations are per device kind. ``cpu`` is measured on one core
(``benchmarks/scaling.py``: numba and BLAS on one thread, CPU seconds) and
says so in its label; ``n_devices`` then counts cores, and the projection
assumes the blocks spread evenly over them (no store I/O, no scheduler
overhead: ``benchmarks/bench_gram.py`` measures those). A ``gpu`` calibration
exists only where one was measured on a GPU; asking for it otherwise is an
error that says so, never a guess.

    ntkscale project --n 50000 --input-shape 32,32,3 --net myrtle5 --devices 8 --device cpu

The CPU calibration ships as package data (``ntkscale/costs/data/cpu.json``,
written by ``benchmarks/suite.py``). Published neural-tangents figures for the
same kind of run live in ``benchmarks/literature.py`` with their sources;
:func:`cifar10_table` puts figures it is given next to the projections.
"""

from __future__ import annotations

import argparse
from importlib import resources
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from . import model as costmodel
from .. import stax
from ..choices import DTYPES, KERNELS
from ..errors import CalibrationError, NtkscaleError
from ..gram.plan import choose_block_size
from ..store.blocks import grid

#: The calibrations shipped with ntkscale (package data): ``<kind>.json``.
CALIBRATION_PACKAGE = "ntkscale.costs.data"

NetLike = Union[str, Any]


# ----------------------------------------------------------------------------- nets


def _myrtle_pools(h: int) -> int:
    """Final pools that bring an h-pixel image to 1 pixel after Myrtle's two inner pools."""
    return max(0, int(math.floor(math.log2(max(1, h)))) - 2)


def resolve_net(net: NetLike, input_shape: Sequence[int]) -> Any:
    """A KernelFn from a name (``myrtle5|7|10``, ``cntk[-gap|-flatten]DEPTH``,
    ``fcDEPTH``) or from a kernel_fn / layer triple / spec list."""
    if not isinstance(net, str):
        return costmodel._kernel_fn(net)
    name = net.lower().replace("_", "-")
    m = re.fullmatch(r"myrtle-?(5|7|10)", name)
    if m:
        return stax.presets.myrtle(int(m.group(1)), final_pools=_myrtle_pools(int(input_shape[0])))[2]
    m = re.fullmatch(r"cntk(?:-(gap|flatten|v))?-?(\d+)", name)
    if m:
        pooling = {"v": "flatten", None: "gap"}.get(m.group(1), m.group(1))
        return stax.presets.cntk(int(m.group(2)), pooling)[2]
    m = re.fullmatch(r"fc-?(\d+)", name)
    if m:
        return stax.presets.fc(int(m.group(1)))[2]
    raise NtkscaleError(f"unknown net {net!r}; use myrtle5, myrtle7, myrtle10, cntk-gapDEPTH (e.g. cntk-gap21), "
                        "cntk-flattenDEPTH, fcDEPTH, or pass a kernel_fn")


# ----------------------------------------------------------------------------- calibration


def find_calibration(device_kind: str) -> Path:
    """The calibration of ``device_kind``: ``costmodel_<kind>.json`` in
    $NTKSCALE_CALIBRATION_DIR, else the one shipped as package data."""
    env = os.environ.get("NTKSCALE_CALIBRATION_DIR")
    if env:
        p = Path(env) / f"costmodel_{device_kind}.json"
        if p.exists():
            return p
    shipped = resources.files(CALIBRATION_PACKAGE) / f"{device_kind}.json"
    if shipped.is_file():
        return Path(str(shipped))
    where = ", ".join(([env] if env else []) + [f"package data {CALIBRATION_PACKAGE}"])
    if device_kind == "gpu":
        raise CalibrationError(
            f"no GPU calibration (costmodel_gpu.json in {where}): none has been measured on a GPU yet. "
            "Project with --device cpu (a CPU calibration, labelled as such), or measure one on a GPU "
            "machine and pass it with --calibration")
    raise CalibrationError(f"no {device_kind.upper()} calibration (costmodel_{device_kind}.json in {where}); make one "
                           "with python -m benchmarks --only scaling,costmodel, or pass --calibration")


def load_calibration(calibration: Union[None, str, os.PathLike, Dict[str, Any]], device_kind: str) -> Dict[str, Any]:
    if isinstance(calibration, dict):
        cal = dict(calibration)
        cal.setdefault("source", "given")
    else:
        path = Path(calibration) if calibration is not None else find_calibration(device_kind)
        try:
            cal = costmodel.load(path)
        except (OSError, ValueError) as exc:
            raise CalibrationError(str(exc)) from exc
    kind = cal.get("kind", "cpu")
    if kind != device_kind:
        raise CalibrationError(f"the calibration {cal.get('source')} was measured on a {kind.upper()}, not a "
                               f"{device_kind.upper()}; pass device_kind={kind!r} or a {device_kind} calibration")
    return cal


# ----------------------------------------------------------------------------- projection


def _grid_work(n: int, n_test: int, block: int) -> Dict[str, float]:
    """Entries computed and kernel calls of the planner's grid (diagonal train
    blocks as triangles, as the symmetric kernel computes them)."""
    rows = [b - a for a, b in grid(n, block)]
    trows = [b - a for a, b in grid(n_test, block)] if n_test else []
    tri = sum(r * (r + 1) / 2 for r in rows)
    off = (sum(rows) ** 2 - sum(r * r for r in rows)) / 2
    cross = float(n_test) * n
    calls = len(rows) * (len(rows) + 1) / 2 + len(trows) * len(rows)
    return {"entries": tri + off + cross, "diag_entries": float(n + n_test), "calls": calls,
            "diag_calls": float(len(rows) + len(trows))}


def project(n: int, input_shape: Sequence[int], net: NetLike, device_kind: str = "cpu", n_devices: int = 1,
            dtype: str = "float64", calibration: Union[None, str, os.PathLike, Dict[str, Any]] = None, *,
            n_test: int = 0, get: Sequence[str] = KERNELS, block_size: Optional[int] = None,
            memory_per_task: int = 4 << 30) -> Dict[str, Any]:
    """Projected device time of an ``n``-example Gram run (plus ``n_test`` rows of K(test, train)).

    Returns a JSON-able dict: ``device_hours`` (core-hours on CPU), ``wall_hours``
    on ``n_devices`` (even split), ``seconds_per_entry``, the grid, the
    calibration's label and the notes that qualify the numbers.
    """
    if device_kind not in ("cpu", "gpu"):
        raise NtkscaleError(f"device_kind={device_kind!r}: choose 'cpu' or 'gpu'")
    if int(n) < 1 or int(n_devices) < 1 or int(n_test) < 0:
        raise NtkscaleError(f"need n >= 1, n_devices >= 1 and n_test >= 0; got n={n}, n_devices={n_devices}, "
                            f"n_test={n_test}")
    if dtype not in DTYPES:
        raise NtkscaleError(f"dtype={dtype!r}: choose float32 or float64")
    shape = tuple(int(s) for s in input_shape)
    kernel_fn = resolve_net(net, shape)
    cal = load_calibration(calibration, device_kind)
    try:
        per = costmodel.seconds_per_entry(cal, kernel_fn, shape, dtype)
    except ValueError as exc:
        raise CalibrationError(str(exc)) from exc
    itemsize = np.dtype(dtype).itemsize
    block = int(block_size or choose_block_size(int(n), int(n_test), itemsize=itemsize, n_kernels=len(get),
                                                memory_per_task=int(memory_per_task), slots=int(n_devices)))
    work = _grid_work(int(n), int(n_test), block)
    calls = work["calls"] + work["diag_calls"]
    # Diagonal entries k(x, x) cost about what an off-diagonal entry costs; the pooled
    # path also runs each block's inputs' self pairs (at most 2 × block per call).
    self_pairs = 2 * block * work["calls"] if per["path"] == "pooled" else 0
    device_s = ((work["entries"] + work["diag_entries"] + self_pairs) * per["s_per_entry"]
                + calls * per["overhead_s_per_call"])
    cost = kernel_fn.cost(shape)
    unit = "core" if device_kind == "cpu" else "GPU"
    notes = list(per["notes"])
    notes.append(f"{cal.get('label', device_kind)}; calibrated {cal.get('date', '?')}")
    if device_kind == "cpu":
        notes.append(f"wall time assumes the {int(n_devices)} cores share the blocks evenly (compute only; store "
                     "writes and scheduling not included)")
    return {
        "net": net if isinstance(net, str) else kernel_fn.spec_hash,
        "n": int(n), "n_test": int(n_test), "input_shape": list(shape), "dtype": dtype, "get": list(get),
        "device_kind": device_kind, "n_devices": int(n_devices), "unit": unit,
        "code_path": per["path"], "flops_per_entry": float(cost["flops"]),
        "bytes_per_entry": float(cost["bytes"]) * itemsize,
        "seconds_per_entry": per["s_per_entry"], "overhead_s_per_call": per["overhead_s_per_call"],
        "block_size": block, "kernel_calls": int(calls), "entries": work["entries"] + work["diag_entries"],
        "device_seconds": device_s, "device_hours": device_s / 3600.0,
        "wall_seconds": device_s / int(n_devices), "wall_hours": device_s / int(n_devices) / 3600.0,
        "storage_bytes": float((n * n + n_test * n + n + n_test) * itemsize * len(get)),
        "calibration": {"source": str(cal.get("source", "")), "kind": cal.get("kind"), "label": cal.get("label"),
                        "date": cal.get("date"), "dtype_used": per["calibration_dtype"],
                        "fit": cal.get("fit", {})},
        "notes": notes,
    }


# ----------------------------------------------------------------------------- CIFAR-10 table


#: The nets of the CIFAR-10 table, with the dtype each is projected in.
CIFAR10_NETS = {"myrtle5": "float64", "myrtle7": "float64", "myrtle10": "float64", "cntk-gap21": "float32"}


def cifar10_table(calibration: Union[None, str, os.PathLike, Dict[str, Any]] = None, device_kind: str = "cpu",
                  n_devices: Sequence[int] = (1, 64),
                  published: Optional[Dict[str, Dict[str, Any]]] = None) -> List[Dict[str, Any]]:
    """Myrtle-5/7/10 and CNTK-GAP 21 on CIFAR-10 (32×32×3) next to neural-tangents' figures.

    Per net: the projected device-hours of the 50000-example and 60000-example
    train Grams and the seconds per entry. With ``published`` (net -> figure:
    ``gpu_hours`` and ``n``, or ``ms_per_entry``; ``benchmarks/literature.py``
    holds neural-tangents' with their sources) also neural-tangents' seconds
    per entry and how many calibrated devices match one V100 on the same whole
    job, the 60000 × 60000 Gram: our device-hours for it (the symmetric Gram's
    n(n+1)/2 pairs) over the published GPU-hours (a per-entry figure times
    60000²). Comparing per-entry rates instead would set our cost per *computed*
    pair against theirs per *stored* entry and double the ratio.
    """
    rows = []
    for key, dtype in CIFAR10_NETS.items():
        p50 = project(50000, (32, 32, 3), key, device_kind, 1, dtype, calibration)
        p60 = project(60000, (32, 32, 3), key, device_kind, 1, dtype, calibration)
        row = {"net": key, "dtype": dtype, "code_path": p50["code_path"],
               "flops_per_entry": p50["flops_per_entry"],
               "ours_s_per_entry": p50["seconds_per_entry"], "unit": p50["unit"],
               "ours_device_hours_50k": p50["device_hours"], "ours_device_hours_60k": p60["device_hours"]}
        nt = (published or {}).get(key)
        if nt is not None:
            if "gpu_hours" in nt:
                nt_s_entry = nt["gpu_hours"] * 3600 / nt["n"] ** 2
                nt_h60 = float(nt["gpu_hours"])
            else:
                nt_s_entry = nt["ms_per_entry"] / 1e3
                nt_h60 = nt_s_entry * 60000 ** 2 / 3600  # full 60k x 60k at that rate
            row.update({"nt_s_per_entry_v100": nt_s_entry, "nt_gpu_hours_60k": nt_h60,
                        "nt_published": nt["what"], "published_code": nt.get("code", "neural-tangents"),
                        "published_source": nt.get("source", ""),
                        "devices_per_v100": p60["device_hours"] / nt_h60})
        for k in n_devices:
            row[f"wall_hours_50k_{k}"] = p50["device_hours"] / k
        row["calibration"] = p50["calibration"]["label"]
        row["notes"] = p50["notes"]
        rows.append(row)
    return rows


def main(argv: Optional[List[str]] = None,
         published: Optional[Dict[str, Dict[str, Any]]] = None) -> int:
    """CLI of the CIFAR-10 table (``benchmarks/literature.py`` calls it with
    neural-tangents' published figures)."""
    ap = argparse.ArgumentParser(prog="python -m ntkscale.costs.projection",
                                 description="CIFAR-10 projections (next to published figures when given)")
    ap.add_argument("--calibration", default=None, help="calibration JSON (default: costmodel_<device>.json)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    ap.add_argument("--devices", default="1,64", help="device counts for the wall-time columns")
    ap.add_argument("--json-out", default=None, help="write the table as JSON here")
    args = ap.parse_args(argv)
    try:
        rows = cifar10_table(args.calibration, args.device, [int(s) for s in args.devices.split(",")],
                             published)
    except NtkscaleError as exc:
        print(f"projection: {exc}", file=sys.stderr)
        return 2
    for r in rows:
        line = (f"{r['net']:11s} {r['dtype']:7s} {r['code_path']:9s} {r['ours_s_per_entry']:.3g} {r['unit']}-s/entry; "
                f"50k Gram {r['ours_device_hours_50k']:.3g} {r['unit']}-h, 60k {r['ours_device_hours_60k']:.3g}")
        if "nt_gpu_hours_60k" in r:
            line += (f"; {r['published_code']} {r['nt_gpu_hours_60k']:.3g} V100-h (60k); "
                     f"{r['devices_per_v100']:.3g} {r['unit']}s per V100 (whole job)")
        print(line)
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps({"device_kind": args.device, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
