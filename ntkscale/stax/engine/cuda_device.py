"""Device functions of the CUDA slab kernel (``cuda_kernels``), written with numba-cuda.

The closed forms (ReLU family: Cho & Saul 2009, arc-cosine kernel; Erf: Williams
1997), the AvgPool window arithmetic, the LayerNorm variance capture (Novak et al.
2019 §B) and the branch slot steps (``program_walk``: store, load, FanInSum /
FanInConcat add, FanInProd multiply). Built once by :func:`build` (``numba.cuda`` is
an optional dependency imported only then); each function that takes ``tid``/``nt``
is called by every thread of a block and ends with a barrier.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

__all__ = ["build"]

#: ``numba.cuda``, bound by ``build`` (a module global, not a closure: the simulator
#: swaps the module global ``cuda`` of a device function for its own fake module).
cuda: Any = None


def build() -> SimpleNamespace:  # noqa: C901 - the device functions
    """The device functions, compiled lazily by numba-cuda at the kernel's first launch."""
    global cuda
    import numba.cuda  # noqa: PLC0415 (optional dependency: numba-cuda)

    cuda = numba.cuda

    @cuda.jit(device=True)
    def valid_range(n, delta, circ):
        """Positions P of a slab whose partner P + δ is inside the image."""
        if circ:
            return 0, n
        return max(0, -delta), min(n, n - delta)

    @cuda.jit(device=True)
    def abrelu(c, sa, sb, f0, f1, tol, zero, one):
        """ReLU family (f0 = A, f1 = F), the scale-free form of ``slab_ops.abrelu1``:
        K = F·√(n² − c²) + (A − Fθ)·c, K̇ = A − Fθ, θ = atan2(√(n² − c²), c)."""
        norm = sa * sb
        ac = min(abs(c), norm)
        if ac > norm - tol * norm:
            ac = norm
        s = math.sqrt((norm - ac) * (norm + ac))
        sang = s if norm > zero else one
        sc = ac if c >= zero else -ac
        th = math.atan2(sang, sc)
        dot = f0 - f1 * th
        return f1 * s + dot * sc, dot

    @cuda.jit(device=True)
    def erf_dual(c, qa, sa, qb, sb, a, b, shift, tol, one, two, pi_):
        """a·erf(b·x) + shift (Williams 1997), as ``slab_ops.erf_row``."""
        b2 = b * b
        norm = sa * sb
        ac = min(abs(c), norm)
        if ac > norm - tol * norm:
            ac = norm
        root = math.sqrt(one + two * b2 * (qa + qb) + two * two * b2 * b2 * ((norm - ac) * (norm + ac)))
        dot = a * a * b2 * two * two / pi_ / root
        return a * a * two / pi_ * math.atan2(two * b2 * c, root) + shift * shift, dot

    @cuda.jit(device=True)
    def window_axis(delta, a, a2, stride, n_out, i0, i1, lo):
        """One axis of an AvgPool window offset pair (a, a'), as ``slab_pool._pool_axis``:
        (ok, e, v0, p0, p1): pooled slab offset e = (δ − a' + a)/s, its first valid
        position v0, and the output positions [p0, p1) reading input rows [i0, i1)."""
        nd = delta - a2 + a
        if nd % stride != 0:
            return False, 0, 0, 0, 0
        e = nd // stride
        if e <= -n_out or e >= n_out:
            return False, 0, 0, 0, 0
        v0 = max(0, -e)
        v1 = min(n_out, n_out - e)
        shift = a - lo
        p0 = max(0, -((shift - i0) // stride))
        p1 = max(p0, min(n_out, -((shift - i1) // stride)))
        return True, e, v0, max(p0, v0), min(p1, v1)

    @cuda.jit(device=True)
    def ln_capture(sm, kb, i, Q1, S1, voff, H, W, plh, plw, Wp, avg_h, avg_w, eps, zero, tid, nt):
        """LayerNorm on the δ = 0 slab of a self pair: its entries q become q̄ + ε (q
        averaged over the normalised spatial axes), stored with √(q̄ + ε) in ``Q1``/``S1``
        (as ``slab_ops._capture_ln``). Three passes, each ended by a barrier."""
        for pos in range(tid, H * W, nt):
            Q1[i, voff + pos] = sm[kb + (pos // W + plh) * Wp + plw + pos % W]
        cuda.syncthreads()
        for pos in range(tid, H * W, nt):
            P = pos // W
            Q = pos % W
            tot = zero
            if avg_h and avg_w:
                for m in range(H * W):
                    tot += Q1[i, voff + m]
                v = tot / (H * W)
            elif avg_h:
                for r in range(H):
                    tot += Q1[i, voff + r * W + Q]
                v = tot / H
            elif avg_w:
                for c in range(W):
                    tot += Q1[i, voff + P * W + c]
                v = tot / W
            else:
                v = Q1[i, voff + pos]
            S1[i, voff + pos] = v + eps
        cuda.syncthreads()
        for pos in range(tid, H * W, nt):
            q = S1[i, voff + pos]
            Q1[i, voff + pos] = q
            S1[i, voff + pos] = math.sqrt(q)
        cuda.syncthreads()

    @cuda.jit(device=True)
    def slot_store(sm, cur, maxbuf, sb, sbase, slot, H, W, scale, keep_t, tid, nt):
        """``store``: the current slab (layout without pad margins) times ``scale`` into
        slot ``slot`` of ``sb`` (Σ at ``sbase + 2·slot·maxbuf``, Θ ``maxbuf`` after)."""
        kb = cur * maxbuf
        tb = (2 + cur) * maxbuf
        ko = sbase + 2 * slot * maxbuf
        for pos in range(tid, H * W, nt):
            sb[ko + pos] = sm[kb + pos] * scale
            if keep_t:
                sb[ko + maxbuf + pos] = sm[tb + pos] * scale
        cuda.syncthreads()

    @cuda.jit(device=True)
    def slot_gather(sm, cur, maxbuf, sb, sbase, slot, count, prod, szmask, want_ntk, H, W,
                    qlh, qlw, Hq, Wq, zero, tid, nt):
        """``load`` (count 1) or ``sum`` of slots ``slot .. slot + count − 1`` into buffer
        ``1 − cur`` in the next op's layout (pads ``qlh``/``qlw``, ``Hq × Wq``), zero
        outside; FanInSum/FanInConcat add, ``prod`` (FanInProd) multiplies, in the
        order of ``slab_ops.slot_op``. Returns whether the result's Θ is zero."""
        all_zero = True
        for e in range(slot, slot + count):
            if (szmask >> e) & 1 == 0:
                all_zero = False
        use_t = want_ntk and not all_zero
        kout = (1 - cur) * maxbuf
        tout = (3 - cur) * maxbuf
        b0 = sbase + 2 * slot * maxbuf
        t0 = (szmask >> slot) & 1 == 0
        for pos in range(tid, Hq * Wq, nt):
            P = pos // Wq - qlh
            Q = pos % Wq - qlw
            k = zero
            t = zero
            if P >= 0 and P < H and Q >= 0 and Q < W:
                m = P * W + Q
                k = sb[b0 + m]
                if use_t and t0:
                    t = sb[b0 + maxbuf + m]
                for e in range(slot + 1, slot + count):
                    be = sbase + 2 * e * maxbuf
                    ke = sb[be + m]
                    has_t = (szmask >> e) & 1 == 0
                    if prod:
                        if use_t:
                            if has_t:
                                t = t * ke + k * sb[be + maxbuf + m]
                            else:
                                t = t * ke
                        k = k * ke
                    else:
                        k += ke
                        if use_t and has_t:
                            t += sb[be + maxbuf + m]
            sm[kout + pos] = k
            sm[tout + pos] = t
        cuda.syncthreads()
        return all_zero

    return SimpleNamespace(valid_range=valid_range, abrelu=abrelu, erf_dual=erf_dual,
                           window_axis=window_axis, ln_capture=ln_capture,
                           slot_store=slot_store, slot_gather=slot_gather)
