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
from numba import prange

from ..errors import SpecError
from .activations import (PARALLEL_TOLERANCE_EPS, ABReluImpl, AbsImpl, Elementwise, ErfImpl,
                          IdentityImpl, LeakyReluImpl, ReluImpl)
from .conv import ConvImpl
from .conv_eval import DIAG, FLAT, FULL, ImagePlan
from .dense import DenseImpl
from .layer import LayerImpl
from .pooling import FlattenImpl, GlobalAvgPoolImpl
from .state import KernelState

#: Image pairs processed together, one per SIMD lane.
LANES = 8

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


@numba.njit(inline="always", fastmath=_FM)
def _atan2_pos(y, x, one, halfpi, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14):
    """atan2(y, x) for x ≥ 0, y ≥ 0 with x² + y² = r² given as ``r``... via
    the half-angle of the smaller angle: returns angle in [0, π/2]."""
    num = min(x, y)
    den = max(x, y)
    r = math.sqrt(num * num + den * den)
    t = num / (den + r) if den > 0 else num
    alpha = _atan_small(t, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14)
    alpha = alpha + alpha
    return alpha if y <= x else halfpi - alpha


@numba.njit(cache=True, parallel=True, fastmath=_FM)
def _slab_pairs(X1, X2, pi, pj, ops, fpar, sdim, spad, deltas, V1, V2, consts,
                final_count, circ, want_ntk, out_k, out_t):  # pragma: no cover - compiled
    L = LANES
    npairs = pi.shape[0]
    ngroups = (npairs + L - 1) // L
    H0 = X1.shape[1]
    W0 = X1.shape[2]
    C = X1.shape[3]
    nops = ops.shape[0]
    nst = nops + 1
    ndelta = deltas.shape[0]
    nv = V1.shape[1]
    dt = X1.dtype
    zero = consts[0]
    one = consts[1]
    two = consts[2]
    pi_ = consts[3]
    halfpi = consts[4]
    c5, c6, c7, c8, c9 = consts[5], consts[6], consts[7], consts[8], consts[9]
    c10, c11, c12, c13, c14 = consts[10], consts[11], consts[12], consts[13], consts[14]
    tol = consts[15]
    cf = consts[16]
    inv_count = one / final_count
    maxbuf = 1
    for s in range(nst):
        maxbuf = max(maxbuf, spad[s, 2] * spad[s, 3])
    maxt = 1
    for o in range(nops):
        if ops[o, C_KIND] == K_CONV:
            maxt = max(maxt, sdim[o + 1, 0] * spad[o, 3])
    for g in prange(ngroups):
        kb = np.zeros((2, maxbuf, L), dt)
        tb = np.zeros((2, maxbuf, L), dt)
        tk = np.empty((maxt, L), dt)
        tt = np.empty((maxt, L), dt)
        xa = np.empty((H0 * W0 * C, L), dt)
        xb = np.empty((H0 * W0 * C, L), dt)
        vas = np.empty((nv, L), dt)
        var_ = np.empty((nv, L), dt)
        vaq = np.empty((nv, L), dt)
        vbs = np.empty((nv, L), dt)
        vbr = np.empty((nv, L), dt)
        vbq = np.empty((nv, L), dt)
        acck = np.zeros(L, dt)
        acct = np.zeros(L, dt)
        for k in range(L):
            p = min(g * L + k, npairs - 1)
            i = pi[p]
            j = pj[p]
            m = 0
            for h in range(H0):
                for w in range(W0):
                    for c in range(C):
                        xa[m, k] = X1[i, h, w, c]
                        xb[m, k] = X2[j, h, w, c]
                        m += 1
            for v in range(nv):
                q = V1[i, v]
                s = math.sqrt(q)
                vaq[v, k] = q
                vas[v, k] = s
                var_[v, k] = one / s if s > zero else zero
                q = V2[j, v]
                s = math.sqrt(q)
                vbq[v, k] = q
                vbs[v, k] = s
                vbr[v, k] = one / s if s > zero else zero
        for d in range(ndelta):
            # ---- stage 0: K0 = <x_a, x_b> / C on the slab
            H = sdim[0, 0]
            W = sdim[0, 1]
            plh = spad[0, 0]
            plw = spad[0, 1]
            Hp = spad[0, 2]
            Wp = spad[0, 3]
            dh = deltas[d, 0, 0]
            dw = deltas[d, 0, 1]
            cur = 0
            for m in range(Hp * Wp):
                for k in range(L):
                    kb[cur, m, k] = zero
            h0 = 0 if circ else max(0, -dh)
            h1 = H if circ else min(H, H - dh)
            w0 = 0 if circ else max(0, -dw)
            w1 = W if circ else min(W, W - dw)
            for P in range(h0, h1):
                Pb = (P + dh) % H
                for Q in range(w0, w1):
                    Qb = (Q + dw) % W
                    row = (P + plh) * Wp + Q + plw
                    ia = (P * W0 + Q) * C
                    ib = (Pb * W0 + Qb) * C
                    for c in range(C):
                        for k in range(L):
                            kb[cur, row, k] += xa[ia + c, k] * xb[ib + c, k]
                    for k in range(L):
                        kb[cur, row, k] = kb[cur, row, k] / cf
            ntk_zero = True
            for o in range(nops):
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
                if kind == K_CONV:
                    Ho = sdim[o + 1, 0]
                    Wo = sdim[o + 1, 1]
                    qlh = spad[o + 1, 0]
                    qlw = spad[o + 1, 1]
                    Wq = spad[o + 1, 3]
                    Hq = spad[o + 1, 2]
                    dho = deltas[d, o + 1, 0]
                    dwo = deltas[d, o + 1, 1]
                    fh = ops[o, C_FH]
                    fw = ops[o, C_FW]
                    sh = ops[o, C_SH]
                    sw = ops[o, C_SW]
                    nxt = 1 - cur
                    use_t = want_ntk and not ntk_zero
                    if circ:
                        _wrap_fill(kb, cur, H, W, plh, plw, Hp, Wp)
                        if use_t:
                            _wrap_fill(tb, cur, H, W, plh, plw, Hp, Wp)
                    for m in range(Hq * Wq):
                        for k in range(L):
                            kb[nxt, m, k] = zero
                    if want_ntk:
                        for m in range(Hq * Wq):
                            for k in range(L):
                                tb[nxt, m, k] = zero
                    h0 = 0 if circ else max(0, -dho)
                    h1 = Ho if circ else min(Ho, Ho - dho)
                    w0 = 0 if circ else max(0, -dwo)
                    w1 = Wo if circ else min(Wo, Wo - dwo)
                    if h0 < h1 and w0 < w1:
                        j0 = sw * w0
                        j1 = sw * (w1 - 1) + fw
                        # pass 1: sum the fh rows of each output row
                        for P in range(h0, h1):
                            tr = (P - h0) * Wp
                            r0 = sh * P * Wp
                            for jj in range(j0, j1):
                                for k in range(L):
                                    tk[tr + jj, k] = kb[cur, r0 + jj, k]
                            for e in range(1, fh):
                                re = r0 + e * Wp
                                for jj in range(j0, j1):
                                    for k in range(L):
                                        tk[tr + jj, k] += kb[cur, re + jj, k]
                            if use_t:
                                for jj in range(j0, j1):
                                    for k in range(L):
                                        tt[tr + jj, k] = tb[cur, r0 + jj, k]
                                for e in range(1, fh):
                                    re = r0 + e * Wp
                                    for jj in range(j0, j1):
                                        for k in range(L):
                                            tt[tr + jj, k] += tb[cur, re + jj, k]
                        # pass 2: sum fw columns, affine map
                        for P in range(h0, h1):
                            tr = (P - h0) * Wp
                            orow = (P + qlh) * Wq + qlw
                            for Q in range(w0, w1):
                                base = tr + sw * Q
                                oi = orow + Q
                                for k in range(L):
                                    kb[nxt, oi, k] = tk[base, k]
                                for e in range(1, fw):
                                    for k in range(L):
                                        kb[nxt, oi, k] += tk[base + e, k]
                                if use_t:
                                    for k in range(L):
                                        tb[nxt, oi, k] = tt[base, k]
                                    for e in range(1, fw):
                                        for k in range(L):
                                            tb[nxt, oi, k] += tt[base + e, k]
                                if want_ntk:
                                    if ops[o, C_STD] == 0:
                                        for k in range(L):
                                            kn = f0 * kb[nxt, oi, k] + f1
                                            tb[nxt, oi, k] = kn + f0 * tb[nxt, oi, k]
                                            kb[nxt, oi, k] = kn
                                    else:
                                        for k in range(L):
                                            ks = kb[nxt, oi, k]
                                            tb[nxt, oi, k] = f2 * ks + f0 * tb[nxt, oi, k] + f3
                                            kb[nxt, oi, k] = f0 * ks + f1
                                else:
                                    for k in range(L):
                                        kb[nxt, oi, k] = f0 * kb[nxt, oi, k] + f1
                    cur = nxt
                    if want_ntk:
                        ntk_zero = False
                    continue
                # ---- pointwise ops on the valid part of the slab
                h0 = 0 if circ else max(0, -dh)
                h1 = H if circ else min(H, H - dh)
                w0 = 0 if circ else max(0, -dw)
                w1 = W if circ else min(W, W - dw)
                if kind == K_AFFINE and want_ntk and ntk_zero:
                    for m in range(Hp * Wp):
                        for k in range(L):
                            tb[cur, m, k] = zero
                voff = ops[o, C_VOFF]
                for P in range(h0, h1):
                    Pb = (P + dh) % H
                    for Q in range(w0, w1):
                        Qb = (Q + dw) % W
                        idx = (P + plh) * Wp + Q + plw
                        ia = voff + P * W + Q
                        ib = voff + Pb * W + Qb
                        if kind == K_ABRELU:
                            for k in range(L):
                                c = kb[cur, idx, k]
                                norm = vas[ia, k] * vbs[ib, k]
                                rho = c * (var_[ia, k] * vbr[ib, k])
                                rho = min(max(rho, -one), one)
                                rho = one if rho > one - tol else rho
                                rho = -one if rho < tol - one else rho
                                a = abs(rho)
                                s = math.sqrt((one - a) * (one + a))
                                num = min(a, s)
                                den = max(a, s)
                                t = num / (den + one)
                                al = _atan_small(t, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14)
                                al = al + al
                                th = al if s <= a else halfpi - al
                                th = th if rho >= zero else pi_ - th
                                dot = f0 - f1 * th
                                kb[cur, idx, k] = norm * (f1 * s + dot * rho)
                                if want_ntk:
                                    tb[cur, idx, k] = tb[cur, idx, k] * dot
                        elif kind == K_ERF:
                            b2 = f1 * f1
                            for k in range(L):
                                c = kb[cur, idx, k]
                                qa = vaq[ia, k]
                                qb = vbq[ib, k]
                                norm = vas[ia, k] * vbs[ib, k]
                                rho = c * (var_[ia, k] * vbr[ib, k])
                                rho = min(max(rho, -one), one)
                                rho = one if rho > one - tol else rho
                                rho = -one if rho < tol - one else rho
                                g2 = norm * norm * ((one - rho) * (one + rho))
                                det = one + two * b2 * (qa + qb) + two * two * b2 * b2 * g2
                                root = math.sqrt(det)
                                y = two * b2 * c
                                ang = _atan2_pos(abs(y), root, one, halfpi,
                                                 c5, c6, c7, c8, c9, c10, c11, c12, c13, c14)
                                ang = ang if y >= zero else -ang
                                kb[cur, idx, k] = f0 * f0 * two / pi_ * ang + f2 * f2
                                if want_ntk:
                                    tb[cur, idx, k] = tb[cur, idx, k] * (
                                        f0 * f0 * b2 * two * two / pi_ / root)
                        elif kind == K_AFFINE:
                            if want_ntk:
                                if ops[o, C_STD] == 0:
                                    for k in range(L):
                                        kn = f0 * kb[cur, idx, k] + f1
                                        tb[cur, idx, k] = kn + f0 * tb[cur, idx, k]
                                        kb[cur, idx, k] = kn
                                else:
                                    for k in range(L):
                                        ks = kb[cur, idx, k]
                                        tb[cur, idx, k] = f2 * ks + f0 * tb[cur, idx, k] + f3
                                        kb[cur, idx, k] = f0 * ks + f1
                            else:
                                for k in range(L):
                                    kb[cur, idx, k] = f0 * kb[cur, idx, k] + f1
                if kind == K_AFFINE and want_ntk:
                    ntk_zero = False
            # ---- final reduction (GlobalAvgPool: every slab; Flatten: δ = 0)
            H = sdim[nops, 0]
            W = sdim[nops, 1]
            plh = spad[nops, 0]
            plw = spad[nops, 1]
            Wp = spad[nops, 3]
            dh = deltas[d, nops, 0]
            dw = deltas[d, nops, 1]
            h0 = 0 if circ else max(0, -dh)
            h1 = H if circ else min(H, H - dh)
            w0 = 0 if circ else max(0, -dw)
            w1 = W if circ else min(W, W - dw)
            for P in range(h0, h1):
                for Q in range(w0, w1):
                    idx = (P + plh) * Wp + Q + plw
                    for k in range(L):
                        acck[k] += kb[cur, idx, k]
                    if want_ntk and not ntk_zero:
                        for k in range(L):
                            acct[k] += tb[cur, idx, k]
        for k in range(L):
            p = g * L + k
            if p < npairs:
                out_k[p] = acck[k] * inv_count
                out_t[p] = acct[k] * inv_count


@numba.njit(inline="always")
def _wrap_fill(buf, cur, H, W, plh, plw, Hp, Wp):  # pragma: no cover - compiled
    """Fill the pad margins of a slab buffer with wrapped values (CIRCULAR)."""
    for r in range(Hp):
        sr = plh + (r - plh) % H
        for c in range(Wp):
            sc = plw + (c - plw) % W
            if sr != r or sc != c:
                for k in range(LANES):
                    buf[cur, r * Wp + c, k] = buf[cur, sr * Wp + sc, k]


# ------------------------------------------------------------- planning
def _image_end(layers: List[LayerImpl], plan: ImagePlan) -> int:
    """Index of the GlobalAvgPool/Flatten that makes the state flat."""
    for l in range(len(layers)):
        if plan.hw[l + 1] is None:
            return l
    raise AssertionError("image plan without a flat output")  # pragma: no cover


def supports(layers: List[LayerImpl], plan: ImagePlan, x1: Any, xp: Any) -> bool:
    """True when the compiled slab path handles this network and input."""
    if not isinstance(x1, np.ndarray) or x1.dtype not in (np.float32, np.float64):
        return False
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
        eps = float(np.finfo(dtype).eps)
        self.consts = np.array(_CONSTS + (PARALLEL_TOLERANCE_EPS * eps, float(plan.input_shape[2])),
                               dtype=dtype)
        self.fpar = self.fpar.astype(dtype)


def _variances(layers: List[LayerImpl], prog: _Program, plan: ImagePlan, x: np.ndarray) -> np.ndarray:
    """Per-pixel self-variance entering every activation, ``(n, nvar)``:
    the diagonal-only self recursion (exact without pooling)."""
    n = x.shape[0]
    out = np.empty((n, max(prog.nvar, 1)), x.dtype)
    var = np.sum(x * x, axis=-1) / x.shape[-1]
    state = KernelState(nngp=var, ntk=None, var1=var, var2=None, diagonal_batch=True,
                        width=int(x.shape[-1]), spatial=plan.hw[0], diagonal_spatial=True)
    voff = 0
    for l in range(prog.end):
        if l in prog.act_layers:
            h, w = plan.hw[l]
            out[:, voff:voff + h * w] = np.reshape(state.var1, (n, h * w))
            voff += h * w
        layer = layers[l]
        if prog.ops[l, C_STD] and state.width is None:
            state = state.replace(width=1)  # only the NTK depends on widths
        state = layer.kernel(state, np)
        state = state.replace(var1=state.nngp)
    return out


def _run_pairs(prog: _Program, x1: np.ndarray, x2: np.ndarray, v1: np.ndarray, v2: np.ndarray,
               pi: np.ndarray, pj: np.ndarray, want_ntk: bool) -> Tuple[np.ndarray, np.ndarray]:
    out_k = np.empty(pi.shape[0], x1.dtype)
    out_t = np.empty(pi.shape[0], x1.dtype)
    _slab_pairs(x1, x2, pi, pj, prog.ops, prog.fpar, prog.sdim, prog.spad, prog.deltas,
                v1, v2, prog.consts, x1.dtype.type(prog.count), prog.circ, want_ntk, out_k, out_t)
    return out_k, out_t


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


def _tail(layers: List[LayerImpl], prog: _Program, k: np.ndarray, t: Optional[np.ndarray],
          var1: np.ndarray, var2: Optional[np.ndarray], diagonal_batch: bool,
          want_ntk: bool) -> Dict[str, Any]:
    state = KernelState(nngp=k, ntk=t if want_ntk else None, var1=var1, var2=var2,
                        diagonal_batch=diagonal_batch, width=prog.width_out)
    for layer in layers[prog.end + 1:]:
        state = layer.kernel(state, np)
    out = {"nngp": state.nngp}
    if want_ntk:
        ntk = state.ntk
        out["ntk"] = ntk if hasattr(ntk, "shape") else np.zeros_like(state.nngp) + ntk
    return out


def _needs_tail_variances(layers: List[LayerImpl], prog: _Program) -> bool:
    return any(isinstance(layer, Elementwise) for layer in layers[prog.end + 1:])


def _self_values(prog: _Program, x: np.ndarray, v: np.ndarray, want_ntk: bool):
    idx = np.arange(x.shape[0], dtype=np.int64)
    return _run_pairs(prog, x, x, v, v, idx, idx, want_ntk)


def evaluate(layers: List[LayerImpl], plan: ImagePlan, x1: np.ndarray, x2: Optional[np.ndarray], *,
             want_ntk: bool, memory_budget: int) -> Dict[str, Any]:
    """All pairs of x1 and x2 (x2=None: x1, upper triangle mirrored)."""
    symmetric = x2 is None
    x1 = np.ascontiguousarray(x1)
    x2f = x1 if symmetric else np.ascontiguousarray(x2)
    prog = _Program(layers, plan, x1.dtype)
    v1 = _variances(layers, prog, plan, x1)
    v2 = v1 if symmetric else _variances(layers, prog, plan, x2f)
    n1, n2 = x1.shape[0], x2f.shape[0]
    k = np.empty((n1, n2), x1.dtype)
    t = np.empty((n1, n2), x1.dtype) if want_ntk else None
    chunk = int(max(LANES, min(CHUNK_PAIRS, memory_budget // 64)))
    for pi, pj in _pair_chunks(n1, n2, symmetric, chunk):
        ok, ot = _run_pairs(prog, x1, x2f, v1, v2, pi, pj, want_ntk)
        k[pi, pj] = ok
        if symmetric:
            k[pj, pi] = ok
        if want_ntk:
            t[pi, pj] = ot
            if symmetric:
                t[pj, pi] = ot
    tail_var1 = tail_var2 = None
    if _needs_tail_variances(layers, prog):
        tail_var1 = np.diagonal(k).copy() if symmetric else _self_values(prog, x1, v1, False)[0]
        tail_var2 = tail_var1 if symmetric else _self_values(prog, x2f, v2, False)[0]
    else:
        tail_var1 = np.zeros(n1, x1.dtype)
        tail_var2 = np.zeros(n2, x1.dtype)
    return _tail(layers, prog, k, t, tail_var1, tail_var2, False, want_ntk)


def evaluate_diagonal(layers: List[LayerImpl], plan: ImagePlan, x: np.ndarray, *,
                      want_ntk: bool, memory_budget: int) -> Dict[str, Any]:
    """``k(x_i, x_i)`` for every image."""
    x = np.ascontiguousarray(x)
    prog = _Program(layers, plan, x.dtype)
    v = _variances(layers, prog, plan, x)
    k, t = _self_values(prog, x, v, want_ntk)
    return _tail(layers, prog, k, t, k.copy(), None, True, want_ntk)


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
