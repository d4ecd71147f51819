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
says so in its label; ``n_devices`` then counts cores. The wall time is the
slower of two overlapped streams (:func:`combine`): compute, the grid's block
tasks scheduled on ``n_devices`` slots (:func:`makespan`), and store writes,
the bytes the store writes at its fsync'd sequential write bandwidth (measured
with the calibration, ``storage``). Cluster start-up and scheduling are not
modelled, and a one-core rate assumes the other cores do not slow it
(``benchmarks/heldout.py`` measures how far a real run lands from the
projection). A ``gpu`` calibration exists only where one was measured on a GPU;
asking for it otherwise is an error that says so, never a guess.

    ntkscale project --n 50000 --input-shape 32,32,3 --net myrtle5 --devices 8 --device cpu

The CPU calibration ships as package data (``ntkscale/costs/data/cpu.json``,
written by ``benchmarks/suite.py``). Published neural-tangents figures for the
same kind of run live in ``benchmarks/literature.py`` with their sources;
:func:`cifar10_table` puts figures it is given next to the projections.
"""

from __future__ import annotations

import argparse
import heapq
from importlib import resources
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import model as costmodel
from .. import stax
from ..choices import DTYPES, KERNELS
from ..errors import CalibrationError, NtkscaleError
from ..gram.plan import choose_block_size, effective_block_size
from ..store.blocks import Plan, make_plan

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


#: Above this many block tasks the projection splits the work evenly instead of scheduling each task.
MAX_SCHEDULED_TASKS = 200_000


def _task_seconds(per: Dict[str, Any], plan: Plan) -> Tuple[List[float], float]:
    """Predicted seconds of each task of ``plan`` on one device, in submission order:
    a block of r × c entries (a diagonal block: its r(r+1)/2 triangle) at the per-entry
    rate of a call that size (lane narrowing and the pooled path's self pairs
    included, ``model._call_features``) plus the per-call overhead; a ``diag-*`` task
    of r rows costs r entries at the large-block rate plus one overhead. Also returns
    the entries computed."""
    feat, coefs, path = per["features"], per["coefficients"], per["path"]
    cache: Dict[Tuple[int, int], float] = {}
    out: List[float] = []
    total = 0.0
    for b in plan.blocks:
        r = b.rows[1] - b.rows[0]
        if b.is_diag:
            out.append(r * per["s_per_entry"] + per["overhead_s_per_call"])
            total += r
            continue
        c = b.cols[1] - b.cols[0]
        if (r, c) not in cache:
            cache[(r, c)] = costmodel._apply(coefs, path, costmodel._call_features(feat, r, c))[0]
        entries = r * (r + 1) / 2 if b.symmetric else float(r) * c
        out.append(entries * cache[(r, c)] + per["overhead_s_per_call"])
        total += entries
    return out, total


def makespan(task_seconds: Sequence[float], slots: int) -> float:
    """Wall seconds of ``task_seconds`` run by ``slots`` workers that each take the next
    task in order when they finish one (greedy list scheduling, what a Dask cluster does
    with the engine's queue; Graham 1969 bounds it by total/slots + the longest task)."""
    slots = max(1, int(slots))
    if len(task_seconds) > MAX_SCHEDULED_TASKS or slots == 1:
        return float(sum(task_seconds)) / slots
    loads = [0.0] * slots
    for t in task_seconds:
        heapq.heapreplace(loads, loads[0] + t)
    return max(loads)


def combine(compute_s: float, write_s: Optional[float]) -> Dict[str, Any]:
    """Wall time of an overlapped pipeline (blocks written while the next ones compute):
    the slower of compute and store writes, and which of them binds. ``write_s`` None:
    writes not modelled (no write bandwidth), compute binds by default."""
    if write_s is None:
        return {"wall_seconds": compute_s, "binds": "compute", "wall_seconds_serial": compute_s}
    return {"wall_seconds": max(compute_s, write_s), "binds": "compute" if compute_s >= write_s else "write",
            "wall_seconds_serial": compute_s + write_s}


def write_bandwidth_of(cal: Dict[str, Any], override: Optional[float] = None) -> Optional[float]:
    """Bytes/s of the store's fsync'd sequential writes: ``override``, else the calibration's."""
    if override is not None:
        if not float(override) > 0:
            raise NtkscaleError(f"write bandwidth {override!r}: give bytes per second > 0")
        return float(override)
    bw = (cal.get("storage") or {}).get("write_bytes_per_s")
    return float(bw) if bw else None


def project(n: int, input_shape: Sequence[int], net: NetLike, device_kind: str = "cpu", n_devices: int = 1,
            dtype: str = "float64", calibration: Union[None, str, os.PathLike, Dict[str, Any]] = None, *,
            n_test: int = 0, get: Sequence[str] = KERNELS, block_size: Optional[int] = None,
            memory_per_task: int = 4 << 30, write_bandwidth: Optional[float] = None) -> Dict[str, Any]:
    """Projected device time of an ``n``-example Gram run (plus ``n_test`` rows of K(test, train)).

    Compute: every task of the planner's grid (``store.blocks.make_plan``) at the
    calibrated rate, scheduled on ``n_devices`` slots (:func:`makespan`). Writes:
    the bytes the store writes (every kernel's full square, mirrors included, and
    the diagonals) at the store's fsync'd sequential write bandwidth (the
    calibration's ``storage``, or ``write_bandwidth`` bytes/s). The wall time is
    the larger of the two (:func:`combine`: writes overlap compute) and ``binds``
    says which. Returns a JSON-able dict: ``device_hours`` (core-hours on CPU, compute),
    ``wall_seconds``, ``compute_wall_seconds``, ``write_seconds``, ``binds``,
    ``stated_uncertainty`` (the calibration fit's largest relative error), the grid,
    the calibration's label and the notes that qualify the numbers.
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
    plan = make_plan(int(n), int(n_test), effective_block_size(block, int(n), int(n_test)))
    tasks, entries = _task_seconds(per, plan)
    device_s = float(sum(tasks))
    compute_wall = makespan(tasks, int(n_devices))
    storage_bytes = float(plan.storage_bytes(itemsize, len(get)))
    bw = write_bandwidth_of(cal, write_bandwidth)
    write_s = storage_bytes / bw if bw else None
    wall = combine(compute_wall, write_s)
    cost = kernel_fn.cost(shape)
    unit = "core" if device_kind == "cpu" else "GPU"
    uncertainty = float(cal.get("fit", {}).get("max_abs_rel_err", float("nan")))
    notes = list(per["notes"])
    notes.append(f"{cal.get('label', device_kind)}; calibrated {cal.get('date', '?')}")
    slots = f"{int(n_devices)} {unit}{'s' if int(n_devices) != 1 else ''}"
    if write_s is None:
        notes.append(f"wall time is the {plan.n_blocks} block tasks scheduled on {slots} (compute only: the "
                     "calibration has no store write bandwidth; remake it, or give write_bandwidth)")
    else:
        notes.append(f"wall time: {wall['binds']} binds. Compute: the {plan.n_blocks} block tasks scheduled on "
                     f"{slots}; writes: {storage_bytes / 1e9:.3g} GB (every kernel's full square, mirrors "
                     f"included) at {bw / 1e9:.3g} GB/s fsync'd, overlapped with compute (the sum, "
                     f"{wall['wall_seconds_serial']:.4g} s, if they were not); cluster start-up not included")
    notes.append(f"stated uncertainty ±{100 * uncertainty:.0f} %: the largest relative error of the "
                 "calibration's fit (in sample); benchmarks/heldout.py checks it on a held-out run")
    return {
        "net": net if isinstance(net, str) else kernel_fn.spec_hash,
        "n": int(n), "n_test": int(n_test), "input_shape": list(shape), "dtype": dtype, "get": list(get),
        "device_kind": device_kind, "n_devices": int(n_devices), "unit": unit,
        "code_path": per["path"], "flops_per_entry": float(cost["flops"]),
        "bytes_per_entry": float(cost["bytes"]) * itemsize,
        "seconds_per_entry": per["s_per_entry"], "overhead_s_per_call": per["overhead_s_per_call"],
        "block_size": plan.block_size, "kernel_calls": plan.n_blocks,
        "entries": entries,
        "device_seconds": device_s, "device_hours": device_s / 3600.0,
        "compute_wall_seconds": compute_wall, "write_seconds": write_s, "write_bytes_per_s": bw,
        "wall_seconds": wall["wall_seconds"], "wall_hours": wall["wall_seconds"] / 3600.0,
        "wall_seconds_serial": wall["wall_seconds_serial"], "binds": wall["binds"],
        "stated_uncertainty": uncertainty,
        "storage_bytes": storage_bytes,
        "calibration": {"source": str(cal.get("source", "")), "kind": cal.get("kind"), "label": cal.get("label"),
                        "date": cal.get("date"), "dtype_used": per["calibration_dtype"],
                        "fit": cal.get("fit", {}), "storage": cal.get("storage")},
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
