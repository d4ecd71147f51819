"""CLI: ``plan``, ``gram``, ``status``, ``verify`` and ``export`` (thin wrappers).

Examples::

    ntkscale plan config.yaml
    ntkscale gram config.yaml                 # resumable; rerun to finish
    ntkscale status run.zarr --json           # read-only, safe during a run
    ntkscale verify run.zarr --repair
    ntkscale export run.zarr train -o K.npy --get ntk
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from typing import Any, Dict

import numpy as np

from .main import command


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def _duration(s: float) -> str:
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def _config(args: argparse.Namespace):
    from ..config.run import AddressClusterConfig, LocalClusterConfig, load_config  # noqa: PLC0415

    config = load_config(args.config)
    if getattr(args, "scheduler", None):
        config = config.replace(cluster=AddressClusterConfig(address=args.scheduler))
    if getattr(args, "workers", None):
        base = config.cluster if isinstance(config.cluster, LocalClusterConfig) else LocalClusterConfig()
        config = config.replace(cluster=dataclasses.replace(base, n_workers=args.workers))
    return config


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


# ----------------------------------------------------------------------------- plan


def calibrate(kernel_fn: Any, x: Any, dtype: str, get: Any, rows: int = 256) -> float:
    """Seconds per kernel entry on one core, timed on a rows × rows block of the data."""
    try:
        from threadpoolctl import threadpool_limits  # noqa: PLC0415 (comes with scikit-learn)
    except ImportError:  # pragma: no cover
        import contextlib  # noqa: PLC0415

        threadpool_limits = lambda n: contextlib.nullcontext()  # noqa: E731

    xs = np.asarray(x[:rows], dtype=dtype)
    ys = xs[::-1].copy()
    numba_threads = None
    try:
        import numba  # noqa: PLC0415

        numba_threads = numba.get_num_threads()
        numba.set_num_threads(1)
    except Exception:
        pass
    try:
        with threadpool_limits(1):
            kernel_fn(xs[:8], ys[:8], get=tuple(get))        # warm-up (JIT, caches)
            best = float("inf")
            for _ in range(3):
                t = time.perf_counter()
                kernel_fn(xs, ys, get=tuple(get))
                best = min(best, time.perf_counter() - t)
    finally:
        if numba_threads:
            numba.set_num_threads(numba_threads)
    return best / (len(xs) * len(ys))


def write_bandwidth(directory: str, nbytes: int = 64 << 20) -> float:
    """Bytes/s of one file write (then deleted) in ``directory`` (the store's disk)."""
    import os  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    os.makedirs(directory, exist_ok=True)
    data = np.ones(nbytes // 8)
    fd, path = tempfile.mkstemp(prefix=".ntkscale-plan-", dir=directory)
    try:
        t = time.perf_counter()
        with os.fdopen(fd, "wb") as f:
            f.write(memoryview(data).cast("B"))
        return nbytes / max(time.perf_counter() - t, 1e-9)
    finally:
        os.remove(path)


def _plan_args(p: argparse.ArgumentParser) -> None:
    from .project import add_shape_arguments  # noqa: PLC0415

    p.add_argument("config", nargs="?", help="run configuration (YAML or JSON); or give shapes "
                   "instead (--n, --input-shape, --net, --devices, --device) for a projection")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--no-calibrate", action="store_true", help="skip the timing of one small block")
    add_shape_arguments(p.add_argument_group("shapes instead of data (as `ntkscale project`)"), required=False)


def plan_cmd(args: argparse.Namespace) -> int:
    from ..stages.gram import GramPipeline  # noqa: PLC0415

    if args.config is None:
        missing = [flag for flag, value in (("--n", args.n), ("--input-shape", args.input_shape),
                                            ("--net", args.net)) if value is None]
        if missing:
            from ..errors import ConfigError  # noqa: PLC0415

            raise ConfigError("plan needs a CONFIG file, or shapes instead of data: give "
                              f"{', '.join(missing)} (e.g. --n 50000 --input-shape 32,32,3 --net myrtle5)")
        from .project import project_cmd  # noqa: PLC0415

        return project_cmd(args)
    config = _config(args)
    pipe = GramPipeline(config, progress=False)
    info: Dict[str, Any] = pipe.describe()
    if not args.no_calibrate:
        import os  # noqa: PLC0415

        per_entry = calibrate(pipe.kernel_fn, pipe.inputs()["train"].x, config.dtype, config.kernel.get)
        bandwidth = write_bandwidth(os.path.dirname(config.store) or ".")
        todo = info["blocks_todo"] / max(1, info["blocks_total"])
        info["calibration_s_per_entry"] = per_entry
        info["write_bytes_per_s"] = bandwidth
        info["compute_s"] = info["entries_todo"] * per_entry / max(1, info["slots"])
        info["write_s"] = info["storage_bytes"] * todo / bandwidth
        # with io threads writes overlap compute (the slower of the two); without,
        # every task computes and then writes, so the two add up
        from ..stages.gram import io_threads  # noqa: PLC0415

        overlap = io_threads(config) > 0
        info["estimated_s"] = (max if overlap else (lambda a, b: a + b))(info["compute_s"], info["write_s"])
    if args.json:
        _print_json(info)
        return 0
    parts = info["parts"]
    count = lambda p: parts.get(p, {}).get("blocks", 0)  # noqa: E731
    print(f"store      {info['store']} ({'existing' if info['store_exists'] else 'new'})")
    print(f"inputs     train {info['n_train']}, test {info['n_test']}; kernels {', '.join(info['get'])}, "
          f"{config.dtype}")
    print(f"blocks     block size {info['block_size']}: train {count('train')} (upper triangle), "
          f"test {count('test')}, diagonal {count('diag-train') + count('diag-test')} -> "
          f"{info['blocks_total']} tasks, {info['blocks_done']} already done")
    print(f"storage    {_bytes(info['storage_bytes'])} of Gram and diagonal arrays")
    print(f"work       {info['flops_todo']:.3g} flops to do ({info['entries_todo']:,} kernel entries, "
          f"{info['flops_per_entry']:.0f} flops each)")
    print(f"memory     {_bytes(info['task_memory'])} per task, {info['slots']} task slots planned")
    if "estimated_s" in info:
        print(f"estimate   ~{_duration(info['estimated_s'])} plus cluster start-up: compute "
              f"{_duration(info['compute_s'])} on {info['slots']} slots ({info['calibration_s_per_entry']:.3g} s "
              f"per entry on one core), writes {_duration(info['write_s'])} at "
              f"{_bytes(info['write_bytes_per_s'])}/s (timed here)")
    return 0


plan_cmd.arguments = _plan_args
command("plan", "Show the block plan of a run: blocks, storage, flops and an estimated time.")(plan_cmd)


# ----------------------------------------------------------------------------- gram


def _gram_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="run configuration (YAML or JSON)")
    p.add_argument("--recompute-test", action="store_true",
                   help="the test inputs changed: recompute only the test part of the store")
    p.add_argument("--replace-y", action="store_true", help="store changed labels (the Gram is kept)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="use this Dask scheduler (cluster kind: address)")
    p.add_argument("--workers", type=int, metavar="N", help="local cluster: number of worker processes")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--json", action="store_true", help="print the run report as JSON at the end")


def gram_cmd(args: argparse.Namespace) -> int:
    from ..stages.gram import GramPipeline  # noqa: PLC0415

    pipe = GramPipeline(_config(args), recompute_test=args.recompute_test, replace_y=args.replace_y,
                        progress=not args.quiet)
    report = pipe.run()
    if args.json:
        out = dataclasses.asdict(report)
        out.pop("records")
        _print_json(out)
    elif not args.quiet:
        print(report.summary())
    return 0


gram_cmd.arguments = _gram_args
command("gram", "Compute (or finish) the Gram store of a run on a Dask cluster.")(gram_cmd)


# ----------------------------------------------------------------------------- status


def _status_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", help="a Gram store directory (run.zarr)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def status_cmd(args: argparse.Namespace) -> int:
    from ..store.lock import describe_holder  # noqa: PLC0415
    from ..store.maintenance import status  # noqa: PLC0415

    info = status(args.store)
    if args.json:
        _print_json(info)
        return 0
    if info["state"] == "creating":
        print(f"store      {info['store']}\nstate      being created by {describe_holder(info['holder'])}")
        return 0
    pct = 100.0 * info["blocks_done"] / max(1, info["blocks_total"])
    print(f"store      {info['store']}")
    print(f"state      {'running: ' + describe_holder(info['holder']) if info['running'] else 'idle'}"
          f"{'' if not info['complete'] else ', complete'}")
    print(f"blocks     {info['blocks_done']}/{info['blocks_total']} ({pct:.0f}%)")
    for part, p in info["parts"].items():
        print(f"  {part:<11}{p['blocks_done']}/{p['blocks_total']}")
    print(f"shape      train {info['n_train']}, test {info['n_test']}; block size {info['block_size']}, "
          f"{info['dtype']}, {', '.join(info['get'])}")
    if info.get("entries_per_s"):
        eta = info.get("eta_s")
        print(f"rate       {info['entries_per_s']:.3g} entries/s this run; ETA "
              f"{_duration(eta) if eta is not None else '?'}")
    return 0


status_cmd.arguments = _status_args
command("status", "Show the progress of a Gram store (read-only; safe while a run is going).")(status_cmd)


# ----------------------------------------------------------------------------- verify


def _verify_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", help="a Gram store directory (run.zarr)")
    p.add_argument("--repair", action="store_true", help="recompute bad and missing blocks from the store")
    p.add_argument("--scheduler", metavar="ADDRESS", help="repair on this Dask scheduler")
    p.add_argument("--workers", type=int, metavar="N", help="repair on a local cluster of N workers")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _print_report(rep: Dict[str, Any]) -> None:
    print(f"{rep['store']}: {rep['ok']} of {rep['blocks_total']} blocks intact, {len(rep['missing'])} "
          f"missing, {len(rep['bad'])} bad")
    for key, why in list(rep["bad"].items())[:20]:
        print(f"  bad      {key}: {why}")
    if rep["missing"]:
        shown = ", ".join(rep["missing"][:10]) + (", ..." if len(rep["missing"]) > 10 else "")
        print(f"  missing  {shown}")
    for which, state in rep["inputs"].items():
        if state != "ok":
            print(f"  inputs   {which}: {state}")


def verify_cmd(args: argparse.Namespace) -> int:
    from ..store.maintenance import verify  # noqa: PLC0415

    if not args.repair:
        rep = verify(args.store)
        _print_json(rep) if args.json else _print_report(rep)
        return 0 if rep["clean"] else 1
    from ..config.run import AddressClusterConfig, LocalClusterConfig  # noqa: PLC0415
    from ..stages.gram import repair  # noqa: PLC0415

    cluster = (AddressClusterConfig(address=args.scheduler) if args.scheduler
               else LocalClusterConfig(n_workers=args.workers))
    out = repair(args.store, cluster, progress=not args.json)
    if args.json:
        _print_json(out)
    else:
        _print_report(out["before"])
        print(f"repaired {len(out['repaired'])} blocks ({out['blocks_computed']} computed); after repair:")
        _print_report(out["after"])
    return 0 if out["after"]["clean"] else 1


verify_cmd.arguments = _verify_args
command("verify", "Check every block of a store against its checksum; --repair recomputes bad ones.")(verify_cmd)


# ----------------------------------------------------------------------------- export


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", help="a Gram store directory (run.zarr)")
    p.add_argument("which", choices=("train", "test"), help="train (n×n) or test (m×n)")
    p.add_argument("-o", "--output", required=True, metavar="FILE.npy", help="output .npy file")
    p.add_argument("--get", choices=("nngp", "ntk"), help="which kernel (needed when both are stored)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")


def export_cmd(args: argparse.Namespace) -> int:
    from ..store.maintenance import export  # noqa: PLC0415

    out = export(args.store, args.which, args.output, kind=args.get, force=args.force)
    print(f"wrote {out}", file=sys.stderr)
    return 0


export_cmd.arguments = _export_args
command("export", "Write the dense train or test Gram of a complete store to a .npy file.")(export_cmd)

