"""CLI: ``ntkscale project`` — projected time of a Gram run from shapes, no data.

Example::

    ntkscale project --n 50000 --input-shape 32,32,3 --net myrtle5 --devices 8 --device cpu
"""

from __future__ import annotations

import argparse

from ..choices import DTYPES
from ..costs.projection import project
from .output import duration, print_json


def add_shape_arguments(p: argparse.ArgumentParser, required: bool = True) -> None:
    """The shape flags shared by ``project`` and ``plan`` (which takes them instead of a config)."""
    p.add_argument("--n", type=int, required=required, help="training examples (the n x n Gram)")
    p.add_argument("--n-test", type=int, default=0, help="test examples (K(test, train) rows)")
    p.add_argument("--input-shape", required=required, help="per-example shape, e.g. 32,32,3 or 784")
    p.add_argument("--net", required=required,
                   help="myrtle5 | myrtle7 | myrtle10 | cntk-gapDEPTH (e.g. cntk-gap21) | cntk-flattenDEPTH | fcDEPTH")
    p.add_argument("--devices", type=int, default=1, help="number of GPUs or CPU cores the blocks share (default 1)")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                   help="what computes the blocks: CPU cores (numba) or GPUs (CuPy) (default cpu)")
    p.add_argument("--dtype", choices=DTYPES, default="float64", help="dtype of the Gram (default float64)")
    p.add_argument("--get", default="nngp,ntk", help="kernels computed: nngp,ntk | ntk | nngp (default nngp,ntk)")
    p.add_argument("--block-size", type=int, default=None, help="rows per block (default: the planner's choice)")
    p.add_argument("--calibration", default=None,
                   help="cost-model calibration JSON (default: the one shipped for --device)")
    p.add_argument("--write-bandwidth", type=float, default=None,
                   help="the store's sequential write bandwidth in bytes/s (default: the calibration's)")


def project_args(p: argparse.ArgumentParser) -> None:
    add_shape_arguments(p)
    p.add_argument("--json", action="store_true", help="print the projection as JSON")


def project_cmd(args: argparse.Namespace) -> int:
    shape = tuple(int(s) for s in args.input_shape.replace("x", ",").split(",") if s.strip())
    out = project(args.n, shape, args.net, args.device, args.devices, args.dtype, args.calibration,
                  n_test=args.n_test, get=tuple(g.strip() for g in args.get.split(",") if g.strip()),
                  block_size=args.block_size, write_bandwidth=getattr(args, "write_bandwidth", None))
    if args.json:
        print_json(out)
        return 0
    unit = out["unit"]
    print(f"net        {args.net} on {args.n} x {'x'.join(map(str, shape))} (+{args.n_test} test), {args.dtype}, "
          f"{', '.join(out['get'])}; {out['code_path']} code path")
    print(f"work       {out['entries']:.4g} kernel entries, {out['flops_per_entry']:.4g} flops each; "
          f"block size {out['block_size']}, {out['kernel_calls']} kernel calls")
    print(f"rate       {out['seconds_per_entry']:.3g} s per entry on one {unit} "
          f"(+{1e3 * out['overhead_s_per_call']:.2g} ms per call)")
    print(f"projected  {out['device_hours']:.4g} {unit}-hours; {duration(out['wall_hours'] * 3600, days=True)} wall on "
          f"{out['n_devices']} {unit}{'s' if out['n_devices'] != 1 else ''}")
    print(f"storage    {out['storage_bytes'] / 2 ** 30:.1f} GiB of Gram and diagonal arrays")
    if out["write_seconds"] is not None:
        print(f"wall       {duration(out['wall_seconds'], days=True)}: {out['binds']} binds (compute "
              f"{duration(out['compute_wall_seconds'], days=True)}, writes {duration(out['write_seconds'], days=True)} "
              f"at {out['write_bytes_per_s'] / 1e9:.3g} GB/s)")
    for note in out["notes"]:
        print(f"note       {note}")
    return 0

