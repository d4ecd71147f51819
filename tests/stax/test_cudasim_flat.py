"""The CUDA flat kernel (``cuda_flat``) against the NumPy paths.

As ``test_cudasim_slab``: one body, :func:`case_error`, runs the cases

* ``cudasim`` (default suite, no GPU): the kernel's source in numba's CUDA simulator on
  NumPy arrays, in one child process (``test_cudasim_slab.simulated_errors``), and
* ``gpu`` (``pytest -m gpu``): CuPy arrays through ``kernel_fn``, which picks
  ``cuda_flat`` itself.

Every case checks k(x1, x1) (symmetric: upper triangle, mirrored, exact diagonal),
k(x1, x2) and their Θ against ``cpu_flat`` (the path NumPy inputs take, bound
``TOLERANCE``) and against the array-API reference path (``fast=False``). Sizes are
tiny (3 + 2 inputs of 4 features): the simulator runs each CUDA thread as a Python
thread.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, Tuple

import numpy as np
import pytest

from ntkscale import stax
from ntkscale.stax.engine import cuda_flat, layers_of, select_path
from tests.stax.test_cudasim_slab import TOLERANCE, _gpu, _has_numba_cuda, simulated_errors

#: Bound against the reference maps (a different evaluation order; float32 rounds the
#: reference's per-layer temporaries, not the fused kernel's float64 registers).
REFERENCE_TOLERANCE = {"float64": 1e-10, "float32": 1e-4}


def _dense(n: int = 3, **kw: Any) -> Any:
    kw.setdefault("W_std", 1.4)
    kw.setdefault("b_std", 0.1)
    return stax.Dense(n, **kw)


def _nets() -> Dict[str, Tuple[Callable[[], Any], Tuple[str, ...]]]:
    """name -> (network builder, dtypes)."""
    return {
        "fc_relu": (lambda: stax.serial(_dense(), stax.Relu(), _dense(), stax.Relu(), _dense(1)),
                    ("float64", "float32")),
        "abrelu_family_standard": (
            lambda: stax.serial(_dense(parameterization="standard"), stax.LeakyRelu(0.2),
                                _dense(4, W_std=1.2, b_std=0.3, parameterization="standard"),
                                stax.Abs(), _dense(parameterization="standard"),
                                stax.ABRelu(-0.3, 1.2), stax.Identity(), _dense(1, b_std=None)),
            ("float64", "float32")),
        "erf_gelu_sin": (lambda: stax.serial(_dense(), stax.Erf(0.7, 1.3, 0.2), _dense(),
                                             stax.Gelu(), _dense(), stax.Sin(1.1, 0.9, 0.3),
                                             _dense(1)),
                         ("float64", "float32")),
        "residual_sum": (
            lambda: stax.serial(_dense(), stax.FanOut(2),
                                stax.parallel(stax.serial(stax.Relu(), _dense(), stax.Relu(), _dense()),
                                              stax.Identity()),
                                stax.FanInSum(), stax.Relu(), _dense(1)),
            ("float64", "float32")),
        "fanin_prod_concat": (
            lambda: stax.serial(_dense(), stax.FanOut(2), stax.parallel(_dense(), stax.Erf()),
                                stax.FanInProd(), stax.Relu(), stax.FanOut(3),
                                stax.parallel(_dense(4), _dense(2), _dense(3)),
                                stax.FanInConcat(), stax.Relu(), _dense(1)),
            ("float64",)),
        "layernorm_dropout": (
            lambda: stax.serial(_dense(), stax.LayerNorm(), stax.Relu(), stax.Dropout(0.6, "test"),
                                _dense(), stax.Dropout(0.7), stax.Gelu(), _dense(1)),
            ("float64", "float32")),
    }


NETS = _nets()
CASES = [(name, dt) for name, (_, dts) in NETS.items() for dt in dts]
IDS = [f"{n}-{d}" for n, d in CASES]


def case_error(name: str, dtype: str, device: str) -> Tuple[float, float]:
    """``(vs cpu_flat, vs reference)``: largest relative deviations of the CUDA flat kernel
    over nngp and ntk of k(x1, x1) and k(x1, x2). ``device="sim"``: NumPy arrays straight
    into ``cuda_flat`` (this process runs the simulator); ``"gpu"``: CuPy via ``kernel_fn``."""
    kf = NETS[name][0]()[2]
    layers = layers_of(kf)
    assert select_path(layers, (4,), "gpu", dtype=dtype).name == "cuda_flat"
    assert select_path(layers, (4,), "cpu", dtype=dtype).name == "cpu_flat"
    rng = np.random.default_rng(5)
    x1 = rng.uniform(-1, 1, (3, 4)).astype(dtype)
    x2 = rng.uniform(-1, 1, (2, 4)).astype(dtype)
    get = ("nngp", "ntk")
    refs = [kf(x1, None, get), kf(x1, x2, get)]
    slow = [kf(x1, None, get, fast=False), kf(x1, x2, get, fast=False)]
    if device == "gpu":
        import cupy  # noqa: PLC0415 (GPU runs only)

        c1, c2 = cupy.asarray(x1), cupy.asarray(x2)
        outs = [tuple(cupy.asnumpy(o) for o in kf(c1, b, get)) for b in (None, c2)]
    else:
        outs = [(r["nngp"], r["ntk"]) for r in
                (cuda_flat.evaluate(layers, x1, b, want_ntk=True) for b in (None, x2))]
        for b, out in zip((None, x2), outs):   # NNGP alone: the same entries, no NTK
            alone = cuda_flat.evaluate(layers, x1, b, want_ntk=False)
            assert set(alone) == {"nngp"} and np.array_equal(alone["nngp"], out[0])
    worst = [0.0, 0.0]
    for out, ref, ref_slow in zip(outs, refs, slow):
        for o, r, s in zip(out, ref, ref_slow):
            assert o.dtype == np.dtype(dtype) and o.shape == r.shape
            worst[0] = max(worst[0], float(np.abs(o - r).max() / np.abs(r).max()))
            worst[1] = max(worst[1], float(np.abs(o - s).max() / np.abs(s).max()))
    sym = outs[0]
    for o in sym:
        assert np.array_equal(o, o.T)   # mirrored in the kernel, bit for bit
    return worst[0], worst[1]


def all_errors(device: str) -> Dict[str, Dict[str, float]]:
    """Every case: its errors and seconds (``device`` as :func:`case_error`)."""
    out = {}
    for (name, dtype), key in zip(CASES, IDS):
        t0 = time.perf_counter()
        err, err_ref = case_error(name, dtype, device)
        out[key] = {"error": err, "error_reference": err_ref, "seconds": time.perf_counter() - t0}
    return out


@pytest.fixture(scope="module")
def sim_results() -> Dict[str, Dict[str, float]]:
    if not _has_numba_cuda():
        pytest.skip("numba-cuda is not installed (pip install 'ntkscale[gpu]' or numba-cuda)")
    return simulated_errors(module="tests.stax.test_cudasim_flat")


@pytest.mark.cudasim
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_cuda_flat_kernel_in_simulator_matches_numpy(case, sim_results):
    name, dtype = case
    row = sim_results[f"{name}-{dtype}"]
    assert row["error"] <= TOLERANCE[dtype], (name, dtype, row)
    assert row["error_reference"] <= REFERENCE_TOLERANCE[dtype], (name, dtype, row)


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_cuda_flat_kernel_on_gpu_matches_numpy(case):
    if not _gpu():
        pytest.skip("needs CuPy and a CUDA device")
    name, dtype = case
    err, err_ref = case_error(name, dtype, "gpu")
    assert err <= TOLERANCE[dtype] and err_ref <= REFERENCE_TOLERANCE[dtype]


def test_gpu_flat_path_and_reasons():
    """Planning only (no simulator): flat nets take ``cuda_flat`` on the GPU, and what it
    cannot run keeps the reference maps with a reason naming the layer or the slots."""
    fc = stax.serial(_dense(), stax.Relu(), _dense(1))
    path = select_path(fc, (4,), "gpu")
    assert path.name == "cuda_flat" and "CUDA flat kernel" in path.reason
    e = fc[2].explain((10, 4), device="gpu", dtype="float32")
    assert e.path == "cuda_flat" and e.tile is None and e.entries == 55
    assert select_path(fc, (4,), "gpu", diagonal=True).name == "reference"
    odd = select_path(stax.serial(_dense(), stax.Exp(), _dense(1)), (4,), "gpu")
    assert odd.name == "reference" and "not cuda_flat" in odd.reason and "Exp" in odd.reason
    many = stax.serial(_dense(), stax.FanOut(cuda_flat.MAX_SLOTS + 1),
                       stax.parallel(*[stax.Identity()] * (cuda_flat.MAX_SLOTS + 1)), stax.FanInSum())
    wide = select_path(many, (4,), "gpu")
    assert wide.name == "reference" and f"{cuda_flat.MAX_SLOTS + 1} slots" in wide.reason, wide.reason
    assert select_path(many, (4,), "cpu").name == "cpu_flat"
