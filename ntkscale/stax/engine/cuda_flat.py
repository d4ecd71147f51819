"""GPU path for fully-connected networks: one GEMM, then one fused numba-cuda kernel.

For a flat network every entry's recursion after the input Gram is a scalar function
of (c, q_i, q'_j) per layer (Neal 1996; Lee et al. 2018 for the NNGP, Jacot et al.
2018 for the NTK; closed forms: Cho & Saul 2009 for the ReLU family, Williams 1997
for Erf), so the array namespace computes ``X1 X2ᵀ / d`` (cuBLAS under CuPy, BLAS
under NumPy) and ONE elementwise kernel walks the whole Dense/activation/branch
program per entry in registers, in float64 for both input precisions, writing Σ and
Θ once. The array-API reference path on CuPy instead runs one elementwise
expression per layer with ~10 full-size temporaries each.

Shared with ``cpu_flat``, not duplicated: the program encoding (``cpu_flat._encode``:
op codes and parameters, branch slots from ``program_walk``), the self-variances
entering each step (``cpu_flat._layer_variances``: the reference maps, O(S·n)) and
the per-entry math itself: the kernel calls ``cpu_flat._layer_pass`` and
``cpu_flat._slot_pass``, numba ``@njit`` functions that numba-cuda recompiles as CUDA
device functions from the same Python source (it retargets a CPU dispatcher called
from a kernel), on buffers of one entry (``cuda.local.array``).

A symmetric call (x2 = x1) runs the upper triangle, each thread writing its entry
and the mirrored one; its diagonal holds the exact self-variances and
``Dropout(mode="train")`` scales it. Inputs are CuPy arrays on a GPU, or NumPy
arrays under numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``), which is how CI
executes this kernel (``tests/stax/test_cudasim_flat.py``, marked ``cudasim``).
``numba.cuda`` is an optional dependency imported only when the kernel is built.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from numba import float64

from ..layers.base import PARALLEL_TOLERANCE_EPS, LayerImpl
from . import cpu_flat, cuda_kernels
from .cpu_slab import _module
from .program_walk import check_steps, flatten

__all__ = ["MAX_SLOTS", "SUPPORTED_LAYERS", "evaluate", "unsupported"]

#: Layers this kernel runs (registry names): every layer of ``cpu_flat``, whose
#: encoding and per-entry math it shares.
SUPPORTED_LAYERS = cpu_flat.SUPPORTED_LAYERS
#: Branch slots one thread keeps in registers / local memory (a compile-time size):
#: a network with more simultaneously saved branches runs the reference maps.
MAX_SLOTS = 8
#: Threads per block on a GPU, and in the simulator (each thread a Python thread).
THREADS = 128
SIM_THREADS = 4

_KERNEL: Dict[str, Any] = {}
#: ``numba.cuda``, bound by ``_build`` (a module global, not a closure: the simulator
#: swaps the module global ``cuda`` of a kernel for its own fake module).
cuda: Any = None


def unsupported(layers: Sequence[LayerImpl], input_shape: Tuple[int, ...]) -> Optional[str]:
    """Why this kernel cannot run ``layers`` on per-example ``input_shape``, or None:
    what ``cpu_flat`` cannot run, or more than ``MAX_SLOTS`` branch slots."""
    why = cpu_flat.unsupported(layers, input_shape)
    if why is not None:
        return why
    nslots = flatten(layers)[1]
    if nslots > MAX_SLOTS:
        return (f"the branches keep {nslots} slots at once, over the CUDA flat kernel's "
                f"{MAX_SLOTS} per thread")
    return None


def _build() -> Any:
    global cuda
    import numba.cuda  # noqa: PLC0415 (optional dependency: numba-cuda)

    cuda = numba.cuda
    layer_pass, slot_pass = cpu_flat._layer_pass, cpu_flat._slot_pass
    op_store, op_sum = cpu_flat.OP_STORE, cpu_flat.OP_SUM
    max_slots = MAX_SLOTS

    @cuda.jit
    def flat_kernel(K, T, v1, v2, ops, params, tol, want_ntk, symmetric):
        """Entry e = i·n2 + j of the grid: K[i, j] (the input Gram) through every step
        into Σ (K, in place) and Θ (T). ``symmetric``: only j ≥ i runs, and also
        writes [j, i]; (i, i) pairs an input with itself (``Dropout`` "train").
        ``v1``/``v2``: (3, S, n) variances q, √q, 1/√q (``cpu_flat._variance_roots``)."""
        e = cuda.grid(1)
        n1 = K.shape[0]
        n2 = K.shape[1]
        if e >= n1 * n2:
            return
        i = e // n2
        j = e % n2
        if symmetric and j < i:
            return
        c = cuda.local.array(1, float64)
        t = cuda.local.array(1, float64)
        qb = cuda.local.array(1, float64)
        sb = cuda.local.array(1, float64)
        rb = cuda.local.array(1, float64)
        sc = cuda.local.array((max_slots, 1), float64)
        st = cuda.local.array((max_slots, 1), float64)
        c[0] = K[i, j]
        t[0] = 0.0
        diag = symmetric and i == j
        for l in range(ops.shape[0]):
            op = ops[l]
            if op >= op_store and op <= op_sum:
                slot_pass(op, np.int64(params[l, 0]), np.int64(params[l, 1]), params[l, 2] != 0.0,
                          params[l, 3], c, t, sc, st, want_ntk)
            else:
                qb[0] = v2[0, l, j]
                sb[0] = v2[1, l, j]
                rb[0] = v2[2, l, j]
                layer_pass(op, params[l, 0], params[l, 1], params[l, 2], params[l, 3], c, t,
                           v1[0, l, i], v1[1, l, i], v1[2, l, i], qb, sb, rb, tol, want_ntk,
                           diag)
        K[i, j] = c[0]
        if want_ntk:
            T[i, j] = t[0]
        if symmetric and j != i:
            K[j, i] = c[0]
            if want_ntk:
                T[j, i] = t[0]

    return flat_kernel


def kernel() -> Any:
    """The fused flat kernel (numba-cuda specialises it per dtype at the first launch)."""
    if "flat" not in _KERNEL:
        _KERNEL["flat"] = _build()
    return _KERNEL["flat"]


def _self_variance(mod: Any, x: Any, d: int) -> np.ndarray:
    """``|x_i|² / d`` in float64 on the host (O(n); the steps' variances need it there)."""
    var = (x.astype(np.float64) ** 2).sum(axis=1) / d
    return var if mod is np else mod.asnumpy(var)


def evaluate(layers: List[LayerImpl], x1: Any, x2: Optional[Any], *,
             want_ntk: bool) -> Dict[str, Any]:
    """NNGP (and NTK) of a flat network for all row pairs of x1 and x2 (x2=None: x1),
    as arrays of x1's module and dtype."""
    mod = _module(x1)
    host = mod is np   # NumPy arrays (the simulator): copied to the (fake) device here
    dev = cuda_kernels.to_device if host else mod.asarray
    d = int(x1.shape[1])
    steps, _, why = flatten(layers)
    if why is not None:  # pragma: no cover - select_path checks first
        raise AssertionError(why)
    check_steps(steps, d, [])
    ops, params = cpu_flat._encode(steps, d, want_ntk)
    tol = PARALLEL_TOLERANCE_EPS * float(np.finfo(np.dtype(str(x1.dtype))).eps)
    x1 = mod.ascontiguousarray(x1)
    var1 = _self_variance(mod, x1, d)
    v1 = cpu_flat._variance_roots(cpu_flat._layer_variances(steps, var1))
    symmetric = x2 is None
    if symmetric:
        K = x1 @ x1.T
        K /= d
        mod.fill_diagonal(K, mod.asarray(var1).astype(K.dtype))  # exact parallel pairs
        v2 = v1
    else:
        x2 = mod.ascontiguousarray(x2)
        K = x1 @ x2.T
        K /= d
        v2 = cpu_flat._variance_roots(cpu_flat._layer_variances(steps, _self_variance(mod, x2, d)))
    n1, n2 = int(K.shape[0]), int(K.shape[1])
    Kd = dev(K)
    Td = dev(mod.empty_like(K) if want_ntk else mod.empty((1, 1), K.dtype))
    v1d = dev(v1)
    v2d = v1d if symmetric else dev(v2)
    threads = SIM_THREADS if cuda_kernels.simulated() else THREADS
    blocks = max(1, -(-(n1 * n2) // threads))
    kernel()[blocks, threads](Kd, Td, v1d, v2d, dev(ops), dev(params), float(tol),
                              bool(want_ntk), bool(symmetric))
    if host:
        Kd, Td = Kd.copy_to_host(), Td.copy_to_host()
    out = {"nngp": Kd}
    if want_ntk:
        out["ntk"] = Td
    return out
