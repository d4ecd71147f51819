"""One script for a GPU machine: NumPy/CuPy parity and throughput per GPU.

    python benchmarks/gpu_check.py          # FC part here, then the conv part
    OUT=dir python benchmarks/gpu_check.py  # also writes dir/gpu_check_fc.json

1. FC parity: FC ReLU/Erf/Gelu nets, ``kernel_fn`` on CuPy arrays (the
   array-API path on the GPU) against the NumPy fast path, float64 (rtol 1e-10)
   and float32 (rtol 2e-4 of the largest entry).
2. FC throughput: FC ReLU depth 3 NTK Gram, n = 16384, d = 784, float32 and
   float64, entries/s per GPU (all n² entries, row blocks sized from GPU memory).
3. Gram pipeline on ``cluster: {kind: local, gpus: all}`` (one worker per
   GPU, ``backend: cupy``): FC ReLU depth 3, NNGP + NTK, n = 16384, d = 784,
   float32, block 4096, into a Zarr store; end-to-end entries/s and parity of
   stored rows with the NumPy ``kernel_fn``.
4. Conv: runs ``benchmarks/gpu_check_conv.py`` (CNTK parity and CNTK-GAP
   depth 3 throughput on 32×32×3).

Without CuPy or a GPU it says so and exits 2 (nothing is measured).
Exit status 1 if a parity check fails.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ntkscale import stax  # noqa: E402


def fc_net(act, depth: int = 3):
    s2 = math.sqrt(2.0)
    layers = []
    for _ in range(depth):
        layers += [stax.Dense(512, W_std=s2, b_std=0.1), act]
    return stax.serial(*layers, stax.Dense(1, W_std=s2, b_std=0.1))[2]


def main() -> int:
    try:
        import cupy as cp
        n_gpus = cp.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001
        print(f"gpu_check: no usable CuPy/GPU here ({type(exc).__name__}: {exc}); nothing measured")
        return 2
    results, ok = {"gpus": n_gpus, "device": cp.cuda.runtime.getDeviceProperties(0)["name"].decode()}, True
    rng = np.random.default_rng(0)
    x1, x2 = rng.standard_normal((300, 50)), rng.standard_normal((200, 50))
    for name, act in {"relu": stax.Relu(), "erf": stax.Erf(), "gelu": stax.Gelu()}.items():
        kernel_fn = fc_net(act)
        for dtype, rtol in (("float64", 1e-10), ("float32", 2e-4)):
            ref = kernel_fn(x1.astype(dtype), x2.astype(dtype), "ntk")
            out = cp.asnumpy(kernel_fn(cp.asarray(x1, dtype=dtype), cp.asarray(x2, dtype=dtype), "ntk"))
            rel = float(np.abs(out - ref).max() / np.abs(ref).max())
            passed = out.dtype == np.dtype(dtype) and rel < rtol
            ok &= passed
            results[f"parity_fc_{name}_{dtype}"] = {"max_rel": rel, "ok": passed}
            print(json.dumps({"check": f"fc {name} {dtype}", "max_rel": rel, "ok": passed}), flush=True)
    kernel_fn = fc_net(stax.Relu())
    n, d = 16384, 784
    for dtype in ("float32", "float64"):
        x = cp.asarray(rng.standard_normal((n, d)), dtype=dtype)
        kernel_fn(x[:256], None, "ntk")
        cp.cuda.Device().synchronize()
        free = cp.cuda.Device().mem_info[0]
        t0 = time.perf_counter()
        out = kernel_fn(x, None, "ntk", memory_budget=int(free * 0.5))
        cp.cuda.Device().synchronize()
        sec = time.perf_counter() - t0
        row = {"bench": f"fc3 ntk n={n} d={d} {dtype}", "seconds": sec, "entries_per_s_per_gpu": n * n / sec,
               "finite": bool(cp.isfinite(out).all())}
        results[f"throughput_fc_{dtype}"] = row
        print(json.dumps(row), flush=True)
        del out, x
    row = pipeline_check(n_gpus)
    ok &= row["ok"]
    results["pipeline_fc"] = row
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_check_fc.json").write_text(json.dumps(results, indent=2))
    conv = subprocess.run([sys.executable, str(Path(__file__).with_name("gpu_check_conv.py"))])
    return 0 if ok and conv.returncode == 0 else 1


def pipeline_check(n_gpus: int, n: int = 16384, d: int = 784) -> dict:
    """The Gram engine on one worker per GPU: end-to-end rate and stored-row parity."""
    import tempfile

    from ntkscale.config.run import RunConfig
    from ntkscale.stages.gram import GramPipeline
    from ntkscale.store.gram_store import GramStore

    layers = [["Dense", {"W_std": 2 ** 0.5, "b_std": 0.1}], ["Relu", {}]] * 3 + [
        ["Dense", {"W_std": 2 ** 0.5, "b_std": 0.1}]]
    x = np.random.default_rng(1).standard_normal((n, d)).astype("float32")
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp, "x.npy"), x)
        cfg = RunConfig.from_mapping({
            "data": {"train": {"x": "x.npy"}}, "kernel": {"layers": layers, "get": ["nngp", "ntk"]},
            "store": "run.zarr", "block_size": 4096, "dtype": "float32", "backend": "cupy",
            "cluster": {"kind": "local", "gpus": "all", "dashboard_address": ":0"}}, base_dir=Path(tmp))
        t0 = time.perf_counter()
        report = GramPipeline(cfg, progress=False).run()
        sec = time.perf_counter() - t0
        stored = GramStore.open(Path(tmp, "run.zarr")).train_array("ntk")
        rows = np.asarray(stored[:256])
        ref = stax.from_spec(layers)[2](x[:256].astype("float64"), x.astype("float64"), "ntk")
    rel = float(np.abs(rows - ref).max() / np.abs(ref).max())
    row = {"bench": f"pipeline fc3 nngp+ntk n={n} d={d} float32 block 4096, {n_gpus} GPU worker(s)",
           "seconds": sec, "entries_per_s": n * n / sec, "blocks": report.blocks_computed,
           "compute_seconds": report.compute_seconds, "max_rel_vs_numpy_f64": rel, "ok": rel < 2e-4}
    print(json.dumps(row), flush=True)
    return row


if __name__ == "__main__":
    sys.exit(main())
