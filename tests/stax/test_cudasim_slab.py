"""The CUDA slab kernel (``cuda_slab``/``cuda_kernels``) against the CPU slab path.

One body, :func:`case_error`, serves two runs of the same cases:

* ``cudasim`` (default suite, no GPU): the kernel's own source executes in
  numba's CUDA simulator on NumPy arrays, shared memory, barriers and atomics
  included. The simulator must be chosen before ``numba.cuda`` is first
  imported (``NUMBA_ENABLE_CUDASIM=1``) and stays for the life of the process,
  so the cases run in ONE child process (:func:`simulated_errors`) and the
  simulator never leaks into the other tests of the session. When pytest itself
  runs under the simulator (``NUMBA_ENABLE_CUDASIM=1 pytest -m cudasim``) they
  run in-process.
* ``gpu`` (``pytest -m gpu`` on a GPU machine): CuPy arrays through
  ``kernel_fn``, which picks the ``cuda_slab`` path itself.

SumPool/GlobalSumPool cases compare with the reference path (the CPU slab has no summing
pools). Sizes are tiny (3×3 and 4×4 images, 2 + 1 images; the WideResNet preset at 8×8×3):
the simulator runs each CUDA thread as a Python thread, ~10 ms per thread block, so
the branch cases that test slots with a Flatten readout (δ = 0 only) and the GAP ones
(every offset) are split to keep the whole set near a minute.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Tuple

import numpy as np
import pytest

from ntkscale import stax
from ntkscale.stax.engine import cuda_slab, layers_of, select_path, slab_program

ROOT = Path(__file__).resolve().parents[2]
#: Parity bounds (max |GPU − CPU| / max |CPU|), per dtype.
TOLERANCE = {"float64": 1e-12, "float32": 1e-5}


def _conv(*args: Any, **kw: Any) -> Any:
    kw.setdefault("W_std", 1.4)
    kw.setdefault("b_std", 0.1)
    return stax.Conv(3, *args, **kw)


def _block(main: Any, shortcut: Any) -> Any:
    return stax.serial(stax.FanOut(2), stax.parallel(main, shortcut), stax.FanInSum())


#: Cases whose branch slots are forced into the global scratch (not shared memory).
GLOBAL_SLOTS = frozenset({"resnet_block_global_slots"})


def _nets() -> Dict[str, Tuple[Callable[[], Any], Tuple[int, int, int], Tuple[str, ...]]]:
    """name -> (network builder, per-example shape, dtypes)."""
    return {
        "cntk_gap": (lambda: stax.serial(_conv((3, 3), padding="SAME"), stax.Relu(),
                                         _conv((3, 3), padding="SAME"), stax.Relu(),
                                         stax.GlobalAvgPool(), stax.Dense(1)),
                     (3, 3, 2), ("float64", "float32")),
        "flatten_readout_erf_valid": (
            lambda: stax.serial(_conv((3, 3), padding="SAME"), stax.Erf(0.7, 1.3, 0.2),
                                _conv((2, 2), padding="VALID"), stax.Relu(), stax.Flatten(),
                                stax.Dense(3, W_std=1.3, b_std=0.2), stax.Relu(), stax.Dense(1)),
            (4, 4, 2), ("float64",)),
        "strides_dense_standard": (
            lambda: stax.serial(
                stax.Conv(3, (3, 2), strides=(2, 1), padding="SAME", W_std=1.3, b_std=0.2,
                          parameterization="standard"),
                stax.LeakyRelu(0.2), stax.Dense(4, W_std=1.2, b_std=0.3, parameterization="standard"),
                stax.Abs(), stax.GlobalAvgPool(), stax.Dense(1, parameterization="standard")),
            (4, 3, 2), ("float64",)),
        "circular_abrelu": (lambda: stax.serial(_conv((3, 3), padding="CIRCULAR"), stax.ABRelu(-0.3, 1.2),
                                                _conv((3, 3), padding="CIRCULAR"), stax.Identity(),
                                                stax.GlobalAvgPool(), stax.Dense(1)),
                            (3, 3, 2), ("float64", "float32")),
        "myrtle_style_avgpool_gap": (
            lambda: stax.serial(_conv((3, 3), padding="SAME"), stax.Relu(),
                                stax.AvgPool((2, 2), (2, 2)), _conv((3, 3), padding="SAME"),
                                stax.Relu(), stax.GlobalAvgPool(), stax.Dense(1)),
            (4, 4, 2), ("float64",)),
        "avgpool_same_edges_flatten": (
            lambda: stax.serial(_conv((2, 2), padding="SAME", b_std=None), stax.Erf(),
                                stax.AvgPool((2, 2), (1, 1), padding="SAME"), stax.Relu(),
                                stax.Flatten(), stax.Dense(1)),
            (3, 3, 2), ("float64",)),
        # residual blocks (FanOut/parallel/FanIn* as slot steps), LayerNorm, Dropout
        "resnet_block": (
            lambda: stax.serial(_conv((3, 3), padding="SAME"),
                                _block(stax.serial(_conv((3, 3), padding="SAME"), stax.Relu(),
                                                   _conv((3, 3), padding="SAME")), stax.Identity()),
                                stax.Relu(), stax.GlobalAvgPool(), stax.Dense(1)),
            (3, 3, 2), ("float64", "float32")),
        "resnet_block_global_slots": (
            lambda: stax.serial(_conv((3, 3), padding="SAME"),
                                _block(stax.serial(stax.Relu(), _conv((3, 3), padding="SAME")),
                                       stax.Identity()),
                                stax.Erf(), stax.Flatten(), stax.Dense(1)),
            (3, 3, 2), ("float64",)),
        "strided_projection_shortcut": (
            lambda: stax.serial(_conv((3, 3), padding="SAME"),
                                _block(stax.serial(stax.Relu(), _conv((3, 3), (2, 2), padding="SAME"),
                                                   stax.Relu(), _conv((3, 3), padding="SAME")),
                                       _conv((1, 1), (2, 2), padding="SAME")),
                                stax.Relu(), stax.Flatten(), stax.Dense(1)),
            (4, 4, 2), ("float64", "float32")),
        "fanin_prod_concat": (
            lambda: stax.serial(_conv((3, 3), padding="SAME"), stax.FanOut(2),
                                stax.parallel(_conv((3, 3), padding="SAME"), _conv((1, 1))),
                                stax.FanInProd(), stax.Relu(), stax.FanOut(2),
                                stax.parallel(stax.Conv(4, (3, 3), padding="SAME"),
                                              stax.Conv(2, (1, 1))),
                                stax.FanInConcat(), stax.Relu(), stax.Flatten(), stax.Dense(1)),
            (3, 3, 2), ("float64",)),
        "layernorm_channel_spatial": (
            lambda: stax.serial(_conv((3, 3), padding="SAME"), stax.LayerNorm(), stax.Relu(),
                                _conv((2, 2), padding="SAME"), stax.LayerNorm(axis=(1, 2, 3)),
                                stax.Erf(), _conv((3, 3), padding="SAME"),
                                stax.LayerNorm(axis=(2, 3)), stax.GlobalAvgPool(), stax.Dense(1)),
            (3, 4, 2), ("float64", "float32")),
        "dropout_test_train": (
            lambda: stax.serial(_conv((3, 3), padding="SAME"), stax.Relu(),
                                stax.Dropout(0.6, "test"), _conv((3, 3), padding="SAME"),
                                stax.LayerNorm(axis=(1, 3)), stax.Dropout(0.7), stax.Relu(),
                                stax.Flatten(), stax.Dense(3), stax.Dropout(0.5), stax.Relu(),
                                stax.Dense(1)),
            (3, 3, 2), ("float64", "float32")),
        # summing pools: the AvgPool program undivided (the CPU slab has none: the reference
        # path is the NumPy side); Erf after the pool is not homogeneous, so scales show
        "sumpool_globalsumpool": (
            lambda: stax.serial(_conv((3, 3), padding="SAME"), stax.Relu(),
                                stax.SumPool((2, 2), (1, 1)), _conv((2, 2), padding="SAME"),
                                stax.Erf(), stax.GlobalSumPool(), stax.Dense(1)),
            (3, 3, 2), ("float64",)),
        "sumpool_same_flatten": (
            lambda: stax.serial(_conv((2, 2), padding="SAME"), stax.Relu(),
                                stax.SumPool((2, 2), (1, 1), padding="SAME"), stax.Erf(),
                                stax.Flatten(), stax.Dense(1)),
            (3, 3, 2), ("float64", "float32")),
        "wide_resnet_8x8": (lambda: stax.presets.wide_resnet(1, 1, 10, pool=2), (8, 8, 3),
                            ("float64",)),
    }


NETS = _nets()
CASES = [(name, dt) for name, (_, _, dts) in NETS.items() for dt in dts]
IDS = [f"{n}-{d}" for n, d in CASES]


def case_error(name: str, dtype: str, device: str) -> float:
    """Largest relative deviation of the CUDA kernel from the CPU slab path on one net:
    nngp and ntk of k(x1, x1) (symmetric), k(x1, x2) and the diagonal.

    ``device="sim"``: NumPy arrays straight into ``cuda_slab`` (this process must run
    numba's CUDA simulator); ``"gpu"``: CuPy arrays through ``kernel_fn``."""
    build, shape, _ = NETS[name]
    if name in GLOBAL_SLOTS:
        saved = cuda_slab.SHARED_SLOT_BYTES
        cuda_slab.SHARED_SLOT_BYTES = 0
        try:
            return _case_error(name, dtype, device, build, shape)
        finally:
            cuda_slab.SHARED_SLOT_BYTES = saved
    return _case_error(name, dtype, device, build, shape)


def _case_error(name: str, dtype: str, device: str, build: Any, shape: Any) -> float:
    kf = build()[2]
    layers = layers_of(kf)
    path = select_path(layers, shape, "gpu", dtype=dtype)
    assert path.name == "cuda_slab", path.reason
    rng = np.random.default_rng(7)
    x1 = rng.uniform(-1, 1, (2,) + shape).astype(dtype)
    x2 = rng.uniform(-1, 1, (1,) + shape).astype(dtype)
    cpu = select_path(layers, shape, "cpu", dtype=dtype).name
    assert cpu.startswith("cpu_slab") or (name.startswith("sumpool") and cpu == "reference")
    get = ("nngp", "ntk")
    refs = [kf(x1, None, get), kf(x1, x2, get), (kf.diag(x1, "nngp"), kf.diag(x1, "ntk"))]
    if device == "gpu":
        import cupy  # noqa: PLC0415 (GPU runs only)

        c1, c2 = cupy.asarray(x1), cupy.asarray(x2)
        outs = [kf(c1, None, get), kf(c1, c2, get), (kf.diag(c1, "nngp"), kf.diag(c1, "ntk"))]
        outs = [tuple(cupy.asnumpy(o) for o in out) for out in outs]
    else:
        budget = 1 << 26
        run = [cuda_slab.evaluate(layers, path.plan, x1, None, want_ntk=True, memory_budget=budget),
               cuda_slab.evaluate(layers, path.plan, x1, x2, want_ntk=True, memory_budget=budget),
               cuda_slab.evaluate_diagonal(layers, path.plan, x1, want_ntk=True, memory_budget=budget)]
        outs = [(r["nngp"], r["ntk"]) for r in run]
    worst = 0.0
    for out, ref in zip(outs, refs):
        for o, r in zip(out, ref):
            assert o.dtype == np.dtype(dtype) and o.shape == r.shape
            worst = max(worst, float(np.abs(o - r).max() / np.abs(r).max()))
    return worst


def streamed_difference(chunk: int = 2) -> float:
    """Largest |difference| between ``cuda_slab.evaluate`` with pair chunks of ``chunk``
    pairs (several chunks: pinned buffers, two streams, copies overlapping the kernels of
    the previous chunk) and with one chunk, symmetric and cross (must be 0: same kernels,
    same pairs). Runs in the simulator (this process)."""
    layers = layers_of(NETS["cntk_gap"][0]()[2])
    path = select_path(layers, (3, 3, 2), "gpu")
    rng = np.random.default_rng(3)
    x1, x2 = rng.uniform(-1, 1, (3, 3, 3, 2)), rng.uniform(-1, 1, (2, 3, 3, 2))
    worst = 0.0
    for b in (None, x2):
        outs = []
        for size in (None, chunk):
            saved = cuda_slab.CHUNK
            cuda_slab.CHUNK = size
            try:
                outs.append(cuda_slab.evaluate(layers, path.plan, x1, b, want_ntk=True,
                                               memory_budget=1 << 26))
            finally:
                cuda_slab.CHUNK = saved
        for key in ("nngp", "ntk"):
            worst = max(worst, float(np.abs(outs[0][key] - outs[1][key]).max()))
    return worst


def all_errors(device: str) -> Dict[str, Dict[str, float]]:
    """Every case: its error and seconds (``device`` as :func:`case_error`); in the
    simulator also ``streamed-float64``: :func:`streamed_difference`."""
    out = {}
    for (name, dtype), key in zip(CASES, IDS):
        t0 = time.perf_counter()
        err = case_error(name, dtype, device)
        out[key] = {"error": err, "seconds": time.perf_counter() - t0}
    if device == "sim":
        t0 = time.perf_counter()
        out["streamed-float64"] = {"error": streamed_difference(),
                                   "seconds": time.perf_counter() - t0}
    return out


def _in_simulator() -> bool:
    mod = sys.modules.get("numba.cuda")
    return mod is not None and bool(getattr(mod, "simulator_enabled", False))


def simulated_errors(timeout: float = 600.0, module: str = "tests.stax.test_cudasim_slab"
                     ) -> Dict[str, Dict[str, float]]:
    """``module``'s ``all_errors`` under numba's CUDA simulator: in this process when it
    already runs the simulator, else in one child process with ``NUMBA_ENABLE_CUDASIM=1``."""
    if _in_simulator():
        sys.setswitchinterval(1e-6)
        return importlib.import_module(module).all_errors("sim")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=str(ROOT))
    # The simulator runs each CUDA thread as a Python thread and polls them: a short GIL
    # switch interval makes its barriers ~10x faster.
    code = ("import json, sys; sys.setswitchinterval(1e-6); "
            f"from {module} import all_errors; "
            "print('RESULT ' + json.dumps(all_errors('sim')))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise AssertionError(f"the simulator run failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def _has_numba_cuda() -> bool:
    try:
        return importlib.util.find_spec("numba.cuda") is not None
    except (ImportError, ValueError):
        return False


@pytest.fixture(scope="module")
def sim_results() -> Dict[str, Dict[str, float]]:
    if not _has_numba_cuda():
        pytest.skip("numba-cuda is not installed (pip install 'ntkscale[gpu]' or numba-cuda)")
    return simulated_errors()


@pytest.mark.cudasim
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_cuda_kernel_in_simulator_matches_cpu(case, sim_results):
    name, dtype = case
    row = sim_results[f"{name}-{dtype}"]
    assert row["error"] <= TOLERANCE[dtype], (name, dtype, row)


@pytest.mark.cudasim
def test_streamed_chunks_give_identical_results(sim_results):
    """Pair lists sent through pinned buffers on two streams, several chunks, equal the
    one-chunk call bit for bit (``cuda_slab.fill_streamed``)."""
    assert sim_results["streamed-float64"]["error"] == 0.0, sim_results["streamed-float64"]


def _gpu() -> bool:
    try:
        import cupy  # noqa: PLC0415

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_cuda_kernel_on_gpu_matches_cpu(case):
    if not _gpu():
        pytest.skip("needs CuPy and a CUDA device")
    name, dtype = case
    assert case_error(name, dtype, "gpu") <= TOLERANCE[dtype]


def test_gpu_reason_names_a_layer_inside_a_branch():
    """A layer the CUDA kernel lacks inside a parallel branch keeps the reference path,
    the reason naming it (no simulator needed: planning only)."""
    net = stax.serial(stax.Conv(4, (3, 3)), stax.FanOut(2),
                      stax.parallel(stax.Gelu(), stax.Identity()), stax.FanInSum(),
                      stax.GlobalAvgPool())
    path = select_path(net, (6, 6, 2), "gpu")
    assert path.name == "reference"
    assert "branch 0: layer 0 (Gelu)" in path.reason and "CUDA" in path.reason, path.reason


@pytest.mark.parametrize("dtype, shared", [("float64", False), ("float32", True)])
def test_wide_resnet_32x32_slots_placement(dtype, shared):
    """The README's WideResNet on 32×32×3 runs on ``cuda_slab``: float32 keeps its branch
    slots in shared memory (≤ 48 KiB with them), float64 puts them in global scratch."""
    net = stax.presets.wide_resnet(1, 1, 10, pool=8)
    path = select_path(net, (32, 32, 3), "gpu", dtype=dtype)
    assert path.name == "cuda_slab", path.reason
    prog = slab_program.Program(layers_of(net), path.plan, np.dtype(dtype))
    assert prog.nslots == 2
    size = np.dtype(dtype).itemsize
    assert cuda_slab.slots_in_shared(prog, size) is shared
    assert cuda_slab.shared_bytes(prog, size, slots=shared) <= cuda_slab.MAX_SHARED


def test_summing_pools_take_the_cuda_slab_path():
    """SumPool/GlobalSumPool run on ``cuda_slab`` as their averaging twins undivided
    (planning only): the stage after a SumPool loads undivided window sums, the
    GlobalSumPool readout sums; in a branch they keep the reference path, with a reason."""
    net = NETS["sumpool_globalsumpool"][0]()
    layers = layers_of(net)
    path = select_path(net, (3, 3, 2), "gpu")
    assert path.name == "cuda_slab", path.reason
    prog = cuda_slab.program(layers, path.plan, np.float64)
    assert prog.count == 1.0 and prog.pinv.shape[0] == 2 and np.all(prog.pinv[1] == 1.0)
    twin, summed = cuda_slab.as_average(layers)
    assert summed == [2, 5] and [twin[l].layer_name for l in summed] == ["AvgPool", "GlobalAvgPool"]
    ref = slab_program.Program(twin, path.plan, np.dtype(np.float64))
    assert np.all(ref.pinv[1, :, :2] == 0.5) and ref.count == 2.0 ** 4   # AvgPool/GAP (2x2) divide
    branched = stax.serial(stax.Conv(2, (3, 3), padding="SAME"), stax.FanOut(2),
                           stax.parallel(stax.SumPool((2, 2), (1, 1), padding="SAME"),
                                         stax.Identity()),
                           stax.FanInSum(), stax.GlobalSumPool())
    gpu = select_path(branched, (4, 4, 2), "gpu")
    assert gpu.name == "reference" and "SumPool" in gpu.reason, gpu.reason
