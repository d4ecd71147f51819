"""Residual CNTK throughput: ntkscale's compiled slab kernel vs neural-tangents 0.6.5.

Network: neural-tangents' README WideResNet, ``stax.presets.wide_resnet(block_size, k, 10,
pool=hw // 4)`` (Conv(16), three groups of FanOut/parallel/FanInSum blocks with strides 1, 2,
2, AvgPool down to one pixel, Flatten, Dense(10)), on ``default_rng(0).uniform`` images
``(n, hw, hw, 3)``, float64. What is timed: the CROSS kernel ``kernel_fn(x1, x2, "ntk")``
with ``len(x1) == len(x2) == n`` (x2 a different draw), n² entries for both libraries.

How: neural-tangents runs in its own venv as a long-lived worker (this file with
``--nt-worker``, the same layers built from ntkscale's canonical spec, ``jax.jit``), so the
two libraries' runs can be interleaved: one warm-up each (jit compilation / numba cache
load, excluded), the two Grams compared (they must agree to ``TOLERANCE`` before any time
is reported), then ``--repeats`` rounds of [ours, neural-tangents]. Both run on the same
pinned cores with the same thread count (``--threads``, default: every core of this
process's affinity; numba threads for ntkscale, ``taskset`` + XLA's Eigen pool for
neural-tangents). Reported: median seconds and entries/s with the min-max spread, and the
ratio of medians; the target (``--target``, default 10×) is checked and a miss is printed
and gives exit code 1.

    python benchmarks/bench_residual.py                       # 8x8x3, n = 64, 5 repeats
    python benchmarks/bench_residual.py --hw 16 --n 32 --repeats 3

On a shared machine the timings are indicative only (the load is recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TOLERANCE = 1e-9
_TUPLE_KEYS = {"filter_shape", "strides", "window_shape", "axis", "s"}


def images(n: int, hw: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(size=(n, hw, hw, 3))


# ----------------------------------------------------------- neural-tangents side
def _nt_build(stax, spec):
    layers = []
    for name, kwargs in spec:
        if name == "parallel":
            layers.append(stax.parallel(*[_nt_build(stax, b) for b in kwargs["branches"]]))
            continue
        kw = {k: (tuple(v) if k in _TUPLE_KEYS and isinstance(v, list) else v)
              for k, v in kwargs.items()}
        layers.append(getattr(stax, name)(**kw))
    return stax.serial(*layers)


def nt_worker(spec_path: str, n: int, hw: int, out: str) -> None:
    """Serve timed runs over stdin/stdout: "run" -> seconds of one cross kernel."""
    import warnings

    import jax

    jax.config.update("jax_enable_x64", True)
    from neural_tangents import stax

    warnings.filterwarnings("ignore")
    spec = json.loads(Path(spec_path).read_text())
    kfn = jax.jit(_nt_build(stax, spec)[2], static_argnames="get")
    x1, x2 = jax.numpy.asarray(images(n, hw, 0)), jax.numpy.asarray(images(n, hw, 1))
    t0 = time.perf_counter()
    k = kfn(x1, x2, get="ntk").block_until_ready()
    np.save(out, np.asarray(k))
    print(json.dumps({"warmup_s": time.perf_counter() - t0, "jax": jax.__version__}), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        t0 = time.perf_counter()
        kfn(x1, x2, get="ntk").block_until_ready()
        print(json.dumps({"seconds": time.perf_counter() - t0}), flush=True)


# ----------------------------------------------------------- ntkscale side
def _summary(times):
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "runs": len(times)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hw", type=int, default=8)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--block-size", type=int, default=1)
    ap.add_argument("--k", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="cores/threads for both (0: all)")
    ap.add_argument("--target", type=float, default=10.0)
    ap.add_argument("--out", default=str(HERE / "results" / "bench_residual.json"))
    ap.add_argument("--nt-worker", nargs=4, metavar=("SPEC", "N", "HW", "OUT"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.nt_worker:
        spec, n, hw, out = args.nt_worker
        nt_worker(spec, int(n), int(hw), out)
        return 0

    sys.path.insert(0, str(HERE.parent))
    import numba

    from benchmarks.common import machine, nt_python
    from ntkscale import stax

    cores = sorted(os.sched_getaffinity(0))
    threads = args.threads or len(cores)
    cores = cores[:threads]
    os.sched_setaffinity(0, set(cores))
    numba.set_num_threads(threads)
    py = nt_python()
    if py is None:
        print("neural-tangents venv not found (bash benchmarks/nt_venv.sh)")
        return 2
    net = stax.presets.wide_resnet(args.block_size, args.k, 10, pool=args.hw // 4)
    kfn = net[2]
    x1, x2 = images(args.n, args.hw, 0), images(args.n, args.hw, 1)
    ex = kfn.explain(x1.shape, x2.shape)
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_residual_{os.getpid()}"
    tmp.mkdir(exist_ok=True)
    (tmp / "spec.json").write_text(kfn.spec_json)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               XLA_FLAGS=(os.environ.get("XLA_FLAGS", "")
                          + f" --xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'}"
                          + f" intra_op_parallelism_threads={threads}").strip())
    cmd = ["taskset", "-c", ",".join(map(str, cores)), str(py), str(Path(__file__).resolve()),
           "--nt-worker", str(tmp / "spec.json"), str(args.n), str(args.hw), str(tmp / "nt.npy")]
    worker = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env=env)
    try:
        warm = json.loads(worker.stdout.readline())
        t0 = time.perf_counter()
        ours = kfn(x1, x2, "ntk")
        ours_warm = time.perf_counter() - t0
        theirs = np.load(tmp / "nt.npy")
        err = float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))
        if not err <= TOLERANCE:
            print(f"ntkscale and neural-tangents differ: max error {err:.3g} of the scale")
            return 1
        t_ours, t_nt = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            kfn(x1, x2, "ntk")
            t_ours.append(time.perf_counter() - t0)
            worker.stdin.write("run\n")
            worker.stdin.flush()
            t_nt.append(json.loads(worker.stdout.readline())["seconds"])
    finally:
        worker.stdin.close()
        worker.wait(timeout=60)
    ours_s, nt_s = _summary(t_ours), _summary(t_nt)
    entries = args.n * args.n
    ratio = nt_s["median_s"] / ours_s["median_s"]
    rec = {"benchmark": "residual CNTK cross kernel (WideResNet preset)", "hw": args.hw,
           "n": args.n, "channels": 3, "dtype": "float64", "block_size": args.block_size,
           "k": args.k, "threads": threads, "cores": cores, "path": ex.path,
           "flops_per_entry": ex.flops_per_entry, "max_error_vs_nt": err,
           "ours": ours_s, "nt": nt_s, "ours_warmup_s": ours_warm, "nt_warmup_s": warm["warmup_s"],
           "ours_entries_per_s": entries / ours_s["median_s"],
           "nt_entries_per_s": entries / nt_s["median_s"], "ratio_of_medians": ratio,
           "target": args.target, "target_met": ratio >= args.target, "machine": machine(),
           "jax": warm["jax"], "note": "shared machine: indicative timings"}
    print(f"WideResNet({args.block_size}, {args.k}) {args.hw}x{args.hw}x3 float64 cross kernel, "
          f"n = {args.n}, {threads} thread(s) on cores {cores}, path {ex.path}, "
          f"load {rec['machine']['load_1min']}")
    for name, s in (("ntkscale", ours_s), ("neural-tangents", nt_s)):
        print(f"  {name:16s} median {s['median_s']:.4g} s (min {s['min_s']:.4g}, max "
              f"{s['max_s']:.4g}; {s['runs']} runs)  {entries / s['median_s']:.4g} entries/s")
    print(f"  outputs agree to {err:.2e} of the scale; ratio of medians {ratio:.1f}x "
          f"(target {args.target:g}x: {'met' if rec['target_met'] else 'MISSED'})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rec, indent=2) + "\n")
    return 0 if rec["target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
