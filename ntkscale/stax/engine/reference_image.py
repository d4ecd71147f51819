"""Evaluation of image (convolutional) networks: plan, self-variances, tiles.

Three steps, all pure (no I/O):

1. ``plan_image_net`` walks the layer list once with the input image shape:
   it checks shapes (clear errors that name the layer and the sizes) and
   decides which layout each layer sees. Walking backwards, ``Flatten`` needs
   only matching pixels (``"diag"``: ``(n1, n2, H, W)``), ``AvgPool`` and
   ``GlobalAvgPool`` need every pixel pair (``"full"``:
   ``(n1, n2, H, H', W, W')``), and Conv, Dense and activations pass the
   requirement through (a Conv shifts both pixels of a pair together). A
   ``"full"`` state is cut to its diagonal right after the last pool that
   feeds a Flatten.
2. Self-variance trajectories: the activations of a pair need Σ(x, x) and
   Σ(x', x') at every pixel, and after a pooling layer those come from the
   *full* self-covariance of each image. ``self_trajectory`` runs the
   recursion on the pairs (x_i, x_i) once per input, in batches sized from the
   memory budget, and keeps only the per-pixel variances entering every layer.
3. Pair tiles: ``evaluate_image`` splits the ``n1 × n2`` pairs into tiles
   whose temporaries fit the memory budget (a pixel-pair covariance has
   ``H²W²`` values per image pair), runs the layers on each tile with the
   trajectories' variances, and assembles the flat result. For ``x2 = x1``
   only tiles on and above the diagonal are computed and mirrored, so the
   result is exactly symmetric. The tiling never changes the arithmetic of a
   pair: results are identical for every budget.

Sequences (NWC, one spatial axis) run as ``1 × W`` images: ``plan_image_net``
accepts a per-sample shape ``(W, C)`` (``ImagePlan.rank == 1``) and checks that
every windowed layer has the rank of the inputs. Layers that mix positions
(``GlobalSelfAttention``, ``Aggregate``: ``needs_full_spatial``) need the full
layout like the pools; attention also needs each input's whole self-covariance
(``needs_self_cov``), which the self trajectory keeps (``traj[("cov",) + key]``)
and the pair tiles receive as ``KernelState.self_cov1/2``; graph patterns
(``Aggregate``) travel with the rows of their inputs (``patterns=``).

This is the image half of the reference path; ``engine.select_path`` sends
supported networks to the compiled slab paths (``cpu_slab``, ``cuda_slab``),
which are tested for parity against it.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ...backend import concat, itemsize
from ..layers.base import LayerImpl, spatial_diagonal
from ..state import KernelState
from .image_plan import DIAG, FLAT, FULL, ImagePlan, plan_image_net

__all__ = ["DIAG", "FLAT", "FULL", "IMAGE_TEMPORARIES", "ImagePlan", "cost_per_entry",
           "evaluate_image", "evaluate_image_diagonal", "image_tile", "pair_entries",
           "plan_image_net", "self_trajectory", "tile_shape", "walk"]

#: Arrays of the size of one tile's covariance alive at once in the reference
#: path (activations build ~10 temporaries; Σ and Θ in and out).
IMAGE_TEMPORARIES = 16

# ----------------------------------------------------------- initial states
def _k0_full(x1: Any, x2: Any, xp: Any) -> Any:
    n1, h, w, c = x1.shape
    n2 = x2.shape[0]
    k = xp.matmul(xp.reshape(x1, (n1 * h * w, c)), xp.matrix_transpose(xp.reshape(x2, (n2 * h * w, c))))
    k = xp.reshape(k, (n1, h, w, n2, h, w)) / c
    return xp.permute_dims(k, (0, 3, 1, 4, 2, 5))


def _k0_diag(x1: Any, x2: Any, xp: Any) -> Any:
    c = x1.shape[-1]
    a = xp.permute_dims(x1, (1, 2, 0, 3))               # (H, W, n1, C)
    b = xp.permute_dims(x2, (1, 2, 3, 0))               # (H, W, C, n2)
    return xp.permute_dims(xp.matmul(a, b), (2, 3, 0, 1)) / c


def _self_k0(x: Any, layout: str, xp: Any) -> Any:
    n, h, w, c = x.shape
    if layout == DIAG:
        return xp.sum(x * x, axis=-1) / c
    flat = xp.reshape(x, (n, h * w, c))
    k = xp.matmul(flat, xp.matrix_transpose(flat)) / c    # (n, HW, HW)
    return xp.permute_dims(xp.reshape(k, (n, h, w, h, w)), (0, 1, 3, 2, 4))


def _to_diag(state: KernelState, xp: Any) -> KernelState:
    ntk = state.ntk
    if ntk is not None and hasattr(ntk, "shape"):
        ntk = spatial_diagonal(ntk, xp)
    return state.replace(nngp=spatial_diagonal(state.nngp, xp), ntk=ntk, diagonal_spatial=True)


# ------------------------------------------------------ self trajectories
def _tmap(fn: Callable[..., Any], *states: Any) -> Any:
    """``fn`` over a state, or over each branch of a tuple of states."""
    if isinstance(states[0], tuple):
        return tuple(fn(*parts) for parts in zip(*states))
    return fn(*states)


def walk(layers: Sequence[LayerImpl], state: Any, xp: Any,
         step: Callable[[Tuple[int, ...], Optional[LayerImpl], Any], Any],
         prefix: Tuple[int, ...] = ()) -> Any:
    """Run ``layers`` on ``state``, entering ``parallel`` branches: ``step(key,
    layer, state)`` runs every other layer (``key``: its path ``(l, branch, l2,
    ...)``) and, with ``layer=None``, ends every ``parallel``."""
    for l, layer in enumerate(layers):
        key = prefix + (l,)
        if layer.layer_name == "parallel":
            parts = layer._inputs(state)
            state = tuple(walk(branch, s, xp, step, key + (b,))
                          for b, (branch, s) in enumerate(zip(layer.branches, parts)))
            state = step(key, None, state)
        else:
            state = step(key, layer, state)
    return state


def _sync(state: KernelState, xp: Any) -> KernelState:
    """Keep a self-pair state's variances exactly equal to its covariance's diagonal."""
    if state.spatial is None or state.diagonal_spatial:
        return state.replace(var1=state.nngp)
    return state.replace(var1=spatial_diagonal(state.nngp, xp))


def _cov_key(key: Tuple[int, ...]) -> Tuple[Any, ...]:
    return ("cov",) + key


def _self_batch(layers: Sequence[LayerImpl], plan: ImagePlan, x: Any, xp: Any,
                want_ntk: bool, pattern: Any = None) -> Tuple[Dict[Any, Any], KernelState]:
    c = x.shape[-1]
    var = xp.sum(x * x, axis=-1) / c
    state = KernelState(nngp=_self_k0(x, plan.layouts[0], xp), ntk=0.0 if want_ntk else None,
                        var1=var, var2=None, diagonal_batch=True, width=int(c),
                        spatial=plan.hw[0], diagonal_spatial=plan.layouts[0] == DIAG,
                        pattern1=pattern)
    traj: Dict[Any, Any] = {}

    def step(key: Tuple[int, ...], layer: Optional[LayerImpl], st: Any) -> Any:
        if layer is not None:
            traj[key] = _tmap(lambda t: t.var1, st)
            if getattr(layer, "needs_self_cov", False):
                traj[_cov_key(key)] = st.nngp
            st = layer.kernel(st, xp)
        if len(key) == 1 and plan.to_diag_after[key[0]]:
            st = _tmap(lambda t: _to_diag(t, xp), st)
        return _tmap(lambda t: _sync(t, xp), st)

    state = walk(layers, state, xp, step)
    traj["out"] = state.var1
    return traj, state


def self_trajectory(layers: Sequence[LayerImpl], plan: ImagePlan, x: Any, xp: Any, budget: int,
                    want_ntk: bool = False, batch: Optional[int] = None, pattern: Any = None
                    ) -> Tuple[Dict[Any, Any], Dict[str, Any]]:
    """Per-pixel self-variances entering every layer (``traj[key]`` for the layer
    at path ``key``, ``(l,)`` at the top level; shape ``(n, H_l, W_l)`` or
    ``(n,)``, a tuple of them between FanOut and FanIn), the whole self-covariance
    entering each layer that ``needs_self_cov`` (``traj[("cov",) + key]``) and the
    final ``k(x_i, x_i)``. ``pattern``: the graph patterns of the rows of ``x``."""
    n = x.shape[0]
    per_sample = max(1, plan.pair_entries)
    rows = batch or int(max(1, min(n, budget // (per_sample * itemsize(x) * IMAGE_TEMPORARIES))))
    trajs, finals, ntks = [], [], []
    for r0 in range(0, n, rows):
        part = None if pattern is None else pattern[r0:r0 + rows, ...]
        traj, state = _self_batch(layers, plan, x[r0:r0 + rows, ...], xp, want_ntk, part)
        trajs.append(traj)
        finals.append(state.nngp)
        if want_ntk:
            ntks.append(state.ntk)
    joined = {key: _tmap(lambda *parts: concat(list(parts), xp), *[t[key] for t in trajs])
              for key in trajs[0]}
    out = {"nngp": concat(finals, xp)}
    if want_ntk:
        out["ntk"] = concat(ntks, xp)
    return joined, out


def _slice(traj: Dict[Any, Any], r0: int, r1: int) -> Dict[Any, Any]:
    return {key: _tmap(lambda a: a[r0:r1, ...], v) for key, v in traj.items()}


# ------------------------------------------------------------- pair tiles
def _pair_tile(layers: Sequence[LayerImpl], plan: ImagePlan, x1: Any, x2: Any,
               t1: Dict[Any, Any], t2: Dict[Any, Any], xp: Any, want_ntk: bool,
               diag_offset: Optional[int] = None,
               patterns: Tuple[Any, Any] = (None, None)) -> Tuple[Any, Any]:
    layout = plan.layouts[0]
    k0 = _k0_diag(x1, x2, xp) if layout == DIAG else _k0_full(x1, x2, xp)
    state = KernelState(nngp=k0, ntk=0.0 if want_ntk else None, var1=t1[(0,)], var2=t2[(0,)],
                        width=int(x1.shape[-1]), spatial=plan.hw[0],
                        diagonal_spatial=layout == DIAG, diag_offset=diag_offset,
                        pattern1=patterns[0], pattern2=patterns[1])

    def step(key: Tuple[int, ...], layer: Optional[LayerImpl], st: Any) -> Any:
        if layer is not None:
            st = _tmap(lambda t, v1, v2: t.replace(var1=v1, var2=v2), st, t1[key], t2[key])
            if getattr(layer, "needs_self_cov", False):
                st = st.replace(self_cov1=t1[_cov_key(key)], self_cov2=t2[_cov_key(key)])
            st = layer.kernel(st, xp)
        if len(key) == 1 and plan.to_diag_after[key[0]]:
            st = _tmap(lambda t: _to_diag(t, xp), st)
        return st

    state = walk(layers, state, xp, step)
    ntk = state.ntk
    if want_ntk and not hasattr(ntk, "shape"):
        ntk = xp.zeros_like(state.nngp) + ntk
    return state.nngp, ntk


def tile_shape(n1: int, n2: int, pair_bytes: int, budget: int, symmetric: bool) -> Tuple[int, int]:
    """Tile ``(rows, cols)`` whose temporaries fit ``budget`` bytes."""
    pairs = max(1, budget // max(1, pair_bytes))
    if symmetric:
        b = int(max(1, min(n1, math.isqrt(pairs))))
        return b, b
    cols = int(max(1, min(n2, pairs)))
    rows = int(max(1, min(n1, pairs // cols)))
    return rows, cols


def image_tile(plan: ImagePlan, n1: int, n2: int, value_bytes: int, budget: int,
               symmetric: bool) -> Tuple[int, int]:
    """Tile of the reference image path for an ``n1 × n2`` call of ``plan``."""
    pair_bytes = plan.pair_entries * value_bytes * IMAGE_TEMPORARIES
    return tile_shape(n1, n2, pair_bytes, budget, symmetric)


def _transpose(a: Any, xp: Any) -> Any:
    return xp.permute_dims(a, (1, 0))


def _mirror_upper(a: Any, xp: Any) -> Any:
    """Copy the upper triangle of a square tile onto its lower triangle.

    Array-API and functional (any namespace, returns a new tile); the numba
    ``cpu_flat._mirror_upper`` works in place on a whole NumPy Gram in
    parallel cache tiles. Kept apart because they differ in both respects."""
    n = a.shape[0]
    rows = xp.reshape(xp.arange(n), (n, 1))
    cols = xp.reshape(xp.arange(n), (1, n))
    return xp.where(rows <= cols, a, _transpose(a, xp))


def _rows(p: Any, r0: int, r1: int) -> Any:
    return None if p is None else p[r0:r1, ...]


def evaluate_image(layers: List[LayerImpl], x1: Any, x2: Optional[Any], xp: Any, *, want_ntk: bool,
                   memory_budget: int, tile: Optional[Tuple[int, int]] = None,
                   patterns: Tuple[Any, Any] = (None, None)) -> Dict[str, Any]:
    """NNGP/NTK of an image network for all pairs of rows of x1 and x2
    (the reference path; ``engine.select_path`` decides when it runs).
    ``patterns``: the graph patterns of x1's and x2's rows (``Aggregate``), or Nones."""
    plan = plan_image_net(layers, tuple(x1.shape[1:]))
    symmetric = x2 is None
    x2f = x1 if symmetric else x2
    p1 = patterns[0]
    p2 = p1 if symmetric else patterns[1]
    n1, n2 = x1.shape[0], x2f.shape[0]
    traj1, _ = self_trajectory(layers, plan, x1, xp, memory_budget, pattern=p1)
    traj2 = traj1 if symmetric else self_trajectory(layers, plan, x2f, xp, memory_budget,
                                                    pattern=p2)[0]
    rb, cb = tile or image_tile(plan, n1, n2, itemsize(x1), memory_budget, symmetric)
    if symmetric:
        cb = rb
    rows_out: Dict[str, List[Any]] = {"nngp": [], "ntk": []}
    done: Dict[Tuple[int, int], Tuple[Any, Any]] = {}
    for r0 in range(0, n1, rb):
        r1 = min(n1, r0 + rb)
        parts: Dict[str, List[Any]] = {"nngp": [], "ntk": []}
        for c0 in range(0, n2, cb):
            c1 = min(n2, c0 + cb)
            if symmetric and c0 < r0:
                k, t = done.pop((c0, r0))
                k = _transpose(k, xp)
                t = None if t is None else _transpose(t, xp)
            else:
                k, t = _pair_tile(layers, plan, x1[r0:r1, ...], x2f[c0:c1, ...],
                                  _slice(traj1, r0, r1), _slice(traj2, c0, c1), xp, want_ntk,
                                  0 if symmetric and c0 == r0 else None,
                                  (_rows(p1, r0, r1), _rows(p2, c0, c1)))
                if symmetric and c0 == r0:
                    k = _mirror_upper(k, xp)
                    t = None if t is None else _mirror_upper(t, xp)
                elif symmetric:
                    done[(r0, c0)] = (k, t)
            parts["nngp"].append(k)
            if want_ntk:
                parts["ntk"].append(t)
        rows_out["nngp"].append(concat(parts["nngp"], xp, axis=1))
        if want_ntk:
            rows_out["ntk"].append(concat(parts["ntk"], xp, axis=1))
    out = {"nngp": concat(rows_out["nngp"], xp)}
    if want_ntk:
        out["ntk"] = concat(rows_out["ntk"], xp)
    return out


def evaluate_image_diagonal(layers: List[LayerImpl], x: Any, xp: Any, *, want_ntk: bool,
                            memory_budget: int, pattern: Any = None) -> Dict[str, Any]:
    """``k(x_i, x_i)`` for every image (the self-pair recursion, O(n))."""
    plan = plan_image_net(layers, tuple(x.shape[1:]))
    _, out = self_trajectory(layers, plan, x, xp, memory_budget, want_ntk=want_ntk,
                             pattern=pattern)
    if want_ntk and not hasattr(out["ntk"], "shape"):
        out["ntk"] = xp.zeros_like(out["nngp"]) + out["ntk"]
    return out


# ------------------------------------------------------------- cost model
def pair_entries(layers: Sequence[LayerImpl], input_shape: Tuple[int, ...]) -> int:
    """Largest covariance (values per image pair) any layer sees."""
    return plan_image_net(layers, input_shape).pair_entries


def cost_per_entry(layers: Sequence[LayerImpl], input_shape: Tuple[int, ...]) -> Dict[str, float]:
    """Flops and bytes per kernel entry (one image pair) of the reference path.

    ``flops``: the reference recursion's arithmetic (first Gram of pixels plus
    every layer on the covariance it sees), also given as ``flops_reference``
    (``engine.cost_per_entry`` replaces ``flops`` by the slab kernel's count
    where that path runs). ``bytes``: temporaries of the reference path per
    entry, in units of the itemsize (multiply by 4 or 8), like the flat model;
    ``pair_entries``: covariance values per pair.
    """
    plan = plan_image_net(layers, input_shape)
    h, w, c = plan.input_shape
    flops = 2.0 * c * plan.entries(0)
    for l, layer in enumerate(layers):
        if plan.layouts[l] == FLAT:
            shape: Tuple[int, ...] = ()
        elif plan.layouts[l] == FULL:
            hh, ww = plan.hw[l]
            shape = (hh, hh, ww, ww)
        else:
            shape = plan.hw[l]
        flops += layer.flops_per_entry(shape)
    out = {"flops": float(flops), "flops_reference": float(flops),
           "bytes": float(plan.pair_entries * IMAGE_TEMPORARIES),
           "pair_entries": float(plan.pair_entries)}
    return out
