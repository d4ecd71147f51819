"""CLI: ``plan``, ``gram``, ``status``, ``verify`` and ``export`` (thin wrappers).

Examples::

    ntkscale plan config.yaml
    ntkscale gram config.yaml                 # resumable; rerun to finish
    ntkscale status run.zarr --json           # read-only, safe during a run
    ntkscale verify run.zarr --repair
    ntkscale export run.zarr train -o K.npy --get ntk
    ntkscale status s3://bucket/run.zarr --store-option endpoint_url=http://127.0.0.1:9000
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, Dict

from ..choices import KERNELS
from ..config.run import AddressClusterConfig, LocalClusterConfig, RunConfig, load_config
from ..errors import ConfigError
from ..gram.progress import say
from ..stages.gram import GramPipeline, repair
from ..config.loader import load_yaml
from ..stages.plan import plan_report
from ..store.location import StoreLocation, is_url, register_options
from ..store.lock import describe_holder
from ..store.maintenance import export, status, verify
from .output import duration, human_bytes, npy_path, print_json
from .project import add_shape_arguments, project_cmd


def cluster_args(p: argparse.ArgumentParser) -> None:
    """``--scheduler`` and ``--workers``: override the config's ``cluster:`` section."""
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="use the Dask scheduler at ADDRESS instead of the config's cluster (cluster kind: address)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="use a local cluster of N worker processes instead of the config's cluster")


def store_option_args(p: argparse.ArgumentParser) -> None:
    """``--store-option KEY=VALUE`` (repeatable): fsspec options of a store at a URL."""
    p.add_argument("--store-option", action="append", default=None, metavar="KEY=VALUE",
                   help="an fsspec option of a store at a URL (s3://...), e.g. endpoint_url=http://host:9000; "
                        "repeatable; values are read as YAML (true, 3, text, {retries: {max_attempts: 1}}); added to "
                        "the config's store_options")


def store_options(args: argparse.Namespace) -> Dict[str, Any]:
    """``--store-option`` pairs as a dict (values read as YAML: ``anon=true`` is a bool)."""
    out: Dict[str, Any] = {}
    for item in getattr(args, "store_option", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--store-option {item!r}: write KEY=VALUE, e.g. endpoint_url=http://host:9000")
        try:
            out[key.strip()] = load_yaml(value) if value else ""
        except Exception:  # noqa: BLE001 - not YAML: the text as given
            out[key.strip()] = value
    return out


def store_arg(args: argparse.Namespace) -> StoreLocation:
    """The ``STORE`` argument (a path, or a URL with ``--store-option``s), checked."""
    opts = store_options(args)
    if opts and not is_url(args.store):
        raise ConfigError(f"--store-option applies to a store at a URL (s3://...), not to {args.store}")
    register_options(args.store, opts)
    return StoreLocation.parse(args.store, opts or None)


def run_config(args: argparse.Namespace) -> RunConfig:
    """The run config with ``--scheduler``/``--workers``/``--store-option`` applied."""
    config = load_config(args.config)
    opts = store_options(args)
    if opts:
        if not is_url(config.store):
            raise ConfigError(f"--store-option applies to a store at a URL (s3://...), not to {config.store}")
        config = config.replace(store_options={**config.store_options, **opts})
    workers = getattr(args, "workers", None)
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers {workers}: give at least 1 worker process")
    if getattr(args, "scheduler", None):
        config = config.replace(cluster=AddressClusterConfig(address=args.scheduler))
    if workers:
        base = config.cluster if isinstance(config.cluster, LocalClusterConfig) else LocalClusterConfig()
        config = config.replace(cluster=dataclasses.replace(base, n_workers=args.workers))
    return config


# ----------------------------------------------------------------------------- plan


def plan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="run configuration (YAML or JSON); or give shapes "
                   "instead (--n, --input-shape, --net, --devices, --device) for a projection")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--no-calibrate", action="store_true", help="skip the timing of one small block")
    store_option_args(p)
    add_shape_arguments(p.add_argument_group("shapes instead of data (as `ntkscale project`)"), required=False)


def plan_cmd(args: argparse.Namespace) -> int:
    if args.config is None:
        missing = [flag for flag, value in (("--n", args.n), ("--input-shape", args.input_shape),
                                            ("--net", args.net)) if value is None]
        if missing:
            raise ConfigError("plan needs a CONFIG file, or shapes instead of data: give "
                              f"{', '.join(missing)} (e.g. --n 50000 --input-shape 32,32,3 --net myrtle5)")
        return project_cmd(args)
    config = run_config(args)
    info: Dict[str, Any] = plan_report(config, timed=not args.no_calibrate, say=say)
    if args.json:
        print_json(info)
        return 0
    parts = info["parts"]
    count = lambda p: parts.get(p, {}).get("blocks", 0)  # noqa: E731
    print(f"store      {info['store']} ({'existing' if info['store_exists'] else 'new'})")
    print(f"inputs     train {info['n_train']}, test {info['n_test']}; kernels {', '.join(info['get'])}, "
          f"{config.dtype}")
    print(f"blocks     block size {info['block_size']}: train {count('train')} (upper triangle), "
          f"test {count('test')}, diagonal {count('diag-train') + count('diag-test')} -> "
          f"{info['blocks_total']} tasks, {info['blocks_done']} already done")
    print(f"storage    {human_bytes(info['storage_bytes'])} of Gram and diagonal arrays")
    print(f"work       {info['flops_todo']:.3g} flops to do ({info['entries_todo']:,} kernel entries, "
          f"{info['flops_per_entry']:.0f} flops each)")
    print(f"memory     {human_bytes(info['task_memory'])} per task, {info['slots']} task slots planned")
    for finding in info.get("preflight", []):
        print(f"{finding['level']:<10} {finding['message']}")
    kernel = info["kernel"]
    detail = (f"{kernel['lanes']} image pairs per group" if kernel["lanes"] else
              f"tiles of {kernel['tile'][0]} x {kernel['tile'][1]}" if kernel["tile"] else "")
    print(f"kernel     {kernel['path']} path on {kernel['device']}: {kernel['reason']}"
          + (f"; {detail}" if detail else ""))
    if "estimated_s" in info:
        print(f"estimate   ~{duration(info['estimated_s'])} plus cluster start-up (the plan's estimate; "
              "gram's progress line shows the ETA it measures): compute "
              f"{duration(info['compute_s'])} on {info['slots']} slots ({info['calibration_s_per_entry']:.3g} s "
              f"per entry on one core), writes {duration(info['write_s'])} at "
              f"{human_bytes(info['write_bytes_per_s'])}/s (timed here)")
    return 0


# ----------------------------------------------------------------------------- gram


def store_change_args(p: argparse.ArgumentParser) -> None:
    """``--recompute-test`` and ``--replace-y``: accept a store whose test inputs or labels changed."""
    p.add_argument("--recompute-test", action="store_true",
                   help="the test inputs changed: recompute only the test part of the store")
    p.add_argument("--replace-y", action="store_true", help="store changed labels (the Gram is kept)")


def gram_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="run configuration (YAML or JSON)")
    store_change_args(p)
    cluster_args(p)
    store_option_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--json", action="store_true", help="print the run report as JSON at the end")


def gram_cmd(args: argparse.Namespace) -> int:
    pipe = GramPipeline(run_config(args), recompute_test=args.recompute_test, replace_y=args.replace_y,
                        progress=not args.quiet)
    report = pipe.run()
    if args.json:
        out = dataclasses.asdict(report)
        out.pop("records")
        print_json(out)
    elif not args.quiet:
        print(report.summary())
    return 0


# ----------------------------------------------------------------------------- status


STORE_HELP = "a Gram store: a directory (run.zarr) or a URL (s3://bucket/run.zarr)"


def status_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", help=STORE_HELP)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    store_option_args(p)


def status_cmd(args: argparse.Namespace) -> int:
    info = status(store_arg(args))
    if args.json:
        print_json(info)
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
              f"{duration(eta) if eta is not None else '?'}")
    for key, why in list(info.get("damaged", {}).items())[:20]:
        print(f"damaged    {key}: {why} (run `ntkscale verify --repair {info['store']}`)")
    if len(info.get("damaged", {})) > 20:
        print(f"damaged    ... {len(info['damaged'])} blocks in all")
    if info.get("checked"):
        print(f"checked    {info['checked']}")
    return 0


# ----------------------------------------------------------------------------- verify


def verify_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", help=STORE_HELP)
    store_option_args(p)
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
    store = store_arg(args)
    if not args.repair:
        rep = verify(store)
        print_json(rep) if args.json else _print_report(rep)
        return 0 if rep["clean"] else 1

    cluster = (AddressClusterConfig(address=args.scheduler) if args.scheduler
               else LocalClusterConfig(n_workers=args.workers))
    out = repair(store, cluster, progress=not args.json)
    if args.json:
        print_json(out)
    else:
        _print_report(out["before"])
        print(f"repaired {len(out['repaired'])} blocks ({out['blocks_computed']} computed); after repair:")
        _print_report(out["after"])
    return 0 if out["after"]["clean"] else 1


# ----------------------------------------------------------------------------- export


def export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", help=STORE_HELP)
    store_option_args(p)
    p.add_argument("which", choices=("train", "test"), help="train (n×n) or test (m×n)")
    p.add_argument("-o", "--output", required=True, metavar="FILE.npy", help="output .npy file (.npy is added when missing)")
    p.add_argument("--get", choices=KERNELS, help="which kernel (needed when both are stored)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")


def export_cmd(args: argparse.Namespace) -> int:
    out = export(store_arg(args), args.which, npy_path(args.output), kind=args.get, force=args.force)
    print(f"wrote {out}", file=sys.stderr)
    return 0
