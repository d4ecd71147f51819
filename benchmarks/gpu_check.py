"""One GPU check for one short window on a GPU machine (≤ 8 minutes, internal budgets).

    python benchmarks/gpu_check.py              # on a GPU machine: everything below
    python benchmarks/gpu_check.py --simulate   # CPU only: the same flow under numba's CUDA
                                                # simulator at tiny sizes (proves the script)

1. Parity: ``pytest -m gpu`` (every GPU test: the CUDA slab and flat kernels on CuPy arrays
   against the CPU paths, ``tests/stax/test_cudasim_slab.py``, ``test_cudasim_flat.py`` and
   ``test_conv_gpu.py``);
   with ``--simulate`` the ``cudasim`` cases of the same test module, in this process.
2. Kernel throughput on one GPU: CNTK-GAP depth 3 and 21 on 32×32×3 (float32 and
   float64), Myrtle-5 and Myrtle-10 (float32), FC depth 3 on 784 features (the
   ``cuda_flat`` kernel, float32 and float64); each net's
   calls grow (n1 = n2 doubling) until its time budget is spent. Every call is a
   cost-model measurement point.
3. The Gram pipeline on every GPU (``cluster: {kind: local, gpus: all}``, one worker per
   GPU, ``backend: cupy``): end-to-end entries/s and stored-row parity with NumPy.
4. A GPU calibration of the cost model fitted from the points of 2
   (``ntkscale.costs.model.fit(kind="gpu")``), written next to the results, and the
   projection of Myrtle-10 on 60k CIFAR-10 from it (``ntkscale project --device gpu``).

Writes ``benchmarks/results/gpu.json`` (``--out`` to change; ``--simulate`` writes
``gpu_simulated.json`` and no calibration worth using) and
``benchmarks/results/costmodel_gpu.json``. Without CuPy or a GPU (and without
``--simulate``) it prints ``no GPU: <why>`` and exits 2 before measuring anything.
Exit 1 when a parity check fails.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
#: Seconds per part (the whole script stays under 8 minutes on one GPU).
BUDGET = {"parity": 150.0, "throughput": 210.0, "pipeline": 90.0}


def gpu_info() -> Dict[str, Any]:
    """Name, count and memory of the GPUs; raises RuntimeError("no GPU: ...") without them."""
    try:
        import cupy
    except ImportError:
        raise RuntimeError("no GPU: CuPy is not installed (pip install 'ntkscale[gpu]')") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001
        raise RuntimeError(f"no GPU: CuPy sees no CUDA device ({type(exc).__name__}: {exc})") from None
    if count == 0:
        raise RuntimeError("no GPU: CuPy sees no CUDA device")
    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    free, total = cupy.cuda.Device(0).mem_info
    return {"gpu": name, "gpus": count, "memory_total": int(total), "memory_free": int(free),
            "cupy": cupy.__version__}


def throughput_nets(simulate: bool) -> List[Tuple[str, Any, Tuple[int, ...], str]]:
    """(label, network, per-example shape, dtype) measured in part 2."""
    sys.path.insert(0, str(ROOT))
    from ntkscale import stax

    if simulate:
        c = lambda: stax.Conv(4, (3, 3), padding="SAME", W_std=1.4, b_std=0.1)  # noqa: E731
        return [("cntk-gap3 4x4x3", stax.presets.cntk(3), (4, 4, 3), "float32"),
                ("myrtle-style 4x4x3", stax.serial(c(), stax.Relu(), stax.AvgPool((2, 2), (2, 2)),
                                                   c(), stax.Relu(), stax.GlobalAvgPool(),
                                                   stax.Dense(1)), (4, 4, 3), "float64"),
                ("fc3 16", stax.presets.fc(3), (16,), "float32")]
    img = (32, 32, 3)
    return [("cntk-gap3", stax.presets.cntk(3), img, "float32"),
            ("cntk-gap3", stax.presets.cntk(3), img, "float64"),
            ("cntk-gap21", stax.presets.cntk(21), img, "float32"),
            ("cntk-gap21", stax.presets.cntk(21), img, "float64"),
            ("myrtle5", stax.presets.myrtle(5), img, "float32"),
            ("myrtle10", stax.presets.myrtle(10), img, "float32"),
            ("fc3", stax.presets.fc(3), (784,), "float32"),
            ("fc3", stax.presets.fc(3), (784,), "float64")]


def _caller(kernel_fn: Any, simulate: bool) -> Tuple[Callable[[Any, Any], Any], Callable[[], None],
                                                      Callable[[Any], Any]]:
    """(call(x1, x2), synchronize(), to_device(x)) for the GPU or the simulator."""
    if not simulate:
        import cupy

        return (lambda a, b: kernel_fn(a, b, "ntk"), cupy.cuda.Device().synchronize, cupy.asarray)
    from ntkscale.stax.engine import cuda_flat, cuda_slab, layers_of, select_path

    layers = layers_of(kernel_fn)

    def call(a: Any, b: Any) -> Any:
        path = select_path(layers, a.shape[1:], "gpu", dtype=str(a.dtype))
        if path.name == "cuda_flat":
            return cuda_flat.evaluate(layers, a, b, want_ntk=True)["ntk"]
        if path.name != "cuda_slab":   # the reference maps (CuPy on a GPU)
            return kernel_fn(a, b, "ntk")
        return cuda_slab.evaluate(layers, path.plan, a, b, want_ntk=True, memory_budget=1 << 26)["ntk"]

    return call, (lambda: None), (lambda x: x)


def measure(label: str, net: Any, shape: Tuple[int, ...], dtype: str, budget_s: float,
            simulate: bool, n_start: int) -> List[Dict[str, Any]]:
    """Timed ``kernel_fn(x1, x2, "ntk")`` calls, n1 = n2 doubling from ``n_start``, until
    the next call would not fit in ``budget_s`` (a first small call compiles)."""
    import numpy as np

    kernel_fn = net[2]
    call, sync, dev = _caller(kernel_fn, simulate)
    rng = np.random.default_rng(0)
    t_end = time.perf_counter() + budget_s
    x = dev(rng.standard_normal((1,) + shape).astype(dtype))
    call(x, x)                        # compile / warm up
    sync()
    rows, n, last = [], n_start, 0.0
    while not rows or time.perf_counter() + 4.5 * last < t_end:
        x1 = dev(rng.standard_normal((n,) + shape).astype(dtype))
        x2 = dev(rng.standard_normal((n,) + shape).astype(dtype))
        sync()
        t0 = time.perf_counter()
        out = call(x1, x2)
        sync()
        last = time.perf_counter() - t0
        finite = bool(np.isfinite(np.asarray(out.get() if hasattr(out, "get") else out)).all())
        rows.append({"label": label, "spec": json.loads(kernel_fn.spec_json), "input_shape": list(shape),
                     "dtype": dtype, "n1": n, "n2": n, "cpu_s": last, "seconds": last,
                     "ms_per_entry": 1e3 * last / (n * n), "entries_per_s": n * n / last, "finite": finite})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "spec"}), flush=True)
        n *= 2
    return rows


def parity(simulate: bool, budget_s: float) -> Dict[str, Any]:
    """Part 1: every GPU test (``pytest -m gpu``), or the cudasim cases in this process."""
    if simulate:
        sys.path.insert(0, str(ROOT))
        from tests.stax import test_cudasim_flat as flat
        from tests.stax.test_cudasim_slab import TOLERANCE, all_errors

        sys.setswitchinterval(1e-6)
        rows = all_errors("sim")
        rows.update({f"flat {k}": v for k, v in flat.all_errors("sim").items()})
        ok = all(r["error"] <= TOLERANCE[k.rsplit("-", 1)[1]] for k, r in rows.items())
        return {"ok": ok, "cases": rows}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "tests"]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=budget_s,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
    except subprocess.TimeoutExpired:
        return {"ok": False, "summary": f"pytest -m gpu ran past its {budget_s:.0f} s budget"}
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-500:]
    return {"ok": proc.returncode == 0, "summary": tail, "exit": proc.returncode}


def pipeline(simulate: bool, n_gpus: int, budget_s: float) -> Dict[str, Any]:
    """Part 3: the Gram pipeline, one worker per GPU (``--simulate``: one CPU worker)."""
    import tempfile

    import numpy as np

    sys.path.insert(0, str(ROOT))
    from ntkscale import stax
    from ntkscale.config.run import RunConfig
    from ntkscale.stages.gram import GramPipeline
    from ntkscale.store.gram_store import GramStore

    n, d, block = (64, 8, 32) if simulate else (8192, 784, 4096)
    layers = [["Dense", {"W_std": 2 ** 0.5, "b_std": 0.1}], ["Relu", {}]] * 3 + [
        ["Dense", {"W_std": 2 ** 0.5, "b_std": 0.1}]]
    cluster = ({"kind": "local", "n_workers": 1, "dashboard_address": ":0"} if simulate else
               {"kind": "local", "gpus": "all", "dashboard_address": ":0"})
    x = np.random.default_rng(1).standard_normal((n, d)).astype("float32")
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp, "x.npy"), x)
        cfg = RunConfig.from_mapping({
            "data": {"train": {"x": "x.npy"}}, "kernel": {"layers": layers, "get": ["nngp", "ntk"]},
            "store": "run.zarr", "block_size": block, "dtype": "float32",
            "backend": "numpy" if simulate else "cupy", "cluster": cluster}, base_dir=Path(tmp))
        t0 = time.perf_counter()
        report = GramPipeline(cfg, progress=False).run()
        sec = time.perf_counter() - t0
        rows = np.asarray(GramStore.open(Path(tmp, "run.zarr")).train_array("ntk")[:64])
        ref = stax.from_spec(layers)[2](x[:64].astype("float64"), x.astype("float64"), "ntk")
    rel = float(np.abs(rows - ref).max() / np.abs(ref).max())
    row = {"bench": f"pipeline fc3 nngp+ntk n={n} d={d} float32 block {block}, "
                    f"{'1 CPU worker (simulate)' if simulate else f'{n_gpus} GPU worker(s)'}",
           "seconds": sec, "entries_per_s": n * n / sec, "blocks": report.blocks_computed,
           "max_rel_vs_numpy_f64": rel, "ok": rel < 2e-4, "within_budget": sec <= budget_s}
    print(json.dumps(row), flush=True)
    return row


def calibrate(points: List[Dict[str, Any]], machine: Dict[str, Any], out: Path) -> Dict[str, Any]:
    """Part 4: fit the GPU calibration, save it, and project Myrtle-10 on 60k CIFAR-10."""
    from ntkscale.costs import model as costmodel
    from ntkscale.costs.projection import project

    cal = costmodel.fit([p for p in points if p["finite"]], kind="gpu",
                        machine={"cpu": machine.get("gpu", "simulated"), **machine},
                        label=f"GPU calibration ({machine.get('gpu', 'simulated')}): seconds on one GPU")
    costmodel.save(cal, out)
    proj = {}
    for net in ("myrtle10", "cntk-gap21"):
        try:
            p = project(60000, (32, 32, 3), net, "gpu", 1, "float32", str(out))
            proj[net] = {"device_hours_60k": p["device_hours"], "s_per_entry": p["seconds_per_entry"]}
        except Exception as exc:  # noqa: BLE001 - a path without points: say so
            proj[net] = {"error": f"{type(exc).__name__}: {exc}"}
    return {"calibration": str(out), "fit": cal["fit"], "projection_60k_float32": proj}


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--simulate", action="store_true",
                    help="no GPU: run the flow under numba's CUDA simulator at tiny sizes")
    ap.add_argument("--out", default=None, help="results JSON (default benchmarks/results/gpu.json)")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: parity,throughput,pipeline")
    args = ap.parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if args.simulate:
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"   # before anything imports numba.cuda
        info: Dict[str, Any] = {"gpu": "numba CUDA simulator (CPU)", "gpus": 1, "simulated": True}
    else:
        try:
            info = gpu_info()
        except RuntimeError as exc:
            print(f"gpu_check: {exc}; nothing measured (run with --simulate to check the flow on a CPU)")
            return 2
    t_start = time.perf_counter()
    out = Path(args.out) if args.out else RESULTS / ("gpu_simulated.json" if args.simulate else "gpu.json")
    results: Dict[str, Any] = {"machine": info, "budgets_s": BUDGET}
    print(json.dumps(info), flush=True)
    ok = True
    if "parity" not in skip:
        results["parity"] = parity(args.simulate, BUDGET["parity"])
        ok &= results["parity"]["ok"]
        print(json.dumps({"parity_ok": results["parity"]["ok"]}), flush=True)
    if "throughput" not in skip:
        nets = throughput_nets(args.simulate)
        share = BUDGET["throughput"] / len(nets) / (20.0 if args.simulate else 1.0)
        points: List[Dict[str, Any]] = []
        for label, net, shape, dtype in nets:
            n0 = 1 if args.simulate else (256 if len(shape) == 1 else 16)
            points += measure(label, net, shape, dtype, share, args.simulate, n0)
        results["throughput"] = [{k: v for k, v in p.items() if k != "spec"} for p in points]
        cal_out = out.with_name("costmodel_gpu_simulated.json" if args.simulate else "costmodel_gpu.json")
        results["cost_model"] = calibrate(points, info, cal_out)
        print(json.dumps(results["cost_model"]["projection_60k_float32"]), flush=True)
    if "pipeline" not in skip:
        results["pipeline"] = pipeline(args.simulate, int(info["gpus"]), BUDGET["pipeline"])
        ok &= results["pipeline"]["ok"]
    results["seconds"] = time.perf_counter() - t_start
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(f"gpu_check: {'ok' if ok else 'PARITY FAILED'} in {results['seconds']:.0f} s; wrote {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
