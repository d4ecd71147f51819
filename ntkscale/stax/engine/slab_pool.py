"""AvgPool between slab stages (numba): scatter into window sums, load back.

Part of the compiled conv path (method: ``cpu_slab``; driver loop:
``slab_kernels``; layout and primitives: ``slab_ops``). An AvgPool op ends a
stage: every slab of the stage adds its entries to the window sums of the
pooled slabs it feeds (``pool_scatter``, into ``pk``/``pt``, slab e at
``accoff[e]``), and each slab of the next stage starts from its window sums
divided by the window sizes (``pool_load``).
"""

from __future__ import annotations

import numba

from .slab_ops import C_FH, C_FW, C_SH, C_SW, FASTMATH, fill, valid_range


@numba.njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def pool_load(L, kb, tb, d, o, st, sdim, spad, deltas, pinv, accoff, pk, pt, use_t,
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
    fill(kb[0:spad[o, 2] * Wp * L], zero)
    if use_t:
        fill(tb[0:spad[o, 2] * Wp * L], zero)
    h0, h1 = valid_range(H, dh, False)
    w0, w1 = valid_range(W, dw, False)
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
    v0, v1 = valid_range(n_out, e, False)
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
def pool_scatter(L, kb, tb, cb, d, o, st, ops, sdim, spad, deltas, pools, lut, accoff, pk, pt,
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
    ih0, ih1 = valid_range(H, dh, False)
    iw0, iw1 = valid_range(W, dw, False)
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
