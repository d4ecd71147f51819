"""Slab kernel building blocks (numba): the op encoding, vector primitives,
the closed-form activations on a row and the pointwise ops on a slab.

Part of the compiled conv path (method: ``cpu_slab``; driver loop:
``slab_kernels``). Buffers are flat, position-major and lane-minor
(``buf[pos * L + k]``, lane k = image pair k of a group); every hot loop runs
over an array *view* starting at 0 so that numba drops its negative-index
handling and LLVM vectorises it. Scalar helpers are inlined at the numba
level; row helpers are separate compiled functions (faster compilation,
same speed).

numba's on-disk cache does not notice edits to a callee in another file:
after editing this module, delete the ``__pycache__`` of this folder.
"""

from __future__ import annotations

import math

import numba

try:  # let LLVM vectorise loops that read/write ~10 array views (default limit: 8 checks)
    import llvmlite.binding as _llvm

    _llvm.set_option("ntkscale", "-runtime-memory-check-threshold=32")
except Exception:  # pragma: no cover - older/newer llvmlite
    pass

#: op kinds and integer op columns of an encoded program (``slab_program.Program``);
#: K_STORE/K_LOAD/K_SUM: branch slots (``program_walk``), K_LNORM: LayerNorm
K_CONV, K_ABRELU, K_ERF, K_IDENT, K_AFFINE, K_POOL, K_STORE, K_LOAD, K_SUM, K_LNORM, K_DROP = range(11)
# integer op columns (K_POOL: C_FH/C_FW window, C_SH/C_SW strides; slot kinds: C_FH slot,
# C_FW count; K_LNORM: C_SH/C_SW average over rows/columns, eps in fpar[o, 0]; K_DROP:
# Dropout(mode="train"), 1/rate in fpar[o, 0])
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
#: fastmath flags of every floating-point kernel (FMA contraction only)
FASTMATH = {"contract"}


@numba.njit(inline="always", fastmath=FASTMATH)
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


@numba.njit(inline="always", fastmath=FASTMATH, error_model="numpy")
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
def valid_range(n, delta, circ):
    """Positions P of a slab whose partner P + δ is inside the image."""
    if circ:
        return 0, n
    return max(0, -delta), min(n, n - delta)


@numba.njit(cache=True)
def fill(dst, value):  # pragma: no cover - compiled
    """dst[:] = value."""
    for i in range(dst.shape[0]):
        dst[i] = value


@numba.njit(cache=True)
def copy_to(dst, src):  # pragma: no cover - compiled
    """dst[:] = src."""
    for i in range(dst.shape[0]):
        dst[i] = src[i]


@numba.njit(cache=True)
def add_to(dst, src):  # pragma: no cover - compiled
    """dst[:] += src."""
    for i in range(dst.shape[0]):
        dst[i] += src[i]


@numba.njit(cache=True, fastmath=FASTMATH)
def affine_row(kr, tr, f0, f1, f2, f3, want_ntk, standard):  # pragma: no cover - compiled
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


@numba.njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def abrelu1(c, sa, sb, f0, f1, one, zero, tol, halfpi, pi_,
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


@numba.njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def abrelu_row(kr, tr, sa, sb, f0, f1, want_ntk, consts):  # pragma: no cover
    """``abrelu1`` on a row (Θ ← Θ·K̇)."""
    one = consts[1]
    zero = consts[0]
    pi_ = consts[3]
    halfpi = consts[4]
    c5, c6, c7, c8, c9 = consts[5], consts[6], consts[7], consts[8], consts[9]
    c10, c11, c12, c13, c14 = consts[10], consts[11], consts[12], consts[13], consts[14]
    tol = consts[15]
    if want_ntk:
        for i in range(kr.shape[0]):
            k, dot = abrelu1(kr[i], sa[i], sb[i], f0, f1, one, zero, tol, halfpi,
                             pi_, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14)
            kr[i] = k
            tr[i] = tr[i] * dot
    else:
        for i in range(kr.shape[0]):
            k, dot = abrelu1(kr[i], sa[i], sb[i], f0, f1, one, zero, tol, halfpi,
                             pi_, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14)
            kr[i] = k


@numba.njit(cache=True, fastmath=FASTMATH, error_model="numpy")
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


@numba.njit(cache=True, error_model="numpy")
def _capture_ln(L, va, vb, voff, nvl, H, W, avg_h, avg_w, eps):  # pragma: no cover
    """LayerNorm of a self pair: the captured per-pixel variances q become
    q̄ + ε (q averaged over the normalised spatial axes, Novak et al. 2019 §B),
    stored with √(q̄ + ε) in ``va`` and ``vb``."""
    for k in range(L):
        if avg_h and avg_w:
            tot = va[voff * L + k] * 0.0
            for i in range(H * W):
                tot += va[(voff + i) * L + k]
            for i in range(H * W):
                va[(voff + i) * L + k] = tot / (H * W)
        elif avg_h:
            for Q in range(W):
                tot = va[(voff + Q) * L + k] * 0.0
                for P in range(H):
                    tot += va[(voff + P * W + Q) * L + k]
                for P in range(H):
                    va[(voff + P * W + Q) * L + k] = tot / H
        elif avg_w:
            for P in range(H):
                tot = va[(voff + P * W) * L + k] * 0.0
                for Q in range(W):
                    tot += va[(voff + P * W + Q) * L + k]
                for Q in range(W):
                    va[(voff + P * W + Q) * L + k] = tot / W
        for i in range(H * W):
            m = (voff + i) * L + k
            q = va[m] + eps
            r = math.sqrt(q)
            va[m] = q
            vb[m] = q
            va[nvl + m] = r
            vb[nvl + m] = r


@numba.njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def scale_row(kr, tr, sa, sb, want_ntk):  # pragma: no cover - compiled
    """LayerNorm on a row: Σ and Θ divided by √(q̄_a + ε)·√(q̄_b + ε)."""
    if want_ntk:
        for i in range(kr.shape[0]):
            f = sa[i] * sb[i]
            kr[i] = kr[i] / f
            tr[i] = tr[i] / f
    else:
        for i in range(kr.shape[0]):
            kr[i] = kr[i] / (sa[i] * sb[i])


@numba.njit(cache=True, error_model="numpy")
def dropout_op(L, kb, tb, cb, o, d, sdim, spad, deltas, lsame, f, use_t):  # pragma: no cover
    """Dropout(mode="train") (Srivastava et al. 2014; neural-tangents' kernel): the
    entries that pair an input with itself at the same pixel — the δ = 0 slab of the
    lanes whose pair is one input twice (``lsame``) — times 1/rate (``f``)."""
    if deltas[d, o, 0] != 0 or deltas[d, o, 1] != 0:
        return
    H = sdim[o, 0]
    W = sdim[o, 1]
    plh = spad[o, 0]
    plw = spad[o, 1]
    Wp = spad[o, 3]
    for P in range(H):
        ob = cb + ((P + plh) * Wp + plw) * L
        for Q in range(W):
            for k in range(L):
                if lsame[k]:
                    kb[ob + Q * L + k] *= f
                    if use_t:
                        tb[ob + Q * L + k] *= f


@numba.njit(cache=True, error_model="numpy")
def _prod_slots(L, kb, tb, nb, slot, count, sk, sq, szero, step, want_ntk, H, W, qlh, qlw, Hq, Wq,
                zero):  # pragma: no cover - compiled
    """FanInProd of slots ``slot..slot+count-1`` into ``kb[nb:]``/``tb[nb:]`` (see
    ``slot_op``); returns whether Θ is zero."""
    fill(kb[nb:nb + Hq * Wq * L], zero)
    all_zero = True
    for e in range(slot, slot + count):
        if not szero[e]:
            all_zero = False
    use_t = want_ntk and not all_zero
    if use_t:
        fill(tb[nb:nb + Hq * Wq * L], zero)
    for P in range(H):
        ob = nb + ((P + qlh) * Wq + qlw) * L
        kr = kb[ob:ob + W * L]
        tr = tb[ob:ob + W * L]
        ib = slot * step + P * W * L
        copy_to(kr, sk[ib:ib + W * L])
        if use_t and not szero[slot]:
            copy_to(tr, sq[ib:ib + W * L])
        for e in range(slot + 1, slot + count):
            ie = e * step + P * W * L
            ke = sk[ie:ie + W * L]
            if use_t:
                if szero[e]:
                    for i in range(W * L):
                        tr[i] = tr[i] * ke[i]
                else:
                    te = sq[ie:ie + W * L]
                    for i in range(W * L):
                        tr[i] = tr[i] * ke[i] + kr[i] * te[i]
            for i in range(W * L):
                kr[i] = kr[i] * ke[i]
    return all_zero


@numba.njit(cache=True, error_model="numpy")
def slot_op(L, kb, tb, cb, nb, kind, slot, count, sk, sq, szero, ntk_zero, want_ntk, H, W,
            qlh, qlw, Hq, Wq, zero, scale, prod):  # pragma: no cover - compiled
    """A branch slot step (``program_walk``) on the slab in ``kb[cb:]``/``tb[cb:]``.

    Slots hold compact ``H × W × L`` slabs (slot e at ``e·H·W·L`` of ``sk``/``sq``;
    ``szero[e]``: its Θ is zero). K_STORE copies the current slab (whose layout has
    no pad margins) into slot ``slot``, times ``scale`` (a FanInConcat weight);
    K_LOAD (count 1) and K_SUM (``count`` slots: FanInSum and FanInConcat add
    them, ``prod`` FanInProd multiplies them, Θ = Σ_e Θ_e Π_{f≠e} Σ_f) write into
    ``kb[nb:]``/``tb[nb:]`` in the next op's layout (pads ``qlh``/``qlw``, size
    ``Hq × Wq``), zero outside. Returns (the result is in ``nb``, Θ is zero)."""
    size = H * W * L
    step = sk.shape[0] // max(szero.shape[0], 1)
    if kind == K_STORE:
        dst = sk[slot * step:slot * step + size]
        src = kb[cb:cb + size]
        for i in range(size):
            dst[i] = src[i] * scale
        z = ntk_zero or not want_ntk
        if not z:
            dst = sq[slot * step:slot * step + size]
            src = tb[cb:cb + size]
            for i in range(size):
                dst[i] = src[i] * scale
        szero[slot] = z
        return False, ntk_zero
    if prod:
        return True, _prod_slots(L, kb, tb, nb, slot, count, sk, sq, szero, step, want_ntk, H, W,
                                 qlh, qlw, Hq, Wq, zero)
    fill(kb[nb:nb + Hq * Wq * L], zero)
    all_zero = True
    for e in range(slot, slot + count):
        if not szero[e]:
            all_zero = False
    if not all_zero:
        fill(tb[nb:nb + Hq * Wq * L], zero)
    for e in range(slot, slot + count):
        for P in range(H):
            ob = nb + ((P + qlh) * Wq + qlw) * L
            ib = e * step + P * W * L
            add_to(kb[ob:ob + W * L], sk[ib:ib + W * L])
            if not szero[e]:
                add_to(tb[ob:ob + W * L], sq[ib:ib + W * L])
    return True, all_zero


@numba.njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def pointwise_op(L, kb, tb, cb, va, vb, ops, fpar, sdim, spad, deltas, consts, o, d, circ,
                 want_ntk, ntk_zero, capture):  # pragma: no cover - compiled
    """Pointwise op o (ReLU family, Erf, Dense-style affine map; identity:
    nothing) on the valid part of slab d in ``kb[cb:]``/``tb[cb:]``.

    ``va``/``vb``: per activation pixel ``[(q, √q), pixel, lane]`` of the two
    images; the partner of position P reads pixel P + δ of image b. In
    CIRCULAR slabs a row's partner column wraps once, so a row with δw ≠ 0 is
    two segments. ``ntk_zero``: Θ is still zero (an affine op clears ``tb``
    first). ``capture``: slab d is the δ = 0 slab of a self pair, whose
    variances entering an activation are stored first (``_capture``)."""
    kind = ops[o, C_KIND]
    zero = consts[0]
    nvl = va.shape[0] // 2
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
    h0, h1 = valid_range(H, dh, circ)
    w0, w1 = valid_range(W, dw, circ)
    if kind == K_AFFINE and want_ntk and ntk_zero:
        fill(tb[cb:cb + Hp * Wp * L], zero)
    voff = ops[o, C_VOFF]
    if capture and (kind == K_ABRELU or kind == K_ERF or kind == K_LNORM):
        _capture(L, kb, cb, va, vb, voff, nvl, H, W, plh, plw, Wp)
        if kind == K_LNORM:
            _capture_ln(L, va, vb, voff, nvl, H, W, ops[o, C_SH] != 0, ops[o, C_SW] != 0, f0)
    for P in range(h0, h1):
        Pb = (P + dh) % H
        ob = cb + ((P + plh) * Wp + plw) * L
        ia = (voff + P * W) * L
        segs = 2 if (circ and dw != 0) else 1
        for seg in range(segs):
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
                           vb[nvl + ib + m0:nvl + ib + m1], f0, f1, want_ntk, consts)
            elif kind == K_ERF:
                erf_row(kr, trr, va[ia + m0:ia + m1], va[nvl + ia + m0:nvl + ia + m1],
                        vb[ib + m0:ib + m1], vb[nvl + ib + m0:nvl + ib + m1],
                        f0, f1, f2, want_ntk, consts)
            elif kind == K_AFFINE:
                affine_row(kr, trr, f0, f1, f2, f3, want_ntk, ops[o, C_STD] != 0)
            elif kind == K_LNORM:
                scale_row(kr, trr, va[nvl + ia + m0:nvl + ia + m1],
                          vb[nvl + ib + m0:nvl + ib + m1], want_ntk and not ntk_zero)
