"""``Aggregate``: the message-passing layer of graph networks (neural-tangents 0.6.5).

Each input (an NWC sequence of ``W`` nodes, or an NHWC image of ``H × W`` nodes) comes
with a pattern ``A`` (a weighted adjacency: ``A[i, j]`` is the weight of the arc from
node ``i`` to node ``j``); the layer replaces every node by the weighted sum of its
predecessors, ``out_j = Σ_i A[i, j] x_i``. It is linear and parameter-free, so
(Du et al. 2019, "Graph Neural Tangent Kernel"; the form neural-tangents uses)::

    Σ_out(x, x') = A(x)ᵀ Σ(x, x') A(x')        Θ_out(x, x') = A(x)ᵀ Θ(x, x') A(x')

over the aggregated node axes. Patterns are passed as in neural-tangents:
``kernel_fn(x1, x2, get, pattern=(p1, p2))`` and ``apply_fn(params, x, pattern=p)``;
``pattern=None`` is the identity. ``implementation="DENSE"``: ``p`` has shape
``(n, X..., X...)`` (batch, the aggregated axes twice; ``(n, W, W)`` for sequences,
``(n, H, W, H, W)`` for images); ``"SPARSE"``: integer edges ``(n, n_edges, K, 2)``
(``(n, n_edges, 2)`` when ``K = 1``) of (tail, head) nodes, negative entries are padding,
repeated edges add up. ``to_dense`` must be ``None`` (dense patterns) in a spec: a spec is
data, so convert sparse formats before the call or use ``implementation="SPARSE"``.
"""

from __future__ import annotations

import enum
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from ...backend import to_numpy
from ...errors import InputError, SpecError
from .base import LayerImpl, Shape, spatial_diagonal
from ..network import Layer, make_layer
from ..spec import Param, register
from ..state import KernelState

class AggregateImplementation(str, enum.Enum):
    """neural-tangents' ``stax.AggregateImplementation``: the pattern format of ``Aggregate``."""

    DENSE = "DENSE"
    SPARSE = "SPARSE"


#: the aggregated internal axes: "HW" (every node axis), "W" or "H"
AXES_ALL, AXIS_W, AXIS_H = "HW", "W", "H"


def _user_axes(value: Any) -> Optional[List[int]]:
    if value is None:
        return None
    items = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    try:
        out = [int(a) for a in items]
    except (TypeError, ValueError):
        raise SpecError(f"Aggregate(aggregate_axis={value!r}) must be None, an integer or a tuple "
                        "of integers") from None
    if not out:
        raise SpecError("Aggregate(aggregate_axis=()) aggregates nothing; use None for every node axis")
    return out


@register("Aggregate", {
    "aggregate_axis": Param(None, "any"),
    "batch_axis": Param(0, "any", supported=(0,)),
    "channel_axis": Param(-1, "any", supported=(-1,)),
    "to_dense": Param(None, "any", supported=(None,)),
    "implementation": Param("DENSE", "str", choices=("DENSE", "SPARSE")),
})
class AggregateImpl(LayerImpl):
    """``Aggregate(aggregate_axis=None, ..., implementation="DENSE")`` (see the module docstring)."""

    image_layer = True
    needs_full_spatial = True
    takes_pattern = True

    def __init__(self, params):
        super().__init__(params)
        self.axes = _user_axes(params["aggregate_axis"])

    def describe(self) -> str:
        extra = "" if self.axes is None else f"aggregate_axis={tuple(self.axes)}, "
        return f"Aggregate({extra}implementation={self.params['implementation']!r})"

    # -- which axes, which shape ----------------------------------------------
    def _readings(self, hw: Tuple[int, int]) -> List[Tuple[str, Tuple[int, ...]]]:
        """Possible (internal axes, per-sample dense pattern shape) for inputs of ``hw``:
        the sequence reading (``1 × W``) first, then the image one."""
        h, w = hw
        out: List[Tuple[str, Tuple[int, ...]]] = []
        axes = self.axes
        if h == 1 and (axes is None or set(axes) <= {1, -2}):
            out.append((AXIS_W, (w, w)))
        if axes is None or sorted(a % 4 for a in axes) == [1, 2]:
            out.append((AXES_ALL, (h, w, h, w)))
        elif {a % 4 for a in axes} == {1}:
            out.append((AXIS_H, (h, h)))
        elif {a % 4 for a in axes} == {2}:
            out.append((AXIS_W, (w, w)))
        elif not out:
            raise SpecError(f"{self.describe()}: aggregate_axis must name node axes (1 and/or 2 of "
                            "NHWC images, 1 of NWC sequences), not the batch or channel axis")
        return out

    def _dense(self, pattern: Any, n: int, hw: Tuple[int, int], xp: Any, which: str) -> Tuple[str, Any]:
        """``(axes, A)``: the pattern of ``n`` inputs as a dense ``(n, X, X)`` array."""
        readings = self._readings(hw)
        shape = tuple(int(s) for s in pattern.shape)
        if self.params["implementation"] == "SPARSE":
            return self._from_edges(pattern, n, hw, readings, xp, which)
        for axes, per in readings:
            if shape == (n,) + per:
                size = int(np.prod(per[: len(per) // 2]))
                return axes, xp.reshape(pattern, (n, size, size))
        want = " or ".join(str((n,) + per) for _, per in readings)
        raise InputError(f"{self.describe()}: {which} has shape {shape}, expected {want} (batch, then "
                         f"the aggregated node axes twice) for inputs with {hw[1]} positions"
                         + ("" if hw[0] == 1 else f" x {hw[0]} rows"))

    def _from_edges(self, pattern: Any, n: int, hw: Tuple[int, int], readings, xp: Any,
                    which: str) -> Tuple[str, Any]:
        edges = to_numpy(pattern)
        if edges.dtype.kind not in "iu" and not (edges.dtype.kind == "f" and np.all(edges == np.round(edges))):
            raise InputError(f"{self.describe()}: {which} must hold integer node indices")
        edges = edges.astype(np.int64)
        if edges.ndim == 3:
            edges = edges[:, :, None, :]
        if edges.ndim != 4 or edges.shape[0] != n or edges.shape[-1] != 2:
            raise InputError(f"{self.describe()}: {which} has shape {tuple(pattern.shape)}, expected "
                             f"({n}, n_edges, K, 2) or ({n}, n_edges, 2) (tail, head) edges")
        k = edges.shape[2]
        axes, per = next(((a, p) for a, p in readings if len(p) == 2 * k), (None, None))
        if axes is None:
            raise InputError(f"{self.describe()}: {which} gives {k} coordinates per node, but the "
                             "aggregated axes need " + " or ".join(str(len(p) // 2) for _, p in readings))
        dims = per[:k]
        size = int(np.prod(dims))
        dense = np.zeros((n, size, size))
        for b in range(n):
            tails, heads = edges[b, :, :, 0], edges[b, :, :, 1]
            keep = np.all(tails >= 0, axis=1) & np.all(heads >= 0, axis=1)
            t = np.ravel_multi_index(tuple(tails[keep].T), dims, mode="wrap")
            hd = np.ravel_multi_index(tuple(heads[keep].T), dims, mode="wrap")
            np.add.at(dense[b], (t, hd), 1.0)
        return axes, xp.asarray(dense)

    # -- kernel -----------------------------------------------------------------
    @staticmethod
    def _sandwich(k: Any, a1: Any, a2: Any, axes: str, batch_ndim: int, xp: Any) -> Any:
        """``A1ᵀ K A2`` over the aggregated axes of a full-layout ``(..., H, H', W, W')`` K."""
        nb = batch_ndim
        *b, h, _, w, _ = k.shape
        if axes == AXES_ALL:
            p = h * w
            k = xp.reshape(xp.permute_dims(k, tuple(range(nb)) + (nb, nb + 2, nb + 1, nb + 3)),
                           tuple(b) + (p, p))
        elif axes == AXIS_H:
            k = xp.permute_dims(k, tuple(range(nb)) + (nb + 2, nb + 3, nb, nb + 1))
        extra = k.ndim - nb - 2
        if nb == 2:
            a1 = xp.reshape(a1, (a1.shape[0], 1) + (1,) * extra + tuple(a1.shape[1:]))
            a2 = xp.reshape(a2, (1, a2.shape[0]) + (1,) * extra + tuple(a2.shape[1:]))
        else:
            a1 = xp.reshape(a1, (a1.shape[0],) + (1,) * extra + tuple(a1.shape[1:]))
            a2 = xp.reshape(a2, (a2.shape[0],) + (1,) * extra + tuple(a2.shape[1:]))
        out = xp.matmul(xp.matmul(xp.matrix_transpose(a1), k), a2)
        if axes == AXES_ALL:
            out = xp.permute_dims(xp.reshape(out, tuple(b) + (h, w, h, w)),
                                  tuple(range(nb)) + (nb, nb + 2, nb + 1, nb + 3))
        elif axes == AXIS_H:
            out = xp.permute_dims(out, tuple(range(nb)) + (nb + 2, nb + 3, nb, nb + 1))
        return out

    def kernel(self, state: KernelState, xp: Any) -> KernelState:
        if state.spatial is None or state.diagonal_spatial:
            raise SpecError(f"{self.describe()} needs the full node-pair covariance (internal)")
        p1 = state.pattern1
        p2 = p1 if state.diagonal_batch else state.pattern2
        if p1 is None:
            return state     # pattern=None: the identity, as in neural-tangents
        nb = 1 if state.diagonal_batch else 2
        n1 = state.nngp.shape[0]
        n2 = n1 if state.diagonal_batch else state.nngp.shape[1]
        axes, a1 = self._dense(p1, n1, state.spatial, xp, "pattern1")
        _, a2 = self._dense(p2, n2, state.spatial, xp, "pattern1" if state.diagonal_batch else "pattern2")
        a1, a2 = xp.astype(a1, state.nngp.dtype), xp.astype(a2, state.nngp.dtype)
        nngp = self._sandwich(state.nngp, a1, a2, axes, nb, xp)
        ntk = state.ntk
        if ntk is not None and hasattr(ntk, "shape"):
            ntk = self._sandwich(ntk, a1, a2, axes, nb, xp)
        var1 = spatial_diagonal(nngp, xp) if state.diagonal_batch else None
        return state.replace(nngp=nngp, ntk=ntk, var1=var1, var2=None)

    def flops_per_entry(self, state_shape: Shape) -> float:
        positions = int(np.sqrt(float(np.prod(state_shape or (1,)))))
        return 2.0 * 4.0 * float(positions) ** 3

    # -- finite width -------------------------------------------------------------
    def apply(self, params: Any, x: np.ndarray) -> np.ndarray:
        return x

    def apply_pattern(self, params: Any, x: np.ndarray, pattern: Any) -> np.ndarray:
        """``out_j = Σ_i A[i, j] x_i`` over the aggregated node axes of NHWC ``x``."""
        if pattern is None:
            return x
        n, h, w, c = x.shape
        axes, a = self._dense(np.asarray(pattern, dtype=np.float64)
                              if self.params["implementation"] == "DENSE" else np.asarray(pattern),
                              n, (h, w), np, "pattern")
        if axes == AXES_ALL:
            return np.einsum("nij,nic->njc", a, x.reshape(n, h * w, c)).reshape(n, h, w, c)
        if axes == AXIS_W:
            return np.einsum("nij,nhic->nhjc", a, x)
        return np.einsum("nij,niwc->njwc", a, x)


def Aggregate(aggregate_axis: Optional[Sequence[int] | int] = None, batch_axis: int = 0,
              channel_axis: int = -1, to_dense: Any = None,
              implementation: str = "DENSE") -> Layer:
    """Aggregation over graph edges (neural-tangents ``stax.Aggregate``; Du et al. 2019).
    Patterns are keyword arguments of the calls: ``kernel_fn(x1, x2, get, pattern=(p1,
    p2))``, ``apply_fn(params, x, pattern=p)``. ``to_dense`` must be None (a spec is data)."""
    if to_dense is not None:
        raise SpecError("Aggregate(to_dense=<function>): a network spec is data, so it cannot hold a "
                        "function; convert the patterns to dense arrays before the call (to_dense="
                        "None) or pass (tail, head) edges with implementation='SPARSE'")
    return make_layer("Aggregate", dict(aggregate_axis=aggregate_axis, batch_axis=batch_axis,
                                        channel_axis=channel_axis, to_dense=None,
                                        implementation=getattr(implementation, "value", implementation)))
