"""GPU check of the CuPy conv path (one short script for a GPU machine).

1. Parity: CUDA slab kernel (CuPy inputs) vs the NumPy path on a few conv
   nets (GAP/Flatten, strides, CIRCULAR, Erf, "standard", Dense on images),
   float64 (rtol 1e-11) and float32 (rtol 2e-4); a pooling net (Myrtle) that
   runs the array-API reference path under CuPy.
2. Throughput: CNTK-GAP depth 3 (stax.presets.cntk(3)) on 32×32×3 images,
   float32 and float64, entries/s of the symmetric Gram; plus the array-API
   reference path under CuPy on a few images for comparison.

    python benchmarks/gpu_check_conv.py            # prints JSON lines
    OUT=dir python benchmarks/gpu_check_conv.py    # also writes dir/gpu_check_conv.json

Exit status 1 if any parity check fails.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ntkscale import stax  # noqa: E402


def nets():
    c = lambda *a, **k: stax.Conv(8, *a, W_std=1.4, b_std=0.1, **k)  # noqa: E731
    d = lambda **k: stax.Dense(1, W_std=1.4, b_std=0.1, **k)  # noqa: E731
    return {
        "cntk_gap": stax.presets.cntk(3),
        "cntk_flatten": stax.presets.cntk(2, "flatten"),
        "valid_strides_erf": stax.serial(c((3, 2), strides=(2, 1), padding="SAME"), stax.Erf(),
                                         c((2, 2), padding="VALID"), stax.Relu(),
                                         stax.GlobalAvgPool(), d()),
        "circular_leaky": stax.serial(c((3, 3), padding="CIRCULAR"), stax.LeakyRelu(0.1),
                                      c((3, 3), padding="CIRCULAR"), stax.Abs(),
                                      stax.GlobalAvgPool(), d()),
        "standard_dense_tail": stax.serial(
            stax.Conv(8, (3, 3), padding="SAME", W_std=1.3, b_std=None, parameterization="standard"),
            stax.Relu(), stax.Dense(6, W_std=1.2, parameterization="standard"), stax.Relu(),
            stax.GlobalAvgPool(), stax.Dense(5, W_std=1.3, parameterization="standard"),
            stax.Erf(), stax.Dense(1, W_std=1.3, parameterization="standard")),
        "myrtle5_reference_path": stax.presets.myrtle(5, final_pools=1),
    }


def main() -> int:
    import cupy

    dev = cupy.cuda.Device()
    props = cupy.cuda.runtime.getDeviceProperties(dev.id)
    info = {"gpu": props["name"].decode() if isinstance(props["name"], bytes) else props["name"],
            "cupy": cupy.__version__}
    print(json.dumps(info))
    records = [info]
    ok = True
    rng = np.random.default_rng(0)
    for name, layer in nets().items():
        kf = layer[2]
        x1 = rng.uniform(-1, 1, (6, 8, 8, 3))
        x2 = rng.uniform(-1, 1, (5, 8, 8, 3))
        for dtype, rtol in (("float64", 1e-11), ("float32", 2e-4)):
            worst = 0.0
            for a, b in ((x1, None), (x1, x2)):
                ref = kf(a, b, ("nngp", "ntk"))
                out = kf(cupy.asarray(a.astype(dtype)),
                         None if b is None else cupy.asarray(b.astype(dtype)), ("nngp", "ntk"))
                for o, r in zip(out, ref):
                    err = float(np.max(np.abs(cupy.asnumpy(o) - r)) / np.abs(r).max())
                    worst = max(worst, err)
            rec = {"check": "parity", "net": name, "dtype": dtype, "max_rel_err": worst,
                   "ok": worst <= rtol}
            ok &= rec["ok"]
            records.append(rec)
            print(json.dumps(rec))
            sys.stdout.flush()

    kf = stax.presets.cntk(3)[2]
    for dtype in ("float32", "float64"):
        for n in (64, 256):
            x = cupy.asarray(np.random.default_rng(0).uniform(size=(n, 32, 32, 3)).astype(dtype))
            kf(x[:4], None, "ntk")
            cupy.cuda.Device().synchronize()
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                kf(x, None, "ntk")
                cupy.cuda.Device().synchronize()
                best = min(best, time.perf_counter() - t0)
            rec = {"check": "throughput", "net": "cntk_gap_depth3", "hw": 32, "channels": 3,
                   "n": n, "dtype": dtype, "seconds": best, "entries_per_s": n * n / best}
            records.append(rec)
            print(json.dumps(rec))
            sys.stdout.flush()
    # the array-API reference path under CuPy (materialises H²W² per pair)
    x = cupy.asarray(np.random.default_rng(0).uniform(size=(6, 32, 32, 3)))
    kf(x[:2], None, "ntk", fast=False)
    cupy.cuda.Device().synchronize()
    t0 = time.perf_counter()
    kf(x, None, "ntk", fast=False, memory_budget=8 << 30)
    cupy.cuda.Device().synchronize()
    secs = time.perf_counter() - t0
    rec = {"check": "throughput", "net": "cntk_gap_depth3", "path": "array-api reference on CuPy",
           "hw": 32, "n": 6, "dtype": "float64", "seconds": secs, "entries_per_s": 36 / secs}
    records.append(rec)
    print(json.dumps(rec))
    out = os.environ.get("OUT")
    if out:
        Path(out, "gpu_check_conv.json").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
