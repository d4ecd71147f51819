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
kernels themselves are in ``conv_slab``; groups are shared by GIL-free
worker threads.

AvgPool (window k, stride s, padding lo) couples slabs: the pooled slab δ'
at P averages the input pairs (sP + a − lo, sP + sδ' + a' − lo), i.e. input
slabs δ = sδ' + (a' − a). So the layer program is cut into *stages* at the
AvgPools. Walking back from the end (Flatten: δ = 0; GlobalAvgPool: all
offsets), each stage needs at its end the offsets sδ' + e, |e| < k, of the
offsets δ' the next stage needs (Myrtle: all offsets before the last pools).
Per group of pairs, every slab of a stage runs through the stage's layers
and adds its entries to the window sums of the next stage's slabs (kept per
thread: about the full pooled pixel-pair covariance, see
``MAX_SCRATCH_BYTES``); the next stage divides them by the window sizes
and goes on. Activations after a pool need each image's pooled per-pixel
variance: a first pass over the self pairs (i, i) takes it from the pair's
own δ = 0 slab (computed first in every stage) before the other slabs use it.

Supported: Conv (any filter and strides; SAME/VALID, or CIRCULAR everywhere
with strides dividing the image), Dense on images, ReLU family
(Relu/LeakyRelu/Abs/ABRelu), Erf, Identity, AvgPool (SAME/VALID, any window
and strides, ``normalize_edges``; not with CIRCULAR padding anywhere),
ending in GlobalAvgPool or Flatten, then any flat layers (run by the
reference code on the ``n1 × n2`` result). Other image networks (Gelu/Sin on
images, CIRCULAR pooling) use the array-API path; the CuPy kernel has no
AvgPool. Arithmetic is in the input dtype. Parity with the reference path is
tested in ``tests/test_conv_fast.py``.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import numba
import numpy as np

from ...errors import SpecError
from .slab_kernels import (ATAN_R, C_FH, C_FW, C_KIND, C_SH, C_STD, C_SW, C_VOFF, K_ABRELU,
    K_AFFINE, K_CONV, K_ERF, K_IDENT, K_POOL, _CONSTS, _NCOLS, _abrelu_row, _erf_row, _slab_pairs)
from ..layers.activations import (PARALLEL_TOLERANCE_EPS, ABReluImpl, AbsImpl, Elementwise,
    ErfImpl, IdentityImpl, LeakyReluImpl, ReluImpl)
from ..layers.conv import ConvImpl
from .reference_image import ImagePlan
from ..layers.dense import DenseImpl
from ..layers.base import LayerImpl
from ..layers.pooling import AvgPoolImpl, FlattenImpl, GlobalAvgPoolImpl
from ..state import KernelState

_ACT_KINDS = {ReluImpl: K_ABRELU, LeakyReluImpl: K_ABRELU, AbsImpl: K_ABRELU,
              ABReluImpl: K_ABRELU, ErfImpl: K_ERF, IdentityImpl: K_IDENT}

#: Image pairs processed together (one per lane of every inner loop): at
#: least LANES_MIN, and as many more (up to LANES_MAX) as keep a thread's
#: scratch within SCRATCH_BYTES. Longer lanes amortise the per-row loop
#: overhead (measured: 64 lanes ≈ 1.3× faster than 16 on 8×8 images); every
#: thread still gets ≥ 4 groups (see ``_run_pairs``).
LANES_MIN, LANES_MAX = 8, 64
SCRATCH_BYTES = 8 << 20
#: Networks with AvgPool keep the window sums of every pooled stage per
#: thread (about the full pixel-pair covariance after the first pool:
#: (H/2)²(W/2)² values per lane and Σ/Θ, ~9 MB at 32×32 with 8 lanes);
#: larger ones use the reference path.
MAX_SCRATCH_BYTES = 512 << 20


# ------------------------------------------------------------- planning
def _image_end(layers: List[LayerImpl], plan: ImagePlan) -> int:
    """Index of the GlobalAvgPool/Flatten that makes the state flat."""
    for l in range(len(layers)):
        if plan.hw[l + 1] is None:
            return l
    raise AssertionError("image plan without a flat output")  # pragma: no cover


def network_supported(layers: List[LayerImpl], plan: ImagePlan, pooling: bool = True) -> bool:
    """True for the networks the slab formulation covers (any backend;
    ``pooling=False``: without AvgPool, for backends that lack it)."""
    end = _image_end(layers, plan)
    if not isinstance(layers[end], (GlobalAvgPoolImpl, FlattenImpl)):
        return False
    convs = [layer for layer in layers[:end] if isinstance(layer, ConvImpl)]
    pools = [layer for layer in layers[:end] if isinstance(layer, AvgPoolImpl)]
    for layer in layers[:end]:
        if not (isinstance(layer, (ConvImpl, DenseImpl, AvgPoolImpl))
                or type(layer) in _ACT_KINDS):
            return False
    if pools:
        if not pooling or any(c.padding == "CIRCULAR" for c in convs + pools):
            return False
        prog = _Program(layers, plan, np.dtype(np.float64))
        return prog.scratch_per_lane * LANES_MIN <= MAX_SCRATCH_BYTES
    circular = [c.padding == "CIRCULAR" for c in convs]
    if any(circular):
        if not all(circular):
            return False
        for l, layer in enumerate(layers[:end]):
            if isinstance(layer, ConvImpl):
                h, w = plan.hw[l]
                if h % layer.strides[0] or w % layer.strides[1]:
                    return False
    return True


def _window_counts(pool: AvgPoolImpl, axis: int, n_in: int, n_out: int, lo: int) -> np.ndarray:
    """Divisor of each output position of ``pool`` along ``axis``: the
    window size, or with ``normalize_edges`` (SAME) the in-image part."""
    k, s = pool.window[axis], pool.strides[axis]
    if not (pool.params["normalize_edges"] and pool.padding == "SAME"):
        return np.full(n_out, float(k))
    start = np.arange(n_out) * s - lo
    return (np.minimum(start + k, n_in) - np.maximum(start, 0)).astype(np.float64)


def supports(layers: List[LayerImpl], plan: ImagePlan, x1: Any, xp: Any) -> bool:
    """True when the compiled CPU slab path handles this network and input."""
    if not isinstance(x1, np.ndarray) or x1.dtype not in (np.float32, np.float64):
        return False
    return network_supported(layers, plan)


class _Program:
    """The image part of a network encoded for ``_slab_pairs``."""

    def __init__(self, layers: List[LayerImpl], plan: ImagePlan, dtype: np.dtype):
        end = _image_end(layers, plan)
        self.end = end
        self.flatten = isinstance(layers[end], FlattenImpl)
        img = layers[:end]
        n = len(img)
        self.ops = np.zeros((n, _NCOLS), np.int64)
        self.fpar = np.zeros((n, 4), np.float64)
        self.sdim = np.array([plan.hw[l] for l in range(n + 1)], np.int64).reshape(n + 1, 2)
        self.spad = np.zeros((n + 1, 4), np.int64)
        self.circ = any(isinstance(x, ConvImpl) and x.padding == "CIRCULAR" for x in img)
        self.act_layers: List[int] = []
        width: Optional[int] = plan.input_shape[2]
        voff = 0
        for l, layer in enumerate(img):
            p = layer.params
            if isinstance(layer, (ConvImpl, DenseImpl)):
                fh, fw = layer.filter if isinstance(layer, ConvImpl) else (1, 1)
                std = p["parameterization"] == "standard"
                if std and width is None:
                    what = "Conv" if isinstance(layer, ConvImpl) else "Dense"
                    raise SpecError(
                        f'{what}(parameterization="standard") needs the input width; give '
                        "out_dim (out_chan) to the layer before it")
                b2 = (p["b_std"] or 0.0) ** 2
                w2 = p["W_std"] ** 2
                self.fpar[l] = (w2 / (fh * fw), b2, float(width or 0),
                                0.0 if p["b_std"] is None else 1.0)
                self.ops[l, C_STD] = int(std)
                if isinstance(layer, ConvImpl):
                    self.ops[l, [C_KIND, C_FH, C_FW, C_SH, C_SW]] = (
                        K_CONV, fh, fw, layer.strides[0], layer.strides[1])
                    width = p["out_chan"]
                else:
                    self.ops[l, C_KIND] = K_AFFINE
                    width = p["out_dim"]
            elif isinstance(layer, AvgPoolImpl):
                self.ops[l, [C_KIND, C_FH, C_FW, C_SH, C_SW]] = (
                    K_POOL, layer.window[0], layer.window[1], layer.strides[0], layer.strides[1])
            else:
                kind = _ACT_KINDS[type(layer)]
                self.ops[l, C_KIND] = kind
                self.ops[l, C_VOFF] = voff
                h, w = plan.hw[l]
                voff += h * w
                self.act_layers.append(l)
                if kind == K_ABRELU:
                    a, b = layer.slopes()
                    self.fpar[l] = ((a * a + b * b) / 2.0, (a - b) ** 2 / (2.0 * math.pi), 0.0, 0.0)
                elif kind == K_ERF:
                    self.fpar[l] = (p["a"], p["b"], p["c"], 0.0)
        self.nvar = voff
        hf, wf = plan.hw[end]
        self.width_out = None if width is None else (width * hf * wf if self.flatten else width)
        # buffer padding of each stage = the pads of the next Conv
        for s in range(n + 1):
            h, w = plan.hw[s]
            pads = (0, 0, 0, 0)
            for o in range(s, n):
                if isinstance(img[o], AvgPoolImpl):
                    break
                if isinstance(img[o], ConvImpl):
                    (_, lo_h, hi_h), (_, lo_w, hi_w) = img[o].geometry(plan.hw[o])
                    pads = (lo_h, hi_h, lo_w, hi_w)
                    break
            self.spad[s] = (pads[0], pads[2], h + pads[0] + pads[1], w + pads[2] + pads[3])
        # slab offsets δ of every layer, from the final ones
        if self.flatten:
            finals = [(0, 0)]
            self.count = float(hf * wf)
        elif self.circ:
            finals = [(a, b) for a in range(hf) for b in range(wf)]
            self.count = float(hf * hf * wf * wf)
        else:
            finals = [(a, b) for a in range(-(hf - 1), hf) for b in range(-(wf - 1), wf)]
            self.count = float(hf * hf * wf * wf)
        self._stages(img, plan, finals)
        maxbuf = int((self.spad[:, 2] * self.spad[:, 3]).max())
        maxt = max([int(self.sdim[o + 1, 0] * self.spad[o, 3]) for o in range(n)
                    if self.ops[o, C_KIND] == K_CONV] or [1])
        per_lane = (4 * maxbuf + 2 * maxt + 2 * plan.input_shape[2] * int(self.sdim[0].prod())
                    + 4 * self.nvar + 2 * self.accsize) * np.dtype(dtype).itemsize
        self.scratch_per_lane = per_lane
        lanes = LANES_MIN
        while lanes < LANES_MAX and 2 * lanes * per_lane <= SCRATCH_BYTES:
            lanes *= 2
        self.lanes = lanes
        eps = float(np.finfo(dtype).eps)
        self.consts = np.array(_CONSTS + (PARALLEL_TOLERANCE_EPS * eps, float(plan.input_shape[2])),
                               dtype=dtype)
        self.fpar = self.fpar.astype(dtype)
        self.pinv = self.pinv.astype(dtype)

    def _stages(self, img: List[LayerImpl], plan: ImagePlan,
                finals: List[Tuple[int, int]]) -> None:
        """Stages between AvgPools and their slabs, from the last stage back.

        A stage needs at its end (before the AvgPool that closes it) every
        offset sδ' + e (|e| < window) of the offsets δ' the next stage needs;
        Conv strides multiply offsets inside a stage. ``deltas[d, o]``: slab
        d's offset entering op o (only the ops of d's stage are set).
        Without AvgPool: one stage, slabs in the order of ``finals``; with:
        δ = 0 first in every stage (see ``selfvar`` in ``conv_slab._group``).
        """
        n = len(img)
        pool_ops = [o for o in range(n) if isinstance(img[o], AvgPoolImpl)]
        firsts = [0] + [o + 1 for o in pool_ops]
        lasts = pool_ops + [n]
        nst = len(firsts)
        self.pooled = nst > 1
        per_stage: List[np.ndarray] = [np.zeros((0, n + 1, 2), np.int64)] * nst
        need = finals
        for st in range(nst - 1, -1, -1):
            o0, o1 = firsts[st], lasts[st]
            if self.pooled:
                need = sorted(set(need), key=lambda ab: (ab != (0, 0), ab))
            rows = np.zeros((len(need), n + 1, 2), np.int64)
            for i, (a, b) in enumerate(need):
                rows[i, o1] = (a, b)
                for o in range(o1 - 1, o0 - 1, -1):
                    if isinstance(img[o], ConvImpl):
                        a, b = a * img[o].strides[0], b * img[o].strides[1]
                        if self.circ:
                            a, b = a % plan.hw[o][0], b % plan.hw[o][1]
                    rows[i, o] = (a, b)
            per_stage[st] = rows
            if st:
                pool = img[o0 - 1]
                (kh, kw), (sh, sw) = pool.window, pool.strides
                h, w = plan.hw[o0 - 1]
                need = [(sh * a + e, sw * b + f) for a, b in rows[:, o0].tolist()
                        for e in range(1 - kh, kh) for f in range(1 - kw, kw)
                        if abs(sh * a + e) < h and abs(sw * b + f) < w]
        self.deltas = np.concatenate(per_stage)
        bounds = np.cumsum([0] + [len(r) for r in per_stage])
        self.stages = np.array([(firsts[st], lasts[st], bounds[st], bounds[st + 1])
                                for st in range(nst)], np.int64)
        # pooled stages: window sums stored compactly (valid part of each slab)
        R = max(max(hw) for hw in plan.hw if hw is not None)
        self.lut = np.full((nst, 2 * R + 1, 2 * R + 1), -1, np.int64)
        self.accoff = np.zeros(self.deltas.shape[0], np.int64)
        self.pools = np.zeros((nst, 2), np.int64)
        self.pinv = np.ones((nst, 2, R), np.float64)
        size = 0
        for st in range(1, nst):
            o0 = firsts[st]
            pool = img[o0 - 1]
            ho, wo = plan.hw[o0]
            (_, lo_h, _), (_, lo_w, _) = pool.geometry(plan.hw[o0 - 1])
            self.pools[st] = (lo_h, lo_w)
            for ax, (m, lo) in enumerate(((ho, lo_h), (wo, lo_w))):
                self.pinv[st, ax, :m] = 1.0 / _window_counts(pool, ax, plan.hw[o0 - 1][ax], m, lo)
            for d in range(bounds[st], bounds[st + 1]):
                a, b = (int(v) for v in self.deltas[d, o0])
                if abs(a) < ho and abs(b) < wo:
                    self.lut[st, a + R, b + R] = d
                self.accoff[d] = size
                size += max(0, ho - abs(a)) * max(0, wo - abs(b))
        self.accsize = size


def _module(x: Any) -> Any:
    """The raw array module of ``x`` (numpy or cupy) for allocation/indexing."""
    if isinstance(x, np.ndarray):
        return np
    import cupy  # noqa: PLC0415

    return cupy


def _variances(layers: List[LayerImpl], prog: _Program, plan: ImagePlan, x: Any,
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


def _self_pass(prog: _Program, x: np.ndarray, want_ntk: bool, memory_budget: int
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
        k, t = _run_pairs(prog, x, x, dummy, dummy, idx, idx, want_ntk, out_v)
        ks.append(k)
        ts.append(t)
        vs.append(out_v)
    return np.concatenate(ks), np.concatenate(ts), np.concatenate(vs)


def n_threads() -> int:
    """Worker threads of the compiled path (numba's thread count)."""
    return max(1, int(numba.get_num_threads()))


def _run_pairs(prog: _Program, x1: np.ndarray, x2: np.ndarray, v1: np.ndarray, v2: np.ndarray,
               pi: np.ndarray, pj: np.ndarray, want_ntk: bool,
               out_v: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Pooled Σ and Θ of the pairs ``(pi[p], pj[p])``; with ``out_v``
    (``(len(pi), nvar)``) the pairs are self pairs (i, i) whose activation
    variances the kernel computes itself and writes there (``v1``/``v2``:
    only their width is used)."""
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
             out_v)
    threads = min(threads, ngroups)
    if threads <= 1:
        _slab_pairs(*args, 0, ngroups, *extra)
        return out_k, out_t
    # Groups handed out in small interleaved chunks so slow and fast threads
    # finish together (GIL released inside the compiled loop).
    step = max(1, min(8, ngroups // (4 * threads)))
    chunks = [(g, min(ngroups, g + step)) for g in range(0, ngroups, step)]
    with _pool(threads) as pool:
        list(pool.map(lambda c: _slab_pairs(*args, c[0], c[1], *extra), chunks))
    return out_k, out_t


def _pool(threads: int):
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

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


def _tail(layers: List[LayerImpl], prog: _Program, k: Any, t: Optional[Any], var1: Any,
          var2: Optional[Any], diagonal_batch: bool, want_ntk: bool, xp: Any) -> Dict[str, Any]:
    """The flat layers after GlobalAvgPool/Flatten (reference code)."""
    state = KernelState(nngp=k, ntk=t if want_ntk else None, var1=var1, var2=var2,
                        diagonal_batch=diagonal_batch, width=prog.width_out)
    for layer in layers[prog.end + 1:]:
        state = layer.kernel(state, xp)
    out = {"nngp": state.nngp}
    if want_ntk:
        ntk = state.ntk
        out["ntk"] = ntk if hasattr(ntk, "shape") else xp.zeros_like(state.nngp) + ntk
    return out


def _needs_tail_variances(layers: List[LayerImpl], prog: _Program) -> bool:
    return any(isinstance(layer, Elementwise) for layer in layers[prog.end + 1:])


def evaluate(layers: List[LayerImpl], plan: ImagePlan, x1: Any, x2: Optional[Any], *,
             want_ntk: bool, memory_budget: int, xp: Any = None,
             run_pairs: Any = None) -> Dict[str, Any]:
    """All pairs of x1 and x2 (x2=None: x1, upper triangle mirrored).

    ``run_pairs(prog, x1, x2, v1, v2, pi, pj, want_ntk) -> (k, t)`` computes
    the pooled entries of a list of pairs (default: the numba kernel; the
    CuPy path passes its CUDA kernel); ``xp`` is the namespace of the inputs.
    """
    xp = np if xp is None else xp
    run_pairs = _run_pairs if run_pairs is None else run_pairs
    mod = _module(x1)
    symmetric = x2 is None
    x1 = mod.ascontiguousarray(x1)
    x2f = x1 if symmetric else mod.ascontiguousarray(x2)
    prog = _Program(layers, plan, np.dtype(str(x1.dtype)))
    if prog.pooled:   # (NumPy only: conv_cupy refuses AvgPool)
        v1 = _self_pass(prog, x1, False, memory_budget)[2]
        v2 = v1 if symmetric else _self_pass(prog, x2f, False, memory_budget)[2]
    else:
        v1 = _variances(layers, prog, plan, x1, xp)
        v2 = v1 if symmetric else _variances(layers, prog, plan, x2f, xp)
    n1, n2 = x1.shape[0], x2f.shape[0]
    k = mod.empty((n1, n2), x1.dtype)
    t = mod.empty((n1, n2), x1.dtype) if want_ntk else None
    chunk = int(max(LANES_MAX, min(CHUNK_PAIRS, memory_budget // 64)))
    for pi, pj in _pair_chunks(n1, n2, symmetric, chunk):
        pi, pj = mod.asarray(pi), mod.asarray(pj)
        ok, ot = run_pairs(prog, x1, x2f, v1, v2, pi, pj, want_ntk)
        k[pi, pj] = ok
        if symmetric:
            k[pj, pi] = ok
        if want_ntk:
            t[pi, pj] = ot
            if symmetric:
                t[pj, pi] = ot
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
    return _tail(layers, prog, k, t, tail_var1, tail_var2, False, want_ntk, xp)


def evaluate_diagonal(layers: List[LayerImpl], plan: ImagePlan, x: Any, *, want_ntk: bool,
                      memory_budget: int, xp: Any = None, run_pairs: Any = None) -> Dict[str, Any]:
    """``k(x_i, x_i)`` for every image."""
    xp = np if xp is None else xp
    run_pairs = _run_pairs if run_pairs is None else run_pairs
    mod = _module(x)
    x = mod.ascontiguousarray(x)
    prog = _Program(layers, plan, np.dtype(str(x.dtype)))
    if prog.pooled:
        k, t, _ = _self_pass(prog, x, want_ntk, memory_budget)
        return _tail(layers, prog, k, t, k.copy(), None, True, want_ntk, xp)
    v = _variances(layers, prog, plan, x, xp)
    idx = mod.arange(x.shape[0], dtype=mod.int64)
    k, t = run_pairs(prog, x, x, v, v, idx, idx, want_ntk)
    return _tail(layers, prog, k, t, k.copy(), None, True, want_ntk, xp)


def flops_per_pair(layers: List[LayerImpl], plan: ImagePlan) -> float:
    """Arithmetic of the slab kernel per image pair (sqrt and divide count 1).

    Per slab entry: Conv (fh + fw − 2 adds, 2-flop affine; twice with the
    NTK, plus 2 for Θ's affine), ReLU family 37 (11-term polynomial, angle
    selection, Θ·K̇), Erf 45, Dense on images 5; K0 costs 2C + 1. AvgPool:
    2 adds (Σ, Θ) per input entry and window it falls in, and 6 (divisors)
    per pooled entry.
    """
    prog = _Program(layers, plan, np.dtype(np.float64))
    total = 0.0
    n = prog.ops.shape[0]
    for st, (o0, o1, d0, d1) in enumerate(prog.stages.tolist()):
        for d in range(d0, d1):
            def entries(s):
                h, w = prog.sdim[s]
                a, b = prog.deltas[d, s]
                if prog.circ:
                    return h * w
                return max(0, h - abs(a)) * max(0, w - abs(b))
            total += (2 * plan.input_shape[2] + 1) * entries(0) if st == 0 else 6 * entries(o0)
            for o in range(o0, o1):
                kind = prog.ops[o, C_KIND]
                if kind == K_CONV:
                    fh, fw = prog.ops[o, C_FH], prog.ops[o, C_FW]
                    total += entries(o + 1) * (2 * (fh + fw - 2) + 6)
                elif kind == K_ABRELU:
                    total += entries(o) * 37
                elif kind == K_ERF:
                    total += entries(o) * 45
                elif kind == K_AFFINE:
                    total += entries(o) * 5
            if o1 == n:
                total += 2 * entries(n)
            else:
                windows = (prog.ops[o1, C_FH] * prog.ops[o1, C_FW]
                           / (prog.ops[o1, C_SH] * prog.ops[o1, C_SW])) ** 2
                total += 2 * entries(o1) * windows
    return total
