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

SIMD: 8 image pairs ride in the 8 lanes of every inner loop
(``buf[position, lane]``), so all loops have a compile-time trip count of 8
and vectorise without tails or gathers, whatever the image size. The
ReLU-family angle is computed branch-free with a half-angle reduction and an
11-term polynomial for ``atan`` on ``[0, tan(π/8)]`` (numba here has no SVML,
so a libm ``atan2`` per entry would not vectorise). Erf uses the same atan.

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

try:  # let LLVM vectorise loops that read/write ~10 array views (default limit: 8 checks)
    import llvmlite.binding as _llvm

    _llvm.set_option("ntkscale", "-runtime-memory-check-threshold=32")
except Exception:  # pragma: no cover - older/newer llvmlite
    pass
from .activations import (PARALLEL_TOLERANCE_EPS, ABReluImpl, AbsImpl, Elementwise, ErfImpl,
                          IdentityImpl, LeakyReluImpl, ReluImpl)
from .conv import ConvImpl
from .conv_eval import DIAG, FLAT, FULL, ImagePlan
from .dense import DenseImpl
from .layer import LayerImpl
from .pooling import FlattenImpl, GlobalAvgPoolImpl
from .state import KernelState

#: Image pairs processed together (one per lane of every inner loop): at
#: least LANES_MIN, and as many more (up to LANES_MAX) as keep a thread's
#: scratch within SCRATCH_BYTES. Longer lanes amortise the per-row loop
#: overhead (measured: 64 lanes ≈ 1.3× faster than 16 on 8×8 images); every
#: thread still gets ≥ 4 groups (see ``_run_pairs``).
LANES_MIN, LANES_MAX = 8, 64
SCRATCH_BYTES = 8 << 20

K_CONV, K_ABRELU, K_ERF, K_IDENT, K_AFFINE = range(5)
_ACT_KINDS = {ReluImpl: K_ABRELU, LeakyReluImpl: K_ABRELU, AbsImpl: K_ABRELU,
              ABReluImpl: K_ABRELU, ErfImpl: K_ERF, IdentityImpl: K_IDENT}
# integer op columns
(C_KIND, C_FH, C_FW, C_SH, C_SW, C_VOFF, C_STD) = range(7)
_NCOLS = 7

#: atan(t) = t + t·z·R(z), z = t², |t| ≤ tan(π/8): Chebyshev fit of R of
#: degree 10 (mpmath.chebyfit, |ΔR| < 3.2e-17, i.e. < 1 ulp of atan).
ATAN_R = (0.02275052699336167, -0.04483334622272886, 0.05736332165907643,
          -0.06649613695291669, 0.0769105515839315, -0.09090852557176049,
          0.11111109636534361, -0.1428571426609662, 0.19999999999898407,
          -0.3333333333333325)
# consts layout (in the input dtype, so float32 stays float32 in the kernel)
_CONSTS = (0.0, 1.0, 2.0, math.pi, 0.5 * math.pi) + ATAN_R
_FM = {"contract"}


# ---------------------------------------------------------------- numba
@numba.njit(inline="always", fastmath=_FM)
def _atan_small(t, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14):
    """atan on |t| ≤ tan(π/8) (≤ 1 ulp)."""
    z = t * t
    r = c5
    r = r * z + c6
    r = r * z + c7
    r = r * z + c8
    r = r * z + c9
    r = r * z + c10
    r = r * z + c11
    r = r * z + c12
    r = r * z + c13
    r = r * z + c14
    return t + t * z * r


@numba.njit(inline="always", fastmath=_FM, error_model="numpy")
def _atan2_pos(y, x, halfpi, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14):
    """atan2(y, x) in [0, π/2] for x, y ≥ 0 (not both 0): half-angle of the
    smaller angle, tan(α/2) = min / (max + r), so |tan(α/2)| ≤ tan(π/8)."""
    num = min(x, y)
    den = max(x, y)
    r = math.sqrt(num * num + den * den)
    alpha = _atan_small(num / (den + r), c5, c6, c7, c8, c9, c10, c11, c12, c13, c14)
    alpha = alpha + alpha
    return alpha if y <= x else halfpi - alpha


@numba.njit(cache=True)
def _valid(n, delta, circ):
    """Positions P of a slab whose partner P + δ is inside the image."""
    if circ:
        return 0, n
    return max(0, -delta), min(n, n - delta)


@numba.njit(cache=True)
def _fill(dst, value):  # pragma: no cover - compiled
    for i in range(dst.shape[0]):
        dst[i] = value


@numba.njit(cache=True)
def _copy(dst, src):  # pragma: no cover - compiled
    for i in range(dst.shape[0]):
        dst[i] = src[i]


@numba.njit(cache=True)
def _add(dst, src):  # pragma: no cover - compiled
    for i in range(dst.shape[0]):
        dst[i] += src[i]


@numba.njit(cache=True, fastmath=_FM)
def _affine(kr, tr, f0, f1, f2, f3, want_ntk, standard):  # pragma: no cover - compiled
    """Σ ← f0·K + f1; Θ ← Σ + f0·Θ ("ntk") or f2·K + f0·Θ + f3 ("standard")."""
    n = kr.shape[0]
    if want_ntk and not standard:
        for i in range(n):
            kn = f0 * kr[i] + f1
            tr[i] = kn + f0 * tr[i]
            kr[i] = kn
    elif want_ntk:
        for i in range(n):
            ks = kr[i]
            tr[i] = f2 * ks + f0 * tr[i] + f3
            kr[i] = f0 * ks + f1
    else:
        for i in range(n):
            kr[i] = f0 * kr[i] + f1


@numba.njit(inline="always", fastmath=_FM, error_model="numpy")
def _abrelu1(c, sa, sb, f0, f1, one, zero, tol, halfpi, pi_,
             c5, c6, c7, c8, c9, c10, c11, c12, c13, c14):  # pragma: no cover - compiled
    """ReLU-family dual of one entry, ``(K, K̇)`` as ``_ABReluFamily.dual``
    (f0 = A, f1 = F): K = F·√(qq' − c²) + (A − Fθ)·c, K̇ = A − Fθ.

    Scale-free form (no division by the norm): with n = √q√q' and
    |c| clipped to n (snapped to n within ``tol``, as the reference snaps the
    cosine), S = √((n − |c|)(n + |c|)) and θ = atan2(S, c) from the smaller
    angle's half-angle tangent min(|c|, S)/(max(|c|, S) + n) ≤ tan(π/8).
    n = 0 gives θ = π/2 and K = 0, as the reference."""
    norm = sa * sb
    ac = min(abs(c), norm)
    ac = norm if ac > norm - tol * norm else ac
    s = math.sqrt((norm - ac) * (norm + ac))
    sang = s if norm > zero else one
    al = _atan_small(min(ac, sang) / (max(ac, sang) + norm),
                     c5, c6, c7, c8, c9, c10, c11, c12, c13, c14)
    al = al + al
    th = al if sang <= ac else halfpi - al
    th = th if c >= zero else pi_ - th
    dot = f0 - f1 * th
    return f1 * s + dot * (ac if c >= zero else -ac), dot


@numba.njit(cache=True, fastmath=_FM, error_model="numpy")
def _abrelu_row(kr, tr, sa, sb, f0, f1, want_ntk, consts):  # pragma: no cover
    """``_abrelu1`` on a row (Θ ← Θ·K̇)."""
    one = consts[1]
    zero = consts[0]
    two = consts[2]
    pi_ = consts[3]
    halfpi = consts[4]
    c5, c6, c7, c8, c9 = consts[5], consts[6], consts[7], consts[8], consts[9]
    c10, c11, c12, c13, c14 = consts[10], consts[11], consts[12], consts[13], consts[14]
    tol = consts[15]
    if want_ntk:
        for i in range(kr.shape[0]):
            k, dot = _abrelu1(kr[i], sa[i], sb[i], f0, f1, one, zero, tol, halfpi,
                              pi_, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14)
            kr[i] = k
            tr[i] = tr[i] * dot
    else:
        for i in range(kr.shape[0]):
            k, dot = _abrelu1(kr[i], sa[i], sb[i], f0, f1, one, zero, tol, halfpi,
                              pi_, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14)
            kr[i] = k


@numba.njit(cache=True)
def _zero_outside(buf, base, L, plh, plw, Hp, Wp, h0, h1, w0, w1, zero):  # pragma: no cover
    """Zero every position of an ``Hp × Wp`` slab buffer except the valid
    rectangle ``[h0, h1) × [w0, w1)`` (interior coordinates)."""
    for r in range(Hp):
        row = buf[base + r * Wp * L:base + (r + 1) * Wp * L]
        if r < plh + h0 or r >= plh + h1 or h0 >= h1 or w0 >= w1:
            _fill(row, zero)
        else:
            _fill(row[0:(plw + w0) * L], zero)
            _fill(row[(plw + w1) * L:Wp * L], zero)


@numba.njit(cache=True, fastmath=_FM, error_model="numpy")
def _conv3_relu_row(ko, to, t0, t1, t2, u0, u1, u2, sa, sb, g0, g1, g2, g3, f0, f1,
                    want_ntk, ntk_zero, standard, consts):  # pragma: no cover - compiled
    """Fused: 3-tap column sum of the row sums (t: Σ, u: Θ), the Conv affine
    map (g0..g3 as ``_affine``) and a ReLU-family activation (f0 = A, f1 = F)."""
    one = consts[1]
    zero = consts[0]
    two = consts[2]
    pi_ = consts[3]
    halfpi = consts[4]
    c5, c6, c7, c8, c9 = consts[5], consts[6], consts[7], consts[8], consts[9]
    c10, c11, c12, c13, c14 = consts[10], consts[11], consts[12], consts[13], consts[14]
    tol = consts[15]
    n = ko.shape[0]
    if not want_ntk:
        for i in range(n):
            kn = g0 * (t0[i] + t1[i] + t2[i]) + g1
            k, dot = _abrelu1(kn, sa[i], sb[i], f0, f1, one, zero, tol, halfpi,
                              pi_, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14)
            ko[i] = k
    elif ntk_zero:
        for i in range(n):
            ks = t0[i] + t1[i] + t2[i]
            kn = g0 * ks + g1
            tn = g2 * ks + g3 if standard else kn
            k, dot = _abrelu1(kn, sa[i], sb[i], f0, f1, one, zero, tol, halfpi,
                              pi_, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14)
            ko[i] = k
            to[i] = tn * dot
    else:
        for i in range(n):
            ks = t0[i] + t1[i] + t2[i]
            ts = u0[i] + u1[i] + u2[i]
            kn = g0 * ks + g1
            tn = g2 * ks + g0 * ts + g3 if standard else kn + g0 * ts
            k, dot = _abrelu1(kn, sa[i], sb[i], f0, f1, one, zero, tol, halfpi,
                              pi_, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14)
            ko[i] = k
            to[i] = tn * dot


@numba.njit(cache=True)
def _row_sum(dst, a, lo, hi, rowstride, taps):  # pragma: no cover - compiled
    """dst = Σ_e a[lo + e·rowstride : hi + e·rowstride], e < taps."""
    if taps == 3:
        a0 = a[lo:hi]
        a1 = a[lo + rowstride:hi + rowstride]
        a2 = a[lo + 2 * rowstride:hi + 2 * rowstride]
        for i in range(dst.shape[0]):
            dst[i] = a0[i] + a1[i] + a2[i]
    else:
        _copy(dst, a[lo:hi])
        for e in range(1, taps):
            _add(dst, a[lo + e * rowstride:hi + e * rowstride])


@numba.njit(cache=True, fastmath=_FM, error_model="numpy")
def _erf_row(kr, tr, qa, sa, qb, sb, f0, f1, f2, want_ntk, consts):  # pragma: no cover
    """a·erf(b·x) + c on a row (Williams 1997), as ``ErfImpl.dual``:
    K = a²(2/π)·atan2(2b²c, √D) + c₀², K̇ = a²b²(4/π)/√D with
    D = 1 + 2b²(q + q') + 4b⁴(qq' − c²), |c| clipped/snapped as for ReLU."""
    zero = consts[0]
    one = consts[1]
    two = consts[2]
    pi_ = consts[3]
    halfpi = consts[4]
    c5, c6, c7, c8, c9 = consts[5], consts[6], consts[7], consts[8], consts[9]
    c10, c11, c12, c13, c14 = consts[10], consts[11], consts[12], consts[13], consts[14]
    tol = consts[15]
    b2 = f1 * f1
    for i in range(kr.shape[0]):
        c = kr[i]
        norm = sa[i] * sb[i]
        ac = min(abs(c), norm)
        ac = norm if ac > norm - tol * norm else ac
        root = math.sqrt(one + two * b2 * (qa[i] + qb[i])
                         + two * two * b2 * b2 * ((norm - ac) * (norm + ac)))
        y = two * b2 * c
        ang = _atan2_pos(abs(y), root, halfpi, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14)
        ang = ang if y >= zero else -ang
        kr[i] = f0 * f0 * two / pi_ * ang + f2 * f2
        if want_ntk:
            tr[i] = tr[i] * (f0 * f0 * b2 * two * two / pi_ / root)


@numba.njit(cache=True, fastmath=_FM, error_model="numpy")
def _group(L, xa, xb, va, vb, ops, fpar, sdim, spad, deltas, consts, circ, want_ntk,
           kb, tb, tk, tt, acc):  # pragma: no cover - compiled
    """All slabs of one group of L image pairs (lane k = pair k).

    Buffers are flat, position-major, lane-minor (``buf[pos * L + k]``), so
    every inner loop runs over a contiguous range (a slab row × L lanes) of
    an array view starting at 0, which LLVM vectorises. ``xa``/``xb``: images
    ``[c, h, w, lane]``; ``va``/``vb``: per activation pixel
    ``[(q, √q), pixel, lane]``. ``acc[0:L]``/``acc[L:2L]`` receive the
    sums of Σ and Θ over the final slabs.
    """
    nops = ops.shape[0]
    ndelta = deltas.shape[0]
    H0 = sdim[0, 0]
    W0 = sdim[0, 1]
    C = xa.shape[0] // (H0 * W0 * L)
    nvl = va.shape[0] // 2
    zero = consts[0]
    one = consts[1]
    two = consts[2]
    pi_ = consts[3]
    halfpi = consts[4]
    c5, c6, c7, c8, c9 = consts[5], consts[6], consts[7], consts[8], consts[9]
    c10, c11, c12, c13, c14 = consts[10], consts[11], consts[12], consts[13], consts[14]
    tol = consts[15]
    cf = consts[16]
    bufsize = kb.shape[0] // 2
    _fill(acc, zero)
    for d in range(ndelta):
        # ---- stage 0: K0 = <x_a, x_b> / C on the slab
        plh = spad[0, 0]
        plw = spad[0, 1]
        Wp = spad[0, 3]
        dh = deltas[d, 0, 0]
        dw = deltas[d, 0, 1]
        cur = 0
        _fill(kb[0:spad[0, 2] * Wp * L], zero)
        h0, h1 = _valid(H0, dh, circ)
        w0, w1 = _valid(W0, dw, circ)
        for P in range(h0, h1):
            Pb = (P + dh) % H0
            ob = ((P + plh) * Wp + plw) * L
            for c in range(C):
                ia = ((c * H0 + P) * W0) * L
                if circ and dw != 0:
                    for Q in range(w0, w1):
                        ib = ((c * H0 + Pb) * W0 + (Q + dw) % W0) * L
                        ko = kb[ob + Q * L:ob + Q * L + L]
                        xr = xa[ia + Q * L:ia + Q * L + L]
                        yr = xb[ib:ib + L]
                        for k in range(L):
                            ko[k] += xr[k] * yr[k]
                else:
                    ib = ((c * H0 + Pb) * W0 + dw) * L
                    ko = kb[ob + w0 * L:ob + w1 * L]
                    xr = xa[ia + w0 * L:ia + w1 * L]
                    yr = xb[ib + w0 * L:ib + w1 * L]
                    for i in range(ko.shape[0]):
                        ko[i] += xr[i] * yr[i]
            ko = kb[ob + w0 * L:ob + w1 * L]
            for i in range(ko.shape[0]):
                ko[i] = ko[i] / cf
        ntk_zero = True
        skip = False
        for o in range(nops):
            if skip:
                skip = False
                continue
            kind = ops[o, C_KIND]
            H = sdim[o, 0]
            W = sdim[o, 1]
            plh = spad[o, 0]
            plw = spad[o, 1]
            Hp = spad[o, 2]
            Wp = spad[o, 3]
            dh = deltas[d, o, 0]
            dw = deltas[d, o, 1]
            f0 = fpar[o, 0]
            f1 = fpar[o, 1]
            f2 = fpar[o, 2]
            f3 = fpar[o, 3]
            cb = cur * bufsize
            if kind == K_CONV:
                Ho = sdim[o + 1, 0]
                Wo = sdim[o + 1, 1]
                qlh = spad[o + 1, 0]
                qlw = spad[o + 1, 1]
                Hq = spad[o + 1, 2]
                Wq = spad[o + 1, 3]
                fh = ops[o, C_FH]
                fw = ops[o, C_FW]
                sh = ops[o, C_SH]
                sw = ops[o, C_SW]
                nb = (1 - cur) * bufsize
                use_t = want_ntk and not ntk_zero
                fuse = (not circ and fw == 3 and sw == 1 and o + 1 < nops
                        and ops[o + 1, C_KIND] == K_ABRELU)
                if fuse:
                    h0, h1 = _valid(Ho, deltas[d, o + 1, 0], circ)
                    w0, w1 = _valid(Wo, deltas[d, o + 1, 1], circ)
                    _zero_outside(kb, nb, L, qlh, qlw, Hq, Wq, h0, h1, w0, w1, zero)
                    if want_ntk:
                        _zero_outside(tb, nb, L, qlh, qlw, Hq, Wq, h0, h1, w0, w1, zero)
                    a0 = fpar[o + 1, 0]
                    a1 = fpar[o + 1, 1]
                    voff = ops[o + 1, C_VOFF]
                    dho = deltas[d, o + 1, 0]
                    dwo = deltas[d, o + 1, 1]
                    n_ = (w1 - w0) * L
                    j0 = w0 * L
                    j1 = (w1 + 2) * L
                    for P in range(h0, h1):
                        r0 = cb + sh * P * Wp * L
                        _row_sum(tk[j0:j1], kb, r0 + j0, r0 + j1, Wp * L, fh)
                        if use_t:
                            _row_sum(tt[j0:j1], tb, r0 + j0, r0 + j1, Wp * L, fh)
                        ob = nb + ((P + qlh) * Wq + qlw + w0) * L
                        ia = (voff + P * Wo + w0) * L
                        ib = (voff + (P + dho) * Wo + w0 + dwo) * L
                        _conv3_relu_row(kb[ob:ob + n_], tb[ob:ob + n_],
                                        tk[j0:j0 + n_], tk[j0 + L:j0 + L + n_],
                                        tk[j0 + 2 * L:j0 + 2 * L + n_],
                                        tt[j0:j0 + n_], tt[j0 + L:j0 + L + n_],
                                        tt[j0 + 2 * L:j0 + 2 * L + n_],
                                        va[nvl + ia:nvl + ia + n_], vb[nvl + ib:nvl + ib + n_],
                                        f0, f1, f2, f3, a0, a1, want_ntk, not use_t,
                                        ops[o, C_STD] != 0, consts)
                    cur = 1 - cur
                    if want_ntk:
                        ntk_zero = False
                    skip = True
                    continue
                if circ:
                    _wrap_fill(kb, cb, L, H, W, plh, plw, Hp, Wp)
                    if use_t:
                        _wrap_fill(tb, cb, L, H, W, plh, plw, Hp, Wp)
                _fill(kb[nb:nb + Hq * Wq * L], zero)
                if want_ntk:
                    _fill(tb[nb:nb + Hq * Wq * L], zero)
                h0, h1 = _valid(Ho, deltas[d, o + 1, 0], circ)
                w0, w1 = _valid(Wo, deltas[d, o + 1, 1], circ)
                if h0 < h1 and w0 < w1:
                    j0 = sw * w0 * L
                    j1 = (sw * (w1 - 1) + fw) * L
                    for P in range(h0, h1):
                        # pass 1: sum the fh input rows of output row P
                        tr = (P - h0) * Wp * L
                        r0 = cb + sh * P * Wp * L
                        trow = tk[tr + j0:tr + j1]
                        _copy(trow, kb[r0 + j0:r0 + j1])
                        for e in range(1, fh):
                            re = r0 + e * Wp * L
                            _add(trow, kb[re + j0:re + j1])
                        if use_t:
                            trow2 = tt[tr + j0:tr + j1]
                            _copy(trow2, tb[r0 + j0:r0 + j1])
                            for e in range(1, fh):
                                re = r0 + e * Wp * L
                                _add(trow2, tb[re + j0:re + j1])
                        # pass 2: sum fw columns, then the affine map
                        ob = nb + ((P + qlh) * Wq + qlw) * L
                        krow = kb[ob + w0 * L:ob + w1 * L]
                        t_row = tb[ob + w0 * L:ob + w1 * L]
                        if sw == 1:
                            for e in range(fw):
                                te = tr + (w0 + e) * L
                                _add(krow, tk[te:te + krow.shape[0]])
                                if use_t:
                                    _add(t_row, tt[te:te + krow.shape[0]])
                        else:
                            for Q in range(w0, w1):
                                kq = kb[ob + Q * L:ob + Q * L + L]
                                tq = tb[ob + Q * L:ob + Q * L + L]
                                for e in range(fw):
                                    te = tr + (sw * Q + e) * L
                                    _add(kq, tk[te:te + L])
                                    if use_t:
                                        _add(tq, tt[te:te + L])
                        _affine(krow, t_row, f0, f1, f2, f3, want_ntk, ops[o, C_STD] != 0)
                cur = 1 - cur
                if want_ntk:
                    ntk_zero = False
                continue
            # ---- pointwise ops on the valid part of the slab
            h0, h1 = _valid(H, dh, circ)
            w0, w1 = _valid(W, dw, circ)
            if kind == K_AFFINE and want_ntk and ntk_zero:
                _fill(tb[cb:cb + Hp * Wp * L], zero)
            voff = ops[o, C_VOFF]
            for P in range(h0, h1):
                Pb = (P + dh) % H
                ob = cb + ((P + plh) * Wp + plw) * L
                ia = (voff + P * W) * L
                segs = 2 if (circ and dw != 0) else 1
                for seg in range(segs):
                    # in CIRCULAR slabs the partner column wraps once
                    if segs == 1:
                        m0, m1, ib = w0 * L, w1 * L, (voff + Pb * W + dw) * L
                    elif seg == 0:
                        m0, m1, ib = 0, (W - dw) * L, (voff + Pb * W + dw) * L
                    else:
                        m0, m1, ib = (W - dw) * L, W * L, (voff + Pb * W + dw - W) * L
                    kr = kb[ob + m0:ob + m1]
                    trr = tb[ob + m0:ob + m1]
                    if kind == K_ABRELU:
                        _abrelu_row(kr, trr, va[nvl + ia + m0:nvl + ia + m1],
                                    vb[nvl + ib + m0:nvl + ib + m1],
                                    f0, f1, want_ntk, consts)
                    elif kind == K_ERF:
                        _erf_row(kr, trr, va[ia + m0:ia + m1], va[nvl + ia + m0:nvl + ia + m1],
                                 vb[ib + m0:ib + m1], vb[nvl + ib + m0:nvl + ib + m1],
                                 f0, f1, f2, want_ntk, consts)
                    elif kind == K_AFFINE:
                        _affine(kr, trr, f0, f1, f2, f3, want_ntk, ops[o, C_STD] != 0)
            if kind == K_AFFINE and want_ntk:
                ntk_zero = False
        # ---- final reduction (GlobalAvgPool: every slab; Flatten: δ = 0)
        H = sdim[nops, 0]
        W = sdim[nops, 1]
        plh = spad[nops, 0]
        plw = spad[nops, 1]
        Wp = spad[nops, 3]
        cb = cur * bufsize
        h0, h1 = _valid(H, deltas[d, nops, 0], circ)
        w0, w1 = _valid(W, deltas[d, nops, 1], circ)
        ak = acc[0:L]
        at = acc[L:2 * L]
        for P in range(h0, h1):
            ob = cb + ((P + plh) * Wp + plw) * L
            for Q in range(w0, w1):
                _add(ak, kb[ob + Q * L:ob + Q * L + L])
                if want_ntk and not ntk_zero:
                    _add(at, tb[ob + Q * L:ob + Q * L + L])


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _slab_pairs(X1, X2, pi, pj, L, ops, fpar, sdim, spad, deltas, V1, V2, consts,
                final_count, circ, want_ntk, out_k, out_t, g_start, g_stop):  # pragma: no cover
    """Kernel entries of the image pairs (pi[p], pj[p]) of groups
    ``g_start..g_stop`` (L pairs each); releases the GIL (threads share the
    groups, see ``_run_pairs``)."""
    npairs = pi.shape[0]
    H0 = X1.shape[1]
    W0 = X1.shape[2]
    C = X1.shape[3]
    nops = ops.shape[0]
    nv = V1.shape[1]
    dt = X1.dtype
    one = consts[1]
    inv_count = one / final_count
    maxbuf = 1
    for s in range(nops + 1):
        maxbuf = max(maxbuf, spad[s, 2] * spad[s, 3])
    maxt = 1
    for o in range(nops):
        if ops[o, C_KIND] == K_CONV:
            maxt = max(maxt, sdim[o + 1, 0] * spad[o, 3])
    for g in range(g_start, g_stop):
        kb = np.empty(2 * maxbuf * L, dt)
        tb = np.empty(2 * maxbuf * L, dt)
        tk = np.empty(maxt * L, dt)
        tt = np.empty(maxt * L, dt)
        xa = np.empty(C * H0 * W0 * L, dt)
        xb = np.empty(C * H0 * W0 * L, dt)
        va = np.empty(2 * max(nv, 1) * L, dt)
        vb = np.empty(2 * max(nv, 1) * L, dt)
        acc = np.empty(2 * L, dt)
        for k in range(L):
            p = min(g * L + k, npairs - 1)
            i = pi[p]
            j = pj[p]
            for c in range(C):
                for h in range(H0):
                    for w in range(W0):
                        m = ((c * H0 + h) * W0 + w) * L + k
                        xa[m] = X1[i, h, w, c]
                        xb[m] = X2[j, h, w, c]
            for v in range(nv):
                q = V1[i, v]
                va[v * L + k] = q
                va[(nv + v) * L + k] = math.sqrt(q)
                q = V2[j, v]
                vb[v * L + k] = q
                vb[(nv + v) * L + k] = math.sqrt(q)
        _group(L, xa, xb, va, vb, ops, fpar, sdim, spad, deltas, consts, circ, want_ntk,
               kb, tb, tk, tt, acc)
        for k in range(L):
            p = g * L + k
            if p < npairs:
                out_k[p] = acc[k] * inv_count
                out_t[p] = acc[L + k] * inv_count


@numba.njit(cache=True)
def _wrap_fill(buf, base, L, H, W, plh, plw, Hp, Wp):  # pragma: no cover - compiled
    """Fill the pad margins of a slab buffer with wrapped values (CIRCULAR)."""
    for r in range(Hp):
        sr = plh + (r - plh) % H
        for c in range(Wp):
            sc = plw + (c - plw) % W
            if sr != r or sc != c:
                for k in range(L):
                    buf[base + (r * Wp + c) * L + k] = buf[base + (sr * Wp + sc) * L + k]


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
             want_ntk: bool, memory_budget: int, xp: Any = None, run_pairs: Any = None,
             dtype_out: Any = None) -> Dict[str, Any]:
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
