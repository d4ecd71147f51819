"""The Conv op on one slab (numba): a box stencil plus the affine map.

Part of the compiled conv path (method: ``cpu_slab``; driver loop:
``slab_kernels``; layout and primitives: ``slab_ops``). A Conv reads slab δ
from one half of the double buffer ``kb``/``tb`` (Σ/Θ) and writes the next
op's slab into the other half: output position P of a stride-s,
``fh × fw`` Conv sums the input window starting at ``sP`` (in padded
coordinates), then applies the affine map of ``affine_row`` (NTK
parameterization: ``σ_w²/(fh·fw) · Σ + σ_b²``). The window sum is separable: first the ``fh`` input rows of an output row into
the row scratch ``tk``/``tt``, then ``fw`` columns of that.
"""

from __future__ import annotations

import numba

from .slab_ops import (C_FH, C_FW, C_SH, C_STD, C_SW, C_VOFF, FASTMATH, abrelu1, add_to,
                       affine_row, copy_to, fill, valid_range)


@numba.njit(cache=True)
def _zero_outside(buf, base, L, plh, plw, Hp, Wp, h0, h1, w0, w1, zero):  # pragma: no cover
    """Zero every position of an ``Hp × Wp`` slab buffer except the valid
    rectangle ``[h0, h1) × [w0, w1)`` (interior coordinates)."""
    for r in range(Hp):
        row = buf[base + r * Wp * L:base + (r + 1) * Wp * L]
        if r < plh + h0 or r >= plh + h1 or h0 >= h1 or w0 >= w1:
            fill(row, zero)
        else:
            fill(row[0:(plw + w0) * L], zero)
            fill(row[(plw + w1) * L:Wp * L], zero)


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
        copy_to(dst, a[lo:hi])
        for e in range(1, taps):
            add_to(dst, a[lo + e * rowstride:hi + e * rowstride])


@numba.njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _conv3_relu_row(ko, to, t0, t1, t2, u0, u1, u2, sa, sb, g0, g1, g2, g3, f0, f1,
                    want_ntk, ntk_zero, standard, consts):  # pragma: no cover - compiled
    """Fused: 3-tap column sum of the row sums (t: Σ, u: Θ), the Conv affine
    map (g0..g3 as ``affine_row``) and a ReLU-family activation (f0 = A, f1 = F)."""
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
            k, dot = abrelu1(kn, sa[i], sb[i], f0, f1, one, zero, tol, halfpi,
                             pi_, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14)
            ko[i] = k
    elif ntk_zero:
        for i in range(n):
            ks = t0[i] + t1[i] + t2[i]
            kn = g0 * ks + g1
            tn = g2 * ks + g3 if standard else kn
            k, dot = abrelu1(kn, sa[i], sb[i], f0, f1, one, zero, tol, halfpi,
                             pi_, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14)
            ko[i] = k
            to[i] = tn * dot
    else:
        for i in range(n):
            ks = t0[i] + t1[i] + t2[i]
            ts = u0[i] + u1[i] + u2[i]
            kn = g0 * ks + g1
            tn = g2 * ks + g0 * ts + g3 if standard else kn + g0 * ts
            k, dot = abrelu1(kn, sa[i], sb[i], f0, f1, one, zero, tol, halfpi,
                             pi_, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14)
            ko[i] = k
            to[i] = tn * dot


@numba.njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def conv_relu_fused(L, kb, tb, tk, tt, cb, nb, va, vb, ops, fpar, sdim, spad, deltas, consts,
                    o, d, want_ntk, use_t):  # pragma: no cover - compiled
    """Conv op o (``fh × 3``, column stride 1, not CIRCULAR) and the
    ReLU-family op o + 1 in one pass: slab d from ``kb[cb:]``/``tb[cb:]``
    into ``kb[nb:]``/``tb[nb:]``.

    Per output row: the ``fh`` input rows are summed into ``tk``/``tt``
    (``_row_sum``), then ``_conv3_relu_row`` sums 3 columns, applies the
    affine map and the activation with the variances of op o + 1 (``va``,
    ``vb`` as ``pointwise_op``). ``use_t``: Θ is nonzero on input."""
    zero = consts[0]
    nvl = va.shape[0] // 2
    Wp = spad[o, 3]
    Wo = sdim[o + 1, 1]
    qlh = spad[o + 1, 0]
    qlw = spad[o + 1, 1]
    Hq = spad[o + 1, 2]
    Wq = spad[o + 1, 3]
    fh = ops[o, C_FH]
    sh = ops[o, C_SH]
    dho = deltas[d, o + 1, 0]
    dwo = deltas[d, o + 1, 1]
    h0, h1 = valid_range(sdim[o + 1, 0], dho, False)
    w0, w1 = valid_range(Wo, dwo, False)
    _zero_outside(kb, nb, L, qlh, qlw, Hq, Wq, h0, h1, w0, w1, zero)
    if want_ntk:
        _zero_outside(tb, nb, L, qlh, qlw, Hq, Wq, h0, h1, w0, w1, zero)
    voff = ops[o + 1, C_VOFF]
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
                        tk[j0:j0 + n_], tk[j0 + L:j0 + L + n_], tk[j0 + 2 * L:j0 + 2 * L + n_],
                        tt[j0:j0 + n_], tt[j0 + L:j0 + L + n_], tt[j0 + 2 * L:j0 + 2 * L + n_],
                        va[nvl + ia:nvl + ia + n_], vb[nvl + ib:nvl + ib + n_],
                        fpar[o, 0], fpar[o, 1], fpar[o, 2], fpar[o, 3],
                        fpar[o + 1, 0], fpar[o + 1, 1], want_ntk, not use_t,
                        ops[o, C_STD] != 0, consts)


@numba.njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def conv_slab(L, kb, tb, tk, tt, cb, nb, ops, fpar, sdim, spad, deltas, zero, o, d, circ,
              want_ntk, use_t):  # pragma: no cover - compiled
    """Conv op o, any window and strides: slab d from ``kb[cb:]``/``tb[cb:]``
    into ``kb[nb:]``/``tb[nb:]`` (CIRCULAR: the input's pad margins are
    filled with wrapped values first). ``use_t``: Θ is nonzero on input."""
    H = sdim[o, 0]
    W = sdim[o, 1]
    plh = spad[o, 0]
    plw = spad[o, 1]
    Hp = spad[o, 2]
    Wp = spad[o, 3]
    qlh = spad[o + 1, 0]
    qlw = spad[o + 1, 1]
    Hq = spad[o + 1, 2]
    Wq = spad[o + 1, 3]
    fh = ops[o, C_FH]
    fw = ops[o, C_FW]
    sh = ops[o, C_SH]
    sw = ops[o, C_SW]
    if circ:
        _wrap_fill(kb, cb, L, H, W, plh, plw, Hp, Wp)
        if use_t:
            _wrap_fill(tb, cb, L, H, W, plh, plw, Hp, Wp)
    fill(kb[nb:nb + Hq * Wq * L], zero)
    if want_ntk:
        fill(tb[nb:nb + Hq * Wq * L], zero)
    h0, h1 = valid_range(sdim[o + 1, 0], deltas[d, o + 1, 0], circ)
    w0, w1 = valid_range(sdim[o + 1, 1], deltas[d, o + 1, 1], circ)
    if h0 >= h1 or w0 >= w1:
        return
    j0 = sw * w0 * L
    j1 = (sw * (w1 - 1) + fw) * L
    for P in range(h0, h1):
        # pass 1: sum the fh input rows of output row P
        tr = (P - h0) * Wp * L
        r0 = cb + sh * P * Wp * L
        trow = tk[tr + j0:tr + j1]
        copy_to(trow, kb[r0 + j0:r0 + j1])
        for e in range(1, fh):
            re = r0 + e * Wp * L
            add_to(trow, kb[re + j0:re + j1])
        if use_t:
            trow2 = tt[tr + j0:tr + j1]
            copy_to(trow2, tb[r0 + j0:r0 + j1])
            for e in range(1, fh):
                re = r0 + e * Wp * L
                add_to(trow2, tb[re + j0:re + j1])
        # pass 2: sum fw columns, then the affine map
        ob = nb + ((P + qlh) * Wq + qlw) * L
        krow = kb[ob + w0 * L:ob + w1 * L]
        t_row = tb[ob + w0 * L:ob + w1 * L]
        if sw == 1:
            for e in range(fw):
                te = tr + (w0 + e) * L
                add_to(krow, tk[te:te + krow.shape[0]])
                if use_t:
                    add_to(t_row, tt[te:te + krow.shape[0]])
        else:
            for Q in range(w0, w1):
                kq = kb[ob + Q * L:ob + Q * L + L]
                tq = tb[ob + Q * L:ob + Q * L + L]
                for e in range(fw):
                    te = tr + (sw * Q + e) * L
                    add_to(kq, tk[te:te + L])
                    if use_t:
                        add_to(tq, tt[te:te + L])
        affine_row(krow, t_row, fpar[o, 0], fpar[o, 1], fpar[o, 2], fpar[o, 3], want_ntk,
                   ops[o, C_STD] != 0)
