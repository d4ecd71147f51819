"""Compiled CPU path for convolutional kernels (numba): diagonal slabs.

Why it is fast. A stride-``s`` Conv maps the pixel pair ``(P, P + δ)`` to
input pairs ``(sP + d, sP + sδ + d)``: every pair it reads has offset ``sδ``.
So the pixel-pair covariance ``K[h, h', w, w']`` splits into independent
*slabs* ``S_δ[h, w] = K[h, h + δh, w, w + δw]`` (one 2-D image per pixel
offset δ), and a stack of Conv / activation / Dense layers acts on each slab
separately: a 2-D box stencil on an ``H × W`` array plus an elementwise
closed form. ``GlobalAvgPool`` sums all slabs; ``Flatten`` needs only
``δ = 0`` (the diagonal). A slab is a few KiB, so the whole recursion of a
slab runs in L1/L2 cache instead of streaming ``H²W²``-sized arrays through
memory, and every slab op is a short fixed-width loop.

SIMD: a group of L image pairs (8–64) rides in the lanes of every inner
loop (``buf[position · L + lane]``), so a slab row of W positions is one
contiguous loop of W·L values that vectorises without gathers, whatever the
image size. A 3-wide stride-1 Conv and the ReLU-family activation after it
run in one fused row loop. The activation is scale-free (no division by the
norm) and its angle branch-free: a half-angle reduction and an 11-term
polynomial for ``atan`` on ``[0, tan(π/8)]`` (numba here has no SVML, so a
libm ``atan2`` per entry would not vectorise); Erf uses the same atan. The
kernels themselves are in ``slab_kernels`` (driver), ``slab_ops``, ``slab_conv`` and ``slab_pool``; groups are shared by GIL-free
worker threads.

The encoding of a network (``Program``), what the slab paths support and the
flop count live in ``slab_program``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Tuple

import numba
import numpy as np

from .reference_image import ImagePlan
from .slab_kernels import slab_pairs
from .slab_program import LANES_MAX, LANES_MIN, Program
from ..layers.base import LayerImpl
from ..state import KernelState


def _module(x: Any) -> Any:
    """The raw array module of ``x`` (numpy or cupy) for allocation/indexing."""
    if isinstance(x, np.ndarray):
        return np
    import cupy  # noqa: PLC0415 (optional dependency)

    return cupy


def _variances(layers: List[LayerImpl], prog: Program, plan: ImagePlan, x: Any,
               xp: Any = None) -> Any:
    """Per-pixel self-variance entering every activation, ``(n, nvar)``:
    the diagonal-only self recursion (exact without pooling), run by the
    reference layer code on namespace ``xp``."""
    xp = np if xp is None else xp
    mod = _module(x)
    n = x.shape[0]
    out = mod.empty((n, max(prog.nvar, 1)), x.dtype)
    var = xp.sum(x * x, axis=-1) / x.shape[-1]
    state = KernelState(nngp=var, ntk=None, var1=var, var2=None, diagonal_batch=True,
                        width=int(x.shape[-1]), spatial=plan.hw[0], diagonal_spatial=True)
    voff = 0
    for l in range(prog.end):
        if l in prog.act_layers:
            h, w = plan.hw[l]
            out[:, voff:voff + h * w] = xp.reshape(state.var1, (n, h * w))
            voff += h * w
        state = layers[l].kernel(state, xp)   # (Θ is not tracked here: widths unused)
        state = state.replace(var1=state.nngp)
    return out


def _self_pass(prog: Program, x: np.ndarray, want_ntk: bool, memory_budget: int
               ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``k(x_i, x_i)``, ``Θ(x_i, x_i)`` and the activation variances ``(n,
    nvar)`` of every image, by the compiled kernel on the self pairs (after
    an AvgPool the per-pixel variance needs the image's full pooled
    self-covariance, which the self pair's own slabs provide)."""
    n = x.shape[0]
    width = max(prog.nvar, 1)
    ks, ts, vs = [], [], []
    step = int(max(LANES_MAX, min(CHUNK_PAIRS, memory_budget // 64)))
    for r0 in range(0, n, step):
        idx = np.arange(r0, min(n, r0 + step), dtype=np.int64)
        out_v = np.zeros((idx.shape[0], width), x.dtype)
        dummy = np.empty((1, width), x.dtype)
        k, t = _run_pairs(prog, x, x, dummy, dummy, idx, idx, want_ntk, out_v, same=True)
        ks.append(k)
        ts.append(t)
        vs.append(out_v)
    return np.concatenate(ks), np.concatenate(ts), np.concatenate(vs)


def n_threads() -> int:
    """Worker threads of the compiled path (numba's thread count)."""
    return max(1, int(numba.get_num_threads()))


def _run_pairs(prog: Program, x1: np.ndarray, x2: np.ndarray, v1: np.ndarray, v2: np.ndarray,
               pi: np.ndarray, pj: np.ndarray, want_ntk: bool,
               out_v: Optional[np.ndarray] = None, same: bool = False
               ) -> Tuple[np.ndarray, np.ndarray]:
    """Pooled Σ and Θ of the pairs ``(pi[p], pj[p])``; with ``out_v``
    (``(len(pi), nvar)``) the pairs are self pairs (i, i) whose activation
    variances the kernel computes itself and writes there (``v1``/``v2``:
    only their width is used). ``same``: x2 is x1, so a pair (i, i) is one input
    twice (``Dropout(mode="train")`` scales those)."""
    out_k = np.empty(pi.shape[0], x1.dtype)
    out_t = np.empty(pi.shape[0], x1.dtype)
    selfvar = out_v is not None
    if out_v is None:
        out_v = np.empty((1, 1), x1.dtype)
    threads = n_threads()
    lanes = prog.lanes
    while lanes > LANES_MIN and pi.shape[0] < 4 * threads * lanes:
        lanes //= 2          # keep every thread busy (results do not depend on lanes)
    ngroups = -(-pi.shape[0] // lanes)
    args = (x1, x2, pi, pj, lanes, prog.ops, prog.fpar, prog.sdim, prog.spad, prog.deltas,
            v1, v2, prog.consts, x1.dtype.type(prog.count), prog.circ, want_ntk, out_k, out_t)
    extra = (prog.stages, prog.pools, prog.pinv, prog.lut, prog.accoff, prog.accsize, selfvar,
             out_v, prog.nslots, bool(same or selfvar))
    threads = min(threads, ngroups)
    if threads <= 1:
        slab_pairs(*args, 0, ngroups, *extra)
        return out_k, out_t
    # Groups handed out in small interleaved chunks so slow and fast threads
    # finish together (GIL released inside the compiled loop).
    step = max(1, min(8, ngroups // (4 * threads)))
    chunks = [(g, min(ngroups, g + step)) for g in range(0, ngroups, step)]
    with _pool(threads) as pool:
        list(pool.map(lambda c: slab_pairs(*args, c[0], c[1], *extra), chunks))
    return out_k, out_t


def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ntkscale-conv")


#: Image pairs per call of the compiled kernel (bounds the pair lists).
CHUNK_PAIRS = 1 << 16


def _pair_chunks(n1: int, n2: int, symmetric: bool, chunk: int):
    """Row blocks of pairs: ``(rows, pi, pj)`` with j ≥ i when symmetric."""
    r0 = 0
    while r0 < n1:
        r1, total = r0, 0
        while r1 < n1 and (total == 0 or total + (n2 - r1 if symmetric else n2) <= chunk):
            total += n2 - r1 if symmetric else n2
            r1 += 1
        rows = np.arange(r0, r1)
        if symmetric:
            counts = n2 - rows
            pi = np.repeat(rows, counts)
            starts = np.repeat(np.cumsum(counts) - counts, counts)
            pj = np.arange(total) - starts + pi
        else:
            pi = np.repeat(rows, n2)
            pj = np.tile(np.arange(n2), r1 - r0)
        yield pi.astype(np.int64), pj.astype(np.int64)
        r0 = r1


def _tail(layers: List[LayerImpl], prog: Program, k: Any, t: Optional[Any], var1: Any,
          var2: Optional[Any], diagonal_batch: bool, want_ntk: bool, xp: Any,
          symmetric: bool = False) -> Dict[str, Any]:
    """The flat layers after GlobalAvgPool/Flatten (reference code); ``symmetric``: x2 = x1,
    the state's entry (i, i) pairs an input with itself (``diag_offset=0``)."""
    state = KernelState(nngp=k, ntk=t if want_ntk else None, var1=var1, var2=var2,
                        diagonal_batch=diagonal_batch, width=prog.width_out,
                        symmetric=symmetric, diag_offset=0 if symmetric else None)
    for layer in layers[prog.end + 1:]:
        state = layer.kernel(state, xp)
    out = {"nngp": state.nngp}
    if want_ntk:
        ntk = state.ntk
        out["ntk"] = ntk if hasattr(ntk, "shape") else xp.zeros_like(state.nngp) + ntk
    return out


def _needs_tail_variances(layers: List[LayerImpl], prog: Program) -> bool:
    return any(layer.elementwise for layer in layers[prog.end + 1:])


def _pairs_fn(run_pairs: Any, symmetric: bool) -> Any:
    """The pair kernel: ``run_pairs`` (CUDA), or the numba one, told when a pair
    (i, i) is one input twice: in a symmetric call, and in the self-pair lists (``pi is
    pj``: the diagonal and tail variances); never between two inputs x1 and x2."""
    if run_pairs is not None:
        return run_pairs

    def run(prog, a, b, va, vb, pi, pj, want_ntk):
        return _run_pairs(prog, a, b, va, vb, pi, pj, want_ntk, same=symmetric or pi is pj)
    return run


def fill_pairs(run: Any, mod: Any, dtype: Any, n1: int, n2: int, symmetric: bool, memory_budget: int,
               want_ntk: bool) -> Tuple[Any, Any]:
    """The ``n1 × n2`` NNGP (and NTK) from ``run(pi, pj) -> (k, t)`` over chunks of pair
    lists sized from ``memory_budget``; a symmetric call computes the upper triangle and
    mirrors it (CPU and CUDA paths alike)."""
    k = mod.empty((n1, n2), dtype)
    t = mod.empty((n1, n2), dtype) if want_ntk else None
    chunk = int(max(LANES_MAX, min(CHUNK_PAIRS, memory_budget // 64)))
    for pi, pj in _pair_chunks(n1, n2, symmetric, chunk):
        pi, pj = mod.asarray(pi), mod.asarray(pj)
        put_pairs(k, t, pi, pj, *run(pi, pj), symmetric)
    return k, t


def put_pairs(k: Any, t: Any, pi: Any, pj: Any, ok: Any, ot: Any, symmetric: bool) -> None:
    """Write one chunk's entries ``ok`` (and ``ot`` when ``t`` is kept) at the pairs
    ``(pi, pj)``, and at their mirrors for a symmetric call."""
    for out, vals in ((k, ok), (t, ot)):
        if out is None:
            continue
        out[pi, pj] = vals
        if symmetric:
            out[pj, pi] = vals


def evaluate(layers: List[LayerImpl], plan: ImagePlan, x1: Any, x2: Optional[Any], *,
             want_ntk: bool, memory_budget: int, xp: Any = None,
             run_pairs: Any = None) -> Dict[str, Any]:
    """All pairs of x1 and x2 (x2=None: x1, upper triangle mirrored).

    ``run_pairs(prog, x1, x2, v1, v2, pi, pj, want_ntk) -> (k, t)`` computes
    the pooled entries of a list of pairs (default: the numba kernel; the
    CuPy path passes its CUDA kernel); ``xp`` is the namespace of the inputs.
    """
    xp = np if xp is None else xp
    mod = _module(x1)
    symmetric = x2 is None
    run_pairs = _pairs_fn(run_pairs, symmetric)
    x1 = mod.ascontiguousarray(x1)
    x2f = x1 if symmetric else mod.ascontiguousarray(x2)
    prog = Program(layers, plan, np.dtype(str(x1.dtype)))
    if prog.selfvar:   # (cuda_slab.evaluate has its own self pass)
        v1 = _self_pass(prog, x1, False, memory_budget)[2]
        v2 = v1 if symmetric else _self_pass(prog, x2f, False, memory_budget)[2]
    else:
        v1 = _variances(layers, prog, plan, x1, xp)
        v2 = v1 if symmetric else _variances(layers, prog, plan, x2f, xp)
    n1, n2 = x1.shape[0], x2f.shape[0]
    k, t = fill_pairs(lambda pi, pj: run_pairs(prog, x1, x2f, v1, v2, pi, pj, want_ntk), mod, x1.dtype,
                      n1, n2, symmetric, memory_budget, want_ntk)
    if _needs_tail_variances(layers, prog):
        idx1 = mod.arange(n1, dtype=mod.int64)
        tail_var1 = (k[idx1, idx1].copy() if symmetric
                     else run_pairs(prog, x1, x1, v1, v1, idx1, idx1, False)[0])
        idx2 = mod.arange(n2, dtype=mod.int64)
        tail_var2 = tail_var1 if symmetric else run_pairs(prog, x2f, x2f, v2, v2, idx2, idx2,
                                                          False)[0]
    else:
        tail_var1 = mod.zeros(n1, x1.dtype)
        tail_var2 = mod.zeros(n2, x1.dtype)
    return _tail(layers, prog, k, t, tail_var1, tail_var2, False, want_ntk, xp, symmetric)


def evaluate_diagonal(layers: List[LayerImpl], plan: ImagePlan, x: Any, *, want_ntk: bool,
                      memory_budget: int, xp: Any = None, run_pairs: Any = None) -> Dict[str, Any]:
    """``k(x_i, x_i)`` for every image."""
    xp = np if xp is None else xp
    run_pairs = _pairs_fn(run_pairs, True)
    mod = _module(x)
    x = mod.ascontiguousarray(x)
    prog = Program(layers, plan, np.dtype(str(x.dtype)))
    if prog.selfvar:
        k, t, _ = _self_pass(prog, x, want_ntk, memory_budget)
        return _tail(layers, prog, k, t, k.copy(), None, True, want_ntk, xp)
    v = _variances(layers, prog, plan, x, xp)
    idx = mod.arange(x.shape[0], dtype=mod.int64)
    k, t = run_pairs(prog, x, x, v, v, idx, idx, want_ntk)
    return _tail(layers, prog, k, t, k.copy(), None, True, want_ntk, xp)
