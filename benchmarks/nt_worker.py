"""Time neural-tangents' exact kernel on one configuration; print one JSON line.

Run with the neural-tangents venv's python (see benchmarks/nt_venv.sh), e.g.

    PY=$(bash benchmarks/nt_venv.sh)
    $PY benchmarks/nt_worker.py --net fc --n 4096 --d 784 --depth 3 --dtype float32
    $PY benchmarks/nt_worker.py --net cntk --n 64 --hw 8 --depth 3 --dtype float64
    $PY benchmarks/nt_worker.py --net myrtle --n 32 --hw 8 --depth 5 --final-pools 1

Nets (depth L = L hidden blocks + readout, see shared NT-CONVENTIONS):
  fc:   L x [Dense(512, W_std=sqrt(2), b_std=0.1), Relu], Dense(1, same stds)
  cntk: L x [Conv(512, (3, 3), padding="SAME", same stds), Relu], GlobalAvgPool,
        Dense(1, same stds)
  myrtle: depth 5/7/10 (stages (2,1,1), (2,2,2), (3,3,3)): [Conv(512, (3, 3),
        SAME, W_std=sqrt(2), b_std=0), Relu] x a, AvgPool((2,2),(2,2)), ... x b,
        AvgPool, ... x d, AvgPool x final_pools, Flatten, Dense(1, same stds)
        (neural-tangents' Myrtle example; = ntkscale.stax.presets.myrtle)
Data: numpy default_rng(0); fc: standard normal (n, d); cntk: uniform [0, 1)
(n, hw, hw, 1); myrtle: uniform [0, 1) (n, hw, hw, 3). Times the full n x n gram kernel_fn(x, None, get) after one
excluded warm-up (which includes jit compilation).
"""

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--net", choices=("fc", "cntk", "myrtle"), required=True)
    ap.add_argument("--final-pools", type=int, default=3, help="myrtle: pools after the last stage")
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--d", type=int, default=784, help="input dim (fc)")
    ap.add_argument("--hw", type=int, default=8, help="image height = width (cntk)")
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--get", choices=("ntk", "nngp"), default="ntk")
    ap.add_argument("--width", type=int, default=512,
                    help="layer width (ignored by the infinite-width kernel)")
    ap.add_argument("--batch-size", type=int, default=0,
                    help="use neural_tangents.batch with this block size (0: off); "
                         "it must divide n")
    ap.add_argument("--save", default=None, help="save the gram as .npy")
    args = ap.parse_args(argv)

    import jax
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    import numpy as np
    import neural_tangents as nt
    from neural_tangents import stax
    import importlib.metadata as md

    s2 = math.sqrt(2.0)
    layers = []
    if args.net == "fc":
        for _ in range(args.depth):
            layers += [stax.Dense(args.width, W_std=s2, b_std=0.1), stax.Relu()]
        x = np.random.default_rng(0).standard_normal((args.n, args.d))
    elif args.net == "cntk":
        for _ in range(args.depth):
            layers += [stax.Conv(args.width, (3, 3), padding="SAME", W_std=s2, b_std=0.1),
                       stax.Relu()]
        layers += [stax.GlobalAvgPool()]
        x = np.random.default_rng(0).uniform(size=(args.n, args.hw, args.hw, 1))
    else:
        stages = {5: (2, 1, 1), 7: (2, 2, 2), 10: (3, 3, 3)}[args.depth]
        block = [stax.Conv(args.width, (3, 3), padding="SAME", W_std=s2, b_std=0.0), stax.Relu()]
        pool = stax.AvgPool((2, 2), strides=(2, 2), padding="VALID")
        layers = block * stages[0] + [pool] + block * stages[1] + [pool] + block * stages[2]
        layers += [pool] * args.final_pools + [stax.Flatten()]
        x = np.random.default_rng(0).uniform(size=(args.n, args.hw, args.hw, 3))
    readout_b = 0.0 if args.net == "myrtle" else 0.1
    layers += [stax.Dense(1, W_std=s2, b_std=readout_b)]
    _, _, kernel_fn = stax.serial(*layers)

    x = jax.numpy.asarray(x.astype(args.dtype))
    if args.batch_size:
        fn = nt.batch(kernel_fn, batch_size=args.batch_size)
    else:
        fn = jax.jit(kernel_fn, static_argnames="get")

    def run():
        return fn(x, None, get=args.get).block_until_ready()

    t0 = time.perf_counter()
    k = run()  # warm-up / compile, excluded
    warm = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        k = run()
        times.append(time.perf_counter() - t0)

    assert k.shape == (args.n, args.n), k.shape
    assert str(k.dtype) == args.dtype, (k.dtype, args.dtype)
    if args.save:
        np.save(args.save, np.asarray(k))
    best = min(times)
    out = {
        "seconds_best": best,
        "seconds_median": statistics.median(times),
        "entries_per_s": args.n * args.n / best,
        "n": args.n,
        "net": args.net,
        "depth": args.depth,
        "d": args.d if args.net == "fc" else None,
        "hw": args.hw if args.net != "fc" else None,
        "dtype": args.dtype,
        "get": args.get,
        "repeats": args.repeats,
        "seconds_warmup": warm,
        "finite": bool(np.isfinite(np.asarray(k)).all()),
        "jax": jax.__version__,
        "nt": md.version("neural-tangents"),
        "backend": jax.default_backend(),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }
    print(json.dumps(out))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
