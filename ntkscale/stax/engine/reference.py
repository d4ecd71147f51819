"""The reference path for flat networks: the layers' array-API maps on row blocks.

Flat networks start from K0 = <x, x'>/d and Θ0 = 0 (NT-CONVENTIONS). Large
outputs are computed in row blocks sized from a memory budget; the result is
the same (to float rounding) for any block size. Image networks' reference
evaluation is ``reference_image``; ``engine.select_path`` picks the path.
The reference path runs every registered layer (``SUPPORTED_LAYERS``) on any
array namespace (NumPy, CuPy, array-api-strict).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

import psutil

from ...backend import concat, itemsize
from ..layers.base import LayerImpl
from ..state import KernelState

#: Every registered layer: the reference path runs each layer's own kernel map
#: (a test checks this table against the registry).
SUPPORTED_LAYERS = frozenset({
    "ABRelu", "Abs", "Aggregate", "AvgPool", "Conv", "Dense", "Dropout", "Erf", "FanInConcat", "FanInProd",
    "FanInSum", "FanOut", "Flatten", "Gelu", "GlobalAvgPool", "GlobalSelfAttention", "Identity",
    "LayerNorm",
    "LeakyRelu", "Relu", "Sin", "parallel",
    "Cos", "ElementwiseNumerical", "Exp", "ExpNormalized", "Gabor", "Gaussian", "GlobalSumPool",
    "Hermite", "Monomial", "Polynomial", "Rbf", "RectifiedMonomial", "Sigmoid_like", "Sign",
    "SumPool",
})

#: Temporaries alive at once per output entry in the reference path (bytes
#: per entry = this × itemsize).
REFERENCE_TEMPORARIES = 14


def default_memory_budget() -> int:
    """A quarter of the available memory, at most 4 GiB."""
    available = int(psutil.virtual_memory().available)
    return int(max(64 << 20, min(available // 4, 4 << 30)))


def initial_state(x1: Any, x2: Any, xp: Any, want_ntk: bool,
                  diag_offset: Optional[int]) -> KernelState:
    """K0 = <x, x'>/d of a row block (``diag_offset``: x2 is x1 and row i of the
    block is row ``i + diag_offset`` of x2, whose exact variance goes on the diagonal)."""
    d = x1.shape[1]
    var1 = xp.sum(x1 * x1, axis=1) / d
    var2 = xp.sum(x2 * x2, axis=1) / d
    k = xp.matmul(x1, xp.matrix_transpose(x2)) / d
    if diag_offset is not None:
        # x2 is x1: the pair (i, i) is exactly parallel; use the exact variance.
        n1, n2 = k.shape
        rows = xp.arange(n1)[:, None]
        cols = xp.arange(n2)[None, :]
        k = xp.where(cols == rows + diag_offset, var1[:, None], k)
    return KernelState(nngp=k, ntk=0.0 if want_ntk else None, var1=var1, var2=var2,
                       width=int(d), symmetric=diag_offset is not None, diag_offset=diag_offset)


def run_layers(layers: Sequence[LayerImpl], state: KernelState, xp: Any) -> KernelState:
    """Apply every layer's kernel map in turn."""
    for layer in layers:
        state = layer.kernel(state, xp)
    return state


def _outputs(state: KernelState, xp: Any, want_ntk: bool) -> Dict[str, Any]:
    nngp = state.nngp
    out = {"nngp": nngp}
    if want_ntk:
        ntk = state.ntk
        if not hasattr(ntk, "shape") or ntk.shape != nngp.shape:
            ntk = xp.zeros_like(nngp) + ntk
        out["ntk"] = ntk
    return out


def block_rows_for(n1: int, n2: int, value_bytes: int, budget: int) -> int:
    """Rows per block of the flat reference path whose temporaries fit ``budget`` bytes."""
    per_row = max(1, n2 * value_bytes * REFERENCE_TEMPORARIES)
    return int(max(1, min(n1, budget // per_row)))


def evaluate(layers: List[LayerImpl], x1: Any, x2: Optional[Any], xp: Any, *, want_ntk: bool,
             memory_budget: Optional[int] = None,
             block_rows: Optional[int] = None) -> Dict[str, Any]:
    """Kernels of a flat network for all pairs of rows of x1 and x2 (x2=None: x1)."""
    symmetric = x2 is None
    x2full = x1 if symmetric else x2
    n1, n2 = x1.shape[0], x2full.shape[0]
    budget = memory_budget or default_memory_budget()
    rows = block_rows or block_rows_for(n1, n2, itemsize(x1), budget)
    blocks: List[Dict[str, Any]] = []
    for r0 in range(0, n1, rows):
        xb = x1[r0:r0 + rows, ...]
        state = initial_state(xb, x2full, xp, want_ntk, r0 if symmetric else None)
        blocks.append(_outputs(run_layers(layers, state, xp), xp, want_ntk))
    return {key: concat([b[key] for b in blocks], xp) for key in blocks[0]}


def evaluate_diagonal(layers: List[LayerImpl], x: Any, xp: Any, *, want_ntk: bool) -> Dict[str, Any]:
    """k(x_i, x_i) for every row i of a flat network (diagonal-batch recursion, O(n))."""
    d = x.shape[1]
    var = xp.sum(x * x, axis=1) / d
    state = KernelState(nngp=var, ntk=0.0 if want_ntk else None, var1=var, var2=None,
                        diagonal_batch=True, width=int(d))
    return _outputs(run_layers(layers, state, xp), xp, want_ntk)


def cost_per_entry(layers: Sequence[LayerImpl], input_shape: Tuple[int, ...]) -> Dict[str, float]:
    """Flops and bytes per kernel entry of a flat network (the planner's cost model)."""
    d = int(np.prod(input_shape))
    flops = 2.0 * d + sum(layer.flops_per_entry(()) for layer in layers)
    return {"flops": flops, "bytes": float(REFERENCE_TEMPORARIES), "pair_entries": 1.0}
