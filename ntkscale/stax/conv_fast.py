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

Supported: Conv (any filter and strides; SAME/VALID, or CIRCULAR everywhere
with strides dividing the image), Dense on images, ReLU family
(Relu/LeakyRelu/Abs/ABRelu), Erf, Identity, ending in GlobalAvgPool or
Flatten, then any flat layers (run by the reference code on the ``n1 × n2``
result). Other image networks (AvgPool, Gelu/Sin on images) use the
array-API path. Arithmetic is in the input dtype. Parity with the reference
path is tested in ``tests/test_conv_fast.py``.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import numba
import numpy as np

from ..errors import SpecError
from .conv_slab import (ATAN_R, C_FH, C_FW, C_KIND, C_SH, C_STD, C_SW, C_VOFF,  # noqa: F401
                        K_ABRELU, K_AFFINE, K_CONV, K_ERF, K_IDENT, _CONSTS, _NCOLS, _abrelu_row,
                        _erf_row, _slab_pairs)
from .activations import (PARALLEL_TOLERANCE_EPS, ABReluImpl, AbsImpl, Elementwise, ErfImpl,
                          IdentityImpl, LeakyReluImpl, ReluImpl)
from .conv import ConvImpl
from .conv_eval import ImagePlan
from .dense import DenseImpl
from .layer import LayerImpl
from .pooling import FlattenImpl, GlobalAvgPoolImpl
from .state import KernelState

_ACT_KINDS = {ReluImpl: K_ABRELU, LeakyReluImpl: K_ABRELU, AbsImpl: K_ABRELU,
              ABReluImpl: K_ABRELU, ErfImpl: K_ERF, IdentityImpl: K_IDENT}

#: Image pairs processed together (one per lane of every inner loop): at
#: least LANES_MIN, and as many more (up to LANES_MAX) as keep a thread's
#: scratch within SCRATCH_BYTES. Longer lanes amortise the per-row loop
#: overhead (measured: 64 lanes ≈ 1.3× faster than 16 on 8×8 images); every
#: thread still gets ≥ 4 groups (see ``_run_pairs``).
LANES_MIN, LANES_MAX = 8, 64
SCRATCH_BYTES = 8 << 20


# ------------------------------------------------------------- planning
def _image_end(layers: List[LayerImpl], plan: ImagePlan) -> int:
    """Index of the GlobalAvgPool/Flatten that makes the state flat."""
    for l in range(len(layers)):
        if plan.hw[l + 1] is None:
            return l
    raise AssertionError("image plan without a flat output")  # pragma: no cover


def network_supported(layers: List[LayerImpl], plan: ImagePlan) -> bool:
    """True for the networks the slab formulation covers (any backend)."""
    end = _image_end(layers, plan)
    if not isinstance(layers[end], (GlobalAvgPoolImpl, FlattenImpl)):
        return False
    convs = [layer for layer in layers[:end] if isinstance(layer, ConvImpl)]
    for layer in layers[:end]:
        if not (isinstance(layer, (ConvImpl, DenseImpl)) or type(layer) in _ACT_KINDS):
            return False
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
                if isinstance(img[o], ConvImpl):
                    (_, lo_h, hi_h), (_, lo_w, hi_w) = img[o].geometry(plan.hw[o])
                    pads = (lo_h, hi_h, lo_w, hi_w)
                    break
            self.spad[s] = (pads[0], pads[2], h + pads[0] + pads[1], w + pads[2] + pads[3])
        # slab offsets δ of every stage, from the final ones
        if self.flatten:
            finals = [(0, 0)]
            self.count = float(hf * wf)
        elif self.circ:
            finals = [(a, b) for a in range(hf) for b in range(wf)]
            self.count = float(hf * hf * wf * wf)
        else:
            finals = [(a, b) for a in range(-(hf - 1), hf) for b in range(-(wf - 1), wf)]
            self.count = float(hf * hf * wf * wf)
        self.deltas = np.zeros((len(finals), n + 1, 2), np.int64)
        for i, (a, b) in enumerate(finals):
            self.deltas[i, n] = (a, b)
            for o in range(n - 1, -1, -1):
                if isinstance(img[o], ConvImpl):
                    a, b = a * img[o].strides[0], b * img[o].strides[1]
                    if self.circ:
                        a, b = a % plan.hw[o][0], b % plan.hw[o][1]
                self.deltas[i, o] = (a, b)
        maxbuf = int((self.spad[:, 2] * self.spad[:, 3]).max())
        maxt = max([int(self.sdim[o + 1, 0] * self.spad[o, 3]) for o in range(n)
                    if self.ops[o, C_KIND] == K_CONV] or [1])
        per_lane = (4 * maxbuf + 2 * maxt + 2 * plan.input_shape[2] * int(self.sdim[0].prod())
                    + 4 * self.nvar) * np.dtype(dtype).itemsize
        lanes = LANES_MIN
        while lanes < LANES_MAX and 2 * lanes * per_lane <= SCRATCH_BYTES:
            lanes *= 2
        self.lanes = lanes
        eps = float(np.finfo(dtype).eps)
        self.consts = np.array(_CONSTS + (PARALLEL_TOLERANCE_EPS * eps, float(plan.input_shape[2])),
                               dtype=dtype)
        self.fpar = self.fpar.astype(dtype)


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


def n_threads() -> int:
    """Worker threads of the compiled path (numba's thread count)."""
    return max(1, int(numba.get_num_threads()))


def _run_pairs(prog: _Program, x1: np.ndarray, x2: np.ndarray, v1: np.ndarray, v2: np.ndarray,
               pi: np.ndarray, pj: np.ndarray, want_ntk: bool) -> Tuple[np.ndarray, np.ndarray]:
    out_k = np.empty(pi.shape[0], x1.dtype)
    out_t = np.empty(pi.shape[0], x1.dtype)
    threads = n_threads()
    lanes = prog.lanes
    while lanes > LANES_MIN and pi.shape[0] < 4 * threads * lanes:
        lanes //= 2          # keep every thread busy (results do not depend on lanes)
    ngroups = -(-pi.shape[0] // lanes)
    args = (x1, x2, pi, pj, lanes, prog.ops, prog.fpar, prog.sdim, prog.spad, prog.deltas,
            v1, v2, prog.consts, x1.dtype.type(prog.count), prog.circ, want_ntk, out_k, out_t)
    threads = min(threads, ngroups)
    if threads <= 1:
        _slab_pairs(*args, 0, ngroups)
        return out_k, out_t
    # Groups handed out in small interleaved chunks so slow and fast threads
    # finish together (GIL released inside the compiled loop).
    step = max(1, min(8, ngroups // (4 * threads)))
    chunks = [(g, min(ngroups, g + step)) for g in range(0, ngroups, step)]
    with _pool(threads) as pool:
        list(pool.map(lambda c: _slab_pairs(*args, c[0], c[1]), chunks))
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
    v = _variances(layers, prog, plan, x, xp)
    idx = mod.arange(x.shape[0], dtype=mod.int64)
    k, t = run_pairs(prog, x, x, v, v, idx, idx, want_ntk)
    return _tail(layers, prog, k, t, k.copy(), None, True, want_ntk, xp)


def flops_per_pair(layers: List[LayerImpl], plan: ImagePlan) -> float:
    """Arithmetic of the slab kernel per image pair (sqrt and divide count 1).

    Per slab entry: Conv (fh + fw − 2 adds, 2-flop affine; twice with the
    NTK, plus 2 for Θ's affine), ReLU family 37 (11-term polynomial, angle
    selection, Θ·K̇), Erf 45, Dense on images 5; K0 costs 2C + 1.
    """
    prog = _Program(layers, plan, np.dtype(np.float64))
    total = 0.0
    n = prog.ops.shape[0]
    for d in range(prog.deltas.shape[0]):
        def entries(s):
            h, w = prog.sdim[s]
            a, b = prog.deltas[d, s]
            if prog.circ:
                return h * w
            return max(0, h - abs(a)) * max(0, w - abs(b))
        total += (2 * plan.input_shape[2] + 1) * entries(0)
        for o in range(n):
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
        total += 2 * entries(n)
    return total
