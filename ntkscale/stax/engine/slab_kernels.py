"""Numba kernels of the compiled conv path (see ``conv_fast`` for the method).

Everything here is hand-written loops compiled by numba rather than NumPy
array expressions: a slab is a few KiB and each op a short loop over it, so
per-call overhead and temporaries of array expressions would dominate, and
fusing (a Conv's sums, its affine map and the activation in one pass; the
pooling scatter straight into the next stage's sums) keeps the data in
cache. Planning (which slabs, offsets and divisors) is in ``conv_fast``.

Layout: buffers are flat, position-major and lane-minor (``buf[pos * L + k]``,
lane k = image pair k of a group), and every hot loop runs over an array
*view* starting at 0 (a slab row × L lanes): numba then drops its
negative-index handling and LLVM vectorises the loop. Scalar helpers used
inside those loops are inlined at the numba level; row-level helpers are
separate compiled functions (faster compilation, same speed).
"""

from __future__ import annotations

import math

import numba
import numpy as np

try:  # let LLVM vectorise loops that read/write ~10 array views (default limit: 8 checks)
    import llvmlite.binding as _llvm

    _llvm.set_option("ntkscale", "-runtime-memory-check-threshold=32")
except Exception:  # pragma: no cover - older/newer llvmlite
    pass

#: op kinds and integer op columns of an encoded program (``conv_fast._Program``)
K_CONV, K_ABRELU, K_ERF, K_IDENT, K_AFFINE, K_POOL = range(6)
# integer op columns (K_POOL: C_FH/C_FW window, C_SH/C_SW strides)
(C_KIND, C_FH, C_FW, C_SH, C_SW, C_VOFF, C_STD) = range(7)
NCOLS = 7

#: atan(t) = t + t·z·R(z), z = t², |t| ≤ tan(π/8): Chebyshev fit of R of
#: degree 10 (mpmath.chebyfit, |ΔR| < 3.2e-17, i.e. < 1 ulp of atan).
ATAN_R = (0.02275052699336167, -0.04483334622272886, 0.05736332165907643,
          -0.06649613695291669, 0.0769105515839315, -0.09090852557176049,
          0.11111109636534361, -0.1428571426609662, 0.19999999999898407,
          -0.3333333333333325)
# consts layout (in the input dtype, so float32 stays float32 in the kernel)
CONSTS = (0.0, 1.0, 2.0, math.pi, 0.5 * math.pi) + ATAN_R
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
def abrelu_row(kr, tr, sa, sb, f0, f1, want_ntk, consts):  # pragma: no cover
    """``_abrelu1`` on a row (Θ ← Θ·K̇)."""
    one = consts[1]
    zero = consts[0]
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
def erf_row(kr, tr, qa, sa, qb, sb, f0, f1, f2, want_ntk, consts):  # pragma: no cover
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

@numba.njit(cache=True)
def _capture(L, kb, cb, va, vb, voff, nvl, H, W, plh, plw, Wp):  # pragma: no cover - compiled
    """Self pairs: the δ = 0 slab entering an activation holds the image's
    per-pixel variance q; store (q, √q) in ``va`` and ``vb``."""
    for P in range(H):
        ob = cb + ((P + plh) * Wp + plw) * L
        src = kb[ob:ob + W * L]
        ia = (voff + P * W) * L
        qa = va[ia:ia + W * L]
        sa = va[nvl + ia:nvl + ia + W * L]
        qb = vb[ia:ia + W * L]
        sb = vb[nvl + ia:nvl + ia + W * L]
        for i in range(src.shape[0]):
            q = src[i]
            r = math.sqrt(q)
            qa[i] = q
            sa[i] = r
            qb[i] = q
            sb[i] = r


@numba.njit(cache=True, fastmath=_FM, error_model="numpy")
def _pool_load(L, kb, tb, d, o, st, sdim, spad, deltas, pinv, accoff, pk, pt, use_t,
               zero):  # pragma: no cover - compiled
    """Slab d (entering op o, first of stage ``st`` > 0) from the window sums
    into buffer 0 of ``kb``/``tb`` (zero margins), divided by the window
    sizes: ``pinv[st, 0, P]·pinv[st, 0, P + δh]·pinv[st, 1, Q]·pinv[st, 1, Q + δw]``."""
    H = sdim[o, 0]
    W = sdim[o, 1]
    plh = spad[o, 0]
    plw = spad[o, 1]
    Wp = spad[o, 3]
    dh = deltas[d, o, 0]
    dw = deltas[d, o, 1]
    _fill(kb[0:spad[o, 2] * Wp * L], zero)
    if use_t:
        _fill(tb[0:spad[o, 2] * Wp * L], zero)
    h0, h1 = _valid(H, dh, False)
    w0, w1 = _valid(W, dw, False)
    nw = w1 - w0
    base = accoff[d] * L
    for P in range(h0, h1):
        fr = pinv[st, 0, P] * pinv[st, 0, P + dh]
        ob = ((P + plh) * Wp + plw) * L
        ib = base + (P - h0) * nw * L
        for Q in range(w0, w1):
            f = fr * (pinv[st, 1, Q] * pinv[st, 1, Q + dw])
            ko = kb[ob + Q * L:ob + Q * L + L]
            src = pk[ib + (Q - w0) * L:ib + (Q - w0) * L + L]
            for k in range(L):
                ko[k] = src[k] * f
            if use_t:
                to = tb[ob + Q * L:ob + Q * L + L]
                srt = pt[ib + (Q - w0) * L:ib + (Q - w0) * L + L]
                for k in range(L):
                    to[k] = srt[k] * f


@numba.njit(cache=True)
def _window_range(n_out, lo, hi, stride, shift):  # pragma: no cover - compiled
    """Positions P in [0, n_out) with lo ≤ stride·P + shift < hi."""
    p0 = max(0, -((shift - lo) // stride))
    p1 = min(n_out, -((shift - hi) // stride))
    return p0, max(p0, p1)


@numba.njit(cache=True)
def _pool_axis(delta, a, a2, stride, n_out, i0, i1, lo):  # pragma: no cover - compiled
    """One axis of the window offset pair (a, a') of an AvgPool scatter from
    input slab δ: ``(ok, e, v0, v1, p0, p1)`` with the pooled slab offset
    e = (δ − a' + a) / s (ok False when s ∤ δ − a' + a or e is outside the
    output), its valid positions [v0, v1), and the output positions [p0, p1)
    whose window, at offset a, reads an input row in [i0, i1)."""
    nd = delta - a2 + a
    if nd % stride != 0:
        return False, 0, 0, 0, 0, 0
    e = nd // stride
    if e <= -n_out or e >= n_out:
        return False, 0, 0, 0, 0, 0
    v0, v1 = _valid(n_out, e, False)
    p0, p1 = _window_range(n_out, i0, i1, stride, a - lo)
    return True, e, v0, v1, max(p0, v0), min(p1, v1)


@numba.njit(cache=True)
def _strided_add(dst, src, ob, ib, q0, q1, stride, L):  # pragma: no cover - compiled
    """dst[ob + Q·L + k] += src[ib + stride·Q·L + k] for Q in [q0, q1), k < L."""
    for Q in range(q0, q1):
        d = dst[ob + Q * L:ob + Q * L + L]
        r = src[ib + stride * Q * L:ib + stride * Q * L + L]
        for k in range(L):
            d[k] += r[k]


@numba.njit(cache=True, error_model="numpy")
def _pool_scatter(L, kb, tb, cb, d, o, st, ops, sdim, spad, deltas, pools, lut, accoff, pk, pt,
                  use_t):  # pragma: no cover - compiled
    """Add slab d (entering the AvgPool op o; in ``kb[cb:]``) to the window
    sums of the slabs of stage ``st`` it feeds. The input pair
    (sP + a − lo, sP' + a' − lo), P' = P + δ', lies in slab δ = sδ' + a' − a:
    every window offset pair (a, a') with s | δ − a' + a adds the slab's
    entries to slab δ' = (δ − a' + a) / s (where stage ``st`` needs it)."""
    H = sdim[o, 0]
    W = sdim[o, 1]
    Ho = sdim[o + 1, 0]
    Wo = sdim[o + 1, 1]
    plh = spad[o, 0]
    plw = spad[o, 1]
    Wp = spad[o, 3]
    kh = ops[o, C_FH]
    kw = ops[o, C_FW]
    sh = ops[o, C_SH]
    sw = ops[o, C_SW]
    loh = pools[st, 0]
    low = pools[st, 1]
    R = (lut.shape[1] - 1) // 2
    dh = deltas[d, o, 0]
    dw = deltas[d, o, 1]
    ih0, ih1 = _valid(H, dh, False)
    iw0, iw1 = _valid(W, dw, False)
    for a in range(kh):
        for a2 in range(kh):
            okh, eh, vh0, _, p0, p1 = _pool_axis(dh, a, a2, sh, Ho, ih0, ih1, loh)
            if not okh:
                continue
            for b in range(kw):
                for b2 in range(kw):
                    okw, ew, vw0, vw1, q0, q1 = _pool_axis(dw, b, b2, sw, Wo, iw0, iw1, low)
                    if not okw:
                        continue
                    e = lut[st, eh + R, ew + R]
                    if e < 0:
                        continue
                    nrow = vw1 - vw0
                    for P in range(p0, p1):
                        ib = cb + ((sh * P + a - loh + plh) * Wp + plw + b - low) * L
                        ob = (accoff[e] + (P - vh0) * nrow - vw0) * L
                        _strided_add(pk, kb, ob, ib, q0, q1, sw, L)
                        if use_t:
                            _strided_add(pt, tb, ob, ib, q0, q1, sw, L)


@numba.njit(cache=True, fastmath=_FM, error_model="numpy")
def _k0_slab(L, xa, xb, C, H0, W0, spad, deltas, d, circ, cf, zero, kb):  # pragma: no cover
    """Slab d of the first stage: K0 = <x_a, x_b> / C into ``kb`` (buffer 0)."""
    plh = spad[0, 0]
    plw = spad[0, 1]
    Wp = spad[0, 3]
    dh = deltas[d, 0, 0]
    dw = deltas[d, 0, 1]
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


@numba.njit(cache=True, fastmath=_FM, error_model="numpy")
def _group(L, xa, xb, va, vb, ops, fpar, sdim, spad, deltas, consts, circ, want_ntk,
           kb, tb, tk, tt, acc, stages, pools, pinv, lut, accoff, pk, pt,
           selfvar):  # pragma: no cover - compiled
    """All slabs of one group of L image pairs (lane k = pair k).

    Buffers are flat, position-major, lane-minor (``buf[pos * L + k]``), so
    every inner loop runs over a contiguous range (a slab row × L lanes) of
    an array view starting at 0, which LLVM vectorises. ``xa``/``xb``: images
    ``[c, h, w, lane]``; ``va``/``vb``: per activation pixel
    ``[(q, √q), pixel, lane]``. ``acc[0:L]``/``acc[L:2L]`` receive the
    sums of Σ and Θ over the final slabs.

    Stages ``stages[s] = (o0, o1, d0, d1)`` (ops ``o0..o1-1``, slabs
    ``d0..d1-1``) are separated by AvgPool ops ``o1``: every slab of stage s
    adds its window sums to the pooled slabs ``pk``/``pt`` (``_pool_scatter``)
    that stage s + 1 starts from (``_pool_load``). ``selfvar`` (pairs (i, i);
    slab d0 of every stage has δ = 0): the variances entering each
    activation are copied from that slab before the stage's other slabs
    read them (``_capture``).
    """
    H0 = sdim[0, 0]
    W0 = sdim[0, 1]
    C = xa.shape[0] // (H0 * W0 * L)
    nvl = va.shape[0] // 2
    zero = consts[0]
    cf = consts[16]
    bufsize = kb.shape[0] // 2
    nstages = stages.shape[0]
    _fill(acc, zero)
    if nstages > 1:
        _fill(pk, zero)
        if want_ntk:
            _fill(pt, zero)
    stage_ntk_zero = True
    for st in range(nstages):
        o_first = stages[st, 0]
        o_last = stages[st, 1]
        ntk_zero = stage_ntk_zero
        for d in range(stages[st, 2], stages[st, 3]):
            capture = selfvar and d == stages[st, 2]
            ntk_zero = stage_ntk_zero
            cur = 0
            if st == 0:
                _k0_slab(L, xa, xb, C, H0, W0, spad, deltas, d, circ, cf, zero, kb)
            else:
                _pool_load(L, kb, tb, d, o_first, st, sdim, spad, deltas, pinv, accoff, pk, pt,
                           want_ntk and not ntk_zero, zero)
            skip = False
            for o in range(o_first, o_last):
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
                    fuse = (not circ and fw == 3 and sw == 1 and o + 1 < o_last
                            and ops[o + 1, C_KIND] == K_ABRELU and not capture)
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
                if capture and (kind == K_ABRELU or kind == K_ERF):
                    _capture(L, kb, cb, va, vb, voff, nvl, H, W, plh, plw, Wp)
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
                            abrelu_row(kr, trr, va[nvl + ia + m0:nvl + ia + m1],
                                        vb[nvl + ib + m0:nvl + ib + m1],
                                        f0, f1, want_ntk, consts)
                        elif kind == K_ERF:
                            erf_row(kr, trr, va[ia + m0:ia + m1], va[nvl + ia + m0:nvl + ia + m1],
                                     vb[ib + m0:ib + m1], vb[nvl + ib + m0:nvl + ib + m1],
                                     f0, f1, f2, want_ntk, consts)
                        elif kind == K_AFFINE:
                            _affine(kr, trr, f0, f1, f2, f3, want_ntk, ops[o, C_STD] != 0)
                if kind == K_AFFINE and want_ntk:
                    ntk_zero = False
            if st + 1 < nstages:
                _pool_scatter(L, kb, tb, cur * bufsize, d, o_last, st + 1, ops, sdim, spad,
                              deltas, pools, lut, accoff, pk, pt, want_ntk and not ntk_zero)
                continue
            # ---- final reduction (GlobalAvgPool: every slab; Flatten: δ = 0)
            H = sdim[o_last, 0]
            W = sdim[o_last, 1]
            plh = spad[o_last, 0]
            plw = spad[o_last, 1]
            Wp = spad[o_last, 3]
            cb = cur * bufsize
            h0, h1 = _valid(H, deltas[d, o_last, 0], circ)
            w0, w1 = _valid(W, deltas[d, o_last, 1], circ)
            ak = acc[0:L]
            at = acc[L:2 * L]
            for P in range(h0, h1):
                ob = cb + ((P + plh) * Wp + plw) * L
                for Q in range(w0, w1):
                    _add(ak, kb[ob + Q * L:ob + Q * L + L])
                    if want_ntk and not ntk_zero:
                        _add(at, tb[ob + Q * L:ob + Q * L + L])
        stage_ntk_zero = ntk_zero


@numba.njit(cache=True, nogil=True, error_model="numpy")
def slab_pairs(X1, X2, pi, pj, L, ops, fpar, sdim, spad, deltas, V1, V2, consts,
                final_count, circ, want_ntk, out_k, out_t, g_start, g_stop,
                stages, pools, pinv, lut, accoff, accsize, selfvar, out_v):  # pragma: no cover
    """Kernel entries of the image pairs (pi[p], pj[p]) of groups
    ``g_start..g_stop`` (L pairs each); releases the GIL (threads share the
    groups, see ``_run_pairs``). ``selfvar``: pairs (i, i) whose activation
    variances come from their own δ = 0 slabs (``V1``/``V2`` unused), written
    to ``out_v[p]``."""
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
    pk = np.empty(max(accsize, 1) * L, dt)   # window sums of the pooled stages
    pt = np.empty(max(accsize, 1) * L, dt)
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
            for v in range(nv if not selfvar else 0):
                q = V1[i, v]
                va[v * L + k] = q
                va[(nv + v) * L + k] = math.sqrt(q)
                q = V2[j, v]
                vb[v * L + k] = q
                vb[(nv + v) * L + k] = math.sqrt(q)
        _group(L, xa, xb, va, vb, ops, fpar, sdim, spad, deltas, consts, circ, want_ntk,
               kb, tb, tk, tt, acc, stages, pools, pinv, lut, accoff, pk, pt, selfvar)
        for k in range(L):
            p = g * L + k
            if p < npairs:
                out_k[p] = acc[k] * inv_count
                out_t[p] = acc[L + k] * inv_count
                if selfvar:
                    for v in range(nv):
                        out_v[p, v] = va[v * L + k]


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
