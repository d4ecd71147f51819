"""Run a layer list on a pair of input batches (pure; no I/O, no Dask).

Flat networks start from K0 = <x, x'>/d and Θ0 = 0 (NT-CONVENTIONS). Large
outputs are computed in row blocks sized from a memory budget; the result is
the same (to float rounding) for any block size.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ...backend import is_numpy_namespace, itemsize
from ..layers.base import LayerImpl
from ..state import KernelState

#: Temporaries alive at once per output entry in the reference path (bytes
#: per entry = this × itemsize).
REFERENCE_TEMPORARIES = 14


def default_memory_budget() -> int:
    """A quarter of the available memory, at most 4 GiB."""
    try:
        import psutil  # noqa: PLC0415

        available = int(psutil.virtual_memory().available)
    except Exception:  # pragma: no cover - psutil is a dependency
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    return int(max(64 << 20, min(available // 4, 4 << 30)))


def _flat_initial_state(x1: Any, x2: Any, xp: Any, want_ntk: bool,
                        diag_offset: Optional[int]) -> KernelState:
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
                       width=int(d), symmetric=diag_offset is not None)


def _is_image_net(layers: Sequence[LayerImpl]) -> bool:
    return any(getattr(layer, "image_layer", False) for layer in layers)


def initial_state(layers: Sequence[LayerImpl], x1: Any, x2: Any, xp: Any, want_ntk: bool,
                  diag_offset: Optional[int]) -> KernelState:
    """Initial state of a flat network (image networks: ``conv_eval``)."""
    return _flat_initial_state(x1, x2, xp, want_ntk, diag_offset)


def run_layers(layers: Sequence[LayerImpl], state: KernelState, xp: Any) -> KernelState:
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


def _block_rows(n1: int, n2: int, per_pair_entries: int, value_bytes: int, budget: int) -> int:
    per_row = max(1, n2 * per_pair_entries * value_bytes * REFERENCE_TEMPORARIES)
    return int(max(1, min(n1, budget // per_row)))


def evaluate(layers: List[LayerImpl], x1: Any, x2: Optional[Any], xp: Any, *, want_ntk: bool,
             memory_budget: Optional[int] = None, fast: bool = True,
             block_rows: Optional[int] = None) -> Dict[str, Any]:
    """Kernels of ``layers`` for all pairs of rows of x1 and x2 (x2=None: x1)."""
    if _is_image_net(layers):
        from .reference_image import evaluate_image  # noqa: PLC0415

        tile = None if block_rows is None else (block_rows, block_rows)
        return evaluate_image(layers, x1, x2, xp, want_ntk=want_ntk,
                              memory_budget=memory_budget or default_memory_budget(),
                              fast=fast, tile=tile)
    if fast and is_numpy_namespace(xp):
        from . import cpu_flat as fast_path  # noqa: PLC0415

        if fast_path.supports(layers, x1):
            return fast_path.evaluate(layers, x1, x2, want_ntk=want_ntk)
    symmetric = x2 is None
    x2full = x1 if symmetric else x2
    n1, n2 = x1.shape[0], x2full.shape[0]
    budget = memory_budget or default_memory_budget()
    per_pair = pair_entries(layers, tuple(x1.shape[1:]))
    rows = block_rows or _block_rows(n1, n2, per_pair, itemsize(x1), budget)
    blocks: List[Dict[str, Any]] = []
    for r0 in range(0, n1, rows):
        xb = x1[r0:r0 + rows, ...]
        state = initial_state(layers, xb, x2full, xp, want_ntk, r0 if symmetric else None)
        blocks.append(_outputs(run_layers(layers, state, xp), xp, want_ntk))
    if len(blocks) == 1:
        return blocks[0]
    return {key: _concat([b[key] for b in blocks], xp) for key in blocks[0]}



def _concat(parts: List[Any], xp: Any) -> Any:
    if is_numpy_namespace(xp):
        return np.concatenate(parts, axis=0)
    return xp.concat(parts, axis=0)


def pair_entries(layers: Sequence[LayerImpl], input_shape: Tuple[int, ...]) -> int:
    """Covariance values tracked per input pair (1 for flat nets)."""
    if _is_image_net(layers):
        from .reference_image import pair_entries as image_pair_entries  # noqa: PLC0415

        return image_pair_entries(layers, input_shape)
    return 1


def evaluate_diagonal(layers: List[LayerImpl], x: Any, xp: Any, *, want_ntk: bool,
                      memory_budget: Optional[int] = None, fast: bool = True) -> Dict[str, Any]:
    """k(x_i, x_i) for every row i (diagonal-batch recursion, O(n))."""
    if _is_image_net(layers):
        from .reference_image import evaluate_image_diagonal  # noqa: PLC0415

        return evaluate_image_diagonal(layers, x, xp, want_ntk=want_ntk,
                                       memory_budget=memory_budget or default_memory_budget(),
                                       fast=fast)
    d = x.shape[1]
    var = xp.sum(x * x, axis=1) / d
    state = KernelState(nngp=var, ntk=0.0 if want_ntk else None, var1=var, var2=None,
                        diagonal_batch=True, width=int(d))
    return _outputs(run_layers(layers, state, xp), xp, want_ntk)


def cost_per_entry(layers: Sequence[LayerImpl], input_shape: Tuple[int, ...]) -> Dict[str, float]:
    """Flops and bytes per kernel entry (the planner's cost model)."""
    if _is_image_net(layers):
        from .reference_image import cost_per_entry as image_cost  # noqa: PLC0415

        return image_cost(layers, input_shape)
    d = int(np.prod(input_shape))
    flops = 2.0 * d + sum(layer.flops_per_entry(()) for layer in layers)
    return {"flops": flops, "bytes": float(REFERENCE_TEMPORARIES), "pair_entries": 1.0}
