"""The CUDA slab kernel, written with numba-cuda: one thread block per (image pair, slab).

It interprets the same encoded network (``slab_program.Program``: op table,
slab offsets, stages between AvgPools, window-sum offsets) as the CPU numba
kernel (``slab_kernels``), so the two share every planning decision and
differ only in how a slab is walked. A block holds its slab (Σ and Θ,
double buffered) in dynamic shared memory; each Conv is a stencil over it
fused with the affine map, each activation an elementwise closed form
(ReLU family: Cho & Saul 2009, arc-cosine kernel; Erf: Williams 1997),
separated by ``syncthreads`` barriers. A stage ends either

* in the final GlobalAvgPool/Flatten: a shared-memory tree reduction and
  one ``atomic.add`` per pair into the output, or
* in an AvgPool: every entry of the slab is added (``atomic.add``, several
  slabs feed the same pooled entry) to the window sums of the pooled slabs of
  the next stage, kept per pair in global memory (``pk``/``pt``, the layout
  of ``Program.accoff``); the next stage's launch loads its slabs from them,
  divided by the window sizes (``Program.pinv``).

Activations after an AvgPool need each image's pooled per-pixel variance:
the self pass (pairs (i, i), ``capture``) launches the δ = 0 slab of every
stage first, which writes the variances entering its activations into
``Q``/``S`` (q and √q per activation pixel), then the stage's other slabs.

Branches (``program_walk``: FanOut/parallel/FanIn* as slot steps) keep the
saved slabs of a block (Σ and Θ, compact ``H × W``, slot e at ``2e·maxbuf``)
in shared memory after the reduction area when they fit, else in a global
scratch array per block of the launch (``slot_g``); which one is a launch
argument. A ``store`` copies the current slab (times its FanInConcat weight),
a ``load``/``sum`` writes the next op's layout from the slots (FanInSum and
FanInConcat add, FanInProd multiplies with Θ = Σ_e Θ_e Π_{f≠e} Σ_f), each
followed by a barrier; whether a slot's Θ is zero rides in a bit mask.
LayerNorm divides Σ and Θ by √(q̄ + ε)·√(q̄' + ε) per pixel pair (Novak et al.
2019 §B), the variances captured by the self pass: over spatial axes the
captured δ = 0 slab is averaged across the block (three barrier-separated
passes over ``Q``/``S``). Dropout(mode="train") scales the δ = 0 slab of a
pair of one input twice by 1/rate (Srivastava et al. 2014), test mode is the
identity.

The same source runs on a GPU (CuPy arrays, passed through
``__cuda_array_interface__``) and in numba's CUDA simulator on a CPU
(``NUMBA_ENABLE_CUDASIM=1`` set before ``numba.cuda`` is first imported;
NumPy arrays), which is how CI executes it (tests marked ``cudasim``).
``numba.cuda`` is an optional dependency imported only when a kernel is
built, so ``import ntkscale`` never loads it.
"""

from __future__ import annotations

import math
import os
from typing import Any, Dict

import numpy as np
from numba import types

from . import cuda_device
from .slab_ops import C_FH, C_FW, C_KIND, C_SH, C_STD, C_SW, C_VOFF, K_ABRELU, K_AFFINE, K_CONV, \
    K_DROP, K_ERF, K_LNORM, K_LOAD, K_STORE, K_SUM

__all__ = ["kernels", "simulated", "to_device"]

_BUILT: Dict[str, Any] = {}
#: ``numba.cuda``, bound by ``_build`` (a module global, not a closure: the simulator
#: swaps the module global ``cuda`` of a kernel for its own fake module).
cuda: Any = None


def simulated() -> bool:
    """Whether ``numba.cuda`` is (or will be, once imported) numba's CUDA simulator."""
    import numba.cuda  # noqa: PLC0415 (optional dependency: numba-cuda)

    return bool(getattr(numba.cuda, "simulator_enabled", False)) or \
        os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def kernels(dtype: Any) -> Any:
    """The compiled stage kernel for ``dtype`` (float32 or float64), built once."""
    name = np.dtype(dtype).name
    if name not in _BUILT:
        _BUILT[name] = _build(name)
    return _BUILT[name]


def to_device(array: np.ndarray) -> Any:
    """A device copy of a host array (in the simulator: a fake device array). The kernel
    gets device arrays, so an array passed twice (the self pass's variances) is one
    array, not two host-to-device copies of which the last copied back wins."""
    import numba.cuda  # noqa: PLC0415 (optional dependency: numba-cuda)

    return numba.cuda.to_device(np.ascontiguousarray(array))


def _build(name: str) -> Any:  # noqa: C901 - one kernel and its device functions
    global cuda
    import numba.cuda  # noqa: PLC0415 (optional dependency: numba-cuda)

    cuda = numba.cuda

    T = types.float64 if name == "float64" else types.float32

    dev = cuda_device.build()
    valid_range, abrelu, erf_dual = dev.valid_range, dev.abrelu, dev.erf_dual
    window_axis, ln_capture = dev.window_axis, dev.ln_capture
    slot_store, slot_gather = dev.slot_store, dev.slot_gather

    @cuda.jit(device=True)
    def conv(sm, cur, maxbuf, ops, fpar, sdim, spad, deltas, o, d, circ, want_ntk, use_t, tid, nt):
        """Conv op o on slab d: stencil + affine map from buffer ``cur`` into ``1 − cur``."""
        H = sdim[o, 0]
        W = sdim[o, 1]
        plh = spad[o, 0]
        plw = spad[o, 1]
        Hp = spad[o, 2]
        Wp = spad[o, 3]
        kin = cur * maxbuf
        tin = (2 + cur) * maxbuf
        if circ:  # wrap-fill the input margins
            for pos in range(tid, Hp * Wp, nt):
                r = pos // Wp
                c = pos % Wp
                sr = plh + (r - plh) % H
                sc = plw + (c - plw) % W
                if sr != r or sc != c:
                    sm[kin + pos] = sm[kin + sr * Wp + sc]
                    if use_t:
                        sm[tin + pos] = sm[tin + sr * Wp + sc]
            cuda.syncthreads()
        fh = ops[o, C_FH]
        fw = ops[o, C_FW]
        sh = ops[o, C_SH]
        sw = ops[o, C_SW]
        standard = ops[o, C_STD] != 0
        f0 = fpar[o, 0]
        f1 = fpar[o, 1]
        f2 = fpar[o, 2]
        f3 = fpar[o, 3]
        qlh = spad[o + 1, 0]
        qlw = spad[o + 1, 1]
        Hq = spad[o + 1, 2]
        Wq = spad[o + 1, 3]
        h0, h1 = valid_range(sdim[o + 1, 0], deltas[d, o + 1, 0], circ)
        w0, w1 = valid_range(sdim[o + 1, 1], deltas[d, o + 1, 1], circ)
        kout = (1 - cur) * maxbuf
        tout = (3 - cur) * maxbuf
        zero = f0 - f0
        for pos in range(tid, Hq * Wq, nt):
            P = pos // Wq - qlh
            Q = pos % Wq - qlw
            kn = zero
            tn = zero
            if P >= h0 and P < h1 and Q >= w0 and Q < w1:
                ks = zero
                ts = zero
                for eh in range(fh):
                    row = (sh * P + eh) * Wp + sw * Q
                    for ew in range(fw):
                        ks += sm[kin + row + ew]
                        if use_t:
                            ts += sm[tin + row + ew]
                kn = f0 * ks + f1
                if want_ntk:
                    tn = f2 * ks + f0 * ts + f3 if standard else kn + f0 * ts
            sm[kout + pos] = kn
            sm[tout + pos] = tn
        cuda.syncthreads()

    @cuda.jit(device=True)
    def pointwise(sm, cur, maxbuf, i, j, Q1, S1, Q2, S2, ops, fpar, sdim, spad, deltas, consts,
                  o, d, circ, want_ntk, ntk_zero, capture, same_pair, tid, nt):
        """Activation, LayerNorm, Dropout or Dense-on-images op o on the valid part of
        slab d (in place). ``capture``: slab d is the δ = 0 slab of a self pair (i, i),
        whose entries entering an activation or LayerNorm are its variances: written to
        ``Q1``/``S1`` first. ``same_pair``: the pair is one input twice (Dropout)."""
        kind = ops[o, C_KIND]
        H = sdim[o, 0]
        W = sdim[o, 1]
        plh = spad[o, 0]
        plw = spad[o, 1]
        Hp = spad[o, 2]
        Wp = spad[o, 3]
        dh = deltas[d, o, 0]
        dw = deltas[d, o, 1]
        h0, h1 = valid_range(H, dh, circ)
        w0, w1 = valid_range(W, dw, circ)
        voff = ops[o, C_VOFF]
        standard = ops[o, C_STD] != 0
        f0 = fpar[o, 0]
        f1 = fpar[o, 1]
        f2 = fpar[o, 2]
        f3 = fpar[o, 3]
        zero = consts[0]
        one = consts[1]
        two = consts[2]
        pi_ = consts[3]
        tol = consts[15]
        kb = cur * maxbuf
        tb = (2 + cur) * maxbuf
        if kind == K_LNORM and capture:
            ln_capture(sm, kb, i, Q1, S1, voff, H, W, plh, plw, Wp, ops[o, C_SH] != 0,
                       ops[o, C_SW] != 0, f0, zero, tid, nt)
        drop = kind == K_DROP and same_pair and dh == 0 and dw == 0
        use_t = want_ntk and not ntk_zero
        for pos in range(tid, Hp * Wp, nt):
            P = pos // Wp - plh
            Q = pos % Wp - plw
            if not (P >= h0 and P < h1 and Q >= w0 and Q < w1):
                if kind == K_AFFINE and want_ntk and ntk_zero:
                    sm[tb + pos] = zero
                continue
            if kind == K_DROP:
                if drop:
                    sm[kb + pos] = sm[kb + pos] * f0
                    if use_t:
                        sm[tb + pos] = sm[tb + pos] * f0
                continue
            c = sm[kb + pos]
            ia = voff + P * W + Q
            ib = voff + ((P + dh) % H) * W + (Q + dw) % W
            if capture and (kind == K_ABRELU or kind == K_ERF):
                Q1[i, ia] = c
                S1[i, ia] = math.sqrt(c)
            if kind == K_ABRELU:
                k, dot = abrelu(c, S1[i, ia], S2[j, ib], f0, f1, tol, zero, one)
                sm[kb + pos] = k
                if want_ntk:
                    sm[tb + pos] = sm[tb + pos] * dot
            elif kind == K_ERF:
                k, dot = erf_dual(c, Q1[i, ia], S1[i, ia], Q2[j, ib], S2[j, ib], f0, f1, f2, tol,
                                  one, two, pi_)
                sm[kb + pos] = k
                if want_ntk:
                    sm[tb + pos] = sm[tb + pos] * dot
            elif kind == K_AFFINE:
                kn = f0 * c + f1
                if want_ntk:
                    t = zero if ntk_zero else sm[tb + pos]
                    sm[tb + pos] = f2 * c + f0 * t + f3 if standard else kn + f0 * t
                sm[kb + pos] = kn
            elif kind == K_LNORM:
                f = S1[i, ia] * S2[j, ib]
                sm[kb + pos] = c / f
                if use_t:
                    sm[tb + pos] = sm[tb + pos] / f
        cuda.syncthreads()

    @cuda.jit
    def stage_kernel(X1, X2, pi, pj, Q1, S1, Q2, S2, ops, fpar, sdim, spad, deltas, stages, pools,
                     pinv, lut, accoff, consts, pk, pt, out_k, out_t, st, dstart, nd, maxbuf, circ,
                     want_ntk, capture, inv_count, slot_g, slots_shared, nslots, same):
        """Slabs ``dstart .. dstart + nd − 1`` of stage ``st`` for every pair of the launch:
        block b runs pair ``b // nd`` and slab ``dstart + b % nd``. Branch slots live in
        shared memory after the reduction area (``slots_shared``) or in ``slot_g`` at
        ``b·2·nslots·maxbuf``; ``same``: a pair (i, i) is one input twice."""
        sm = cuda.shared.array(0, T)
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        blk = cuda.blockIdx.x
        p = blk // nd
        d = dstart + blk % nd
        i = pi[p]
        j = pj[p]
        zero = consts[0]
        o0 = stages[st, 0]
        o1 = stages[st, 1]
        ntk_zero = True   # Θ is zero until a Conv or Dense (NTK only)
        for o in range(o0):
            if want_ntk and (ops[o, C_KIND] == K_CONV or ops[o, C_KIND] == K_AFFINE):
                ntk_zero = False
        # ---- load the stage's input slab into buffer 0
        H = sdim[o0, 0]
        W = sdim[o0, 1]
        plh = spad[o0, 0]
        plw = spad[o0, 1]
        Hp = spad[o0, 2]
        Wp = spad[o0, 3]
        dh = deltas[d, o0, 0]
        dw = deltas[d, o0, 1]
        h0, h1 = valid_range(H, dh, circ)
        w0, w1 = valid_range(W, dw, circ)
        use_t = want_ntk and not ntk_zero
        base = accoff[d]
        nw = w1 - w0
        for pos in range(tid, Hp * Wp, nt):
            P = pos // Wp - plh
            Q = pos % Wp - plw
            v = zero
            tv = zero
            if P >= h0 and P < h1 and Q >= w0 and Q < w1:
                if st == 0:  # K0 = <x_a, x_b> / C
                    Pb = (P + dh) % H
                    Qb = (Q + dw) % W
                    for c in range(X1.shape[3]):
                        v += X1[i, P, Q, c] * X2[j, Pb, Qb, c]
                    v = v / consts[16]
                else:        # window sums of the AvgPool before this stage / window sizes
                    f = pinv[st, 0, P] * pinv[st, 0, P + dh] * (pinv[st, 1, Q] * pinv[st, 1, Q + dw])
                    m = base + (P - h0) * nw + (Q - w0)
                    v = pk[p, m] * f
                    if use_t:
                        tv = pt[p, m] * f
            sm[pos] = v
            sm[2 * maxbuf + pos] = tv
        cuda.syncthreads()
        # ---- the stage's ops
        cur = 0
        same_pair = same and i == j
        sbase = 4 * maxbuf + 2 * nt
        gbase = blk * 2 * nslots * maxbuf
        szmask = 0   # bit e: slot e's Θ is zero
        for o in range(o0, o1):
            kind = ops[o, C_KIND]
            if kind == K_CONV:
                conv(sm, cur, maxbuf, ops, fpar, sdim, spad, deltas, o, d, circ, want_ntk,
                     want_ntk and not ntk_zero, tid, nt)
                cur = 1 - cur
                if want_ntk:
                    ntk_zero = False
            elif kind == K_STORE:
                slot = ops[o, C_FH]
                keep_t = want_ntk and not ntk_zero
                if slots_shared:
                    slot_store(sm, cur, maxbuf, sm, sbase, slot, sdim[o, 0], sdim[o, 1],
                               fpar[o, 0], keep_t, tid, nt)
                else:
                    slot_store(sm, cur, maxbuf, slot_g, gbase, slot, sdim[o, 0], sdim[o, 1],
                               fpar[o, 0], keep_t, tid, nt)
                if keep_t:
                    szmask = szmask & ~(1 << slot)
                else:
                    szmask = szmask | (1 << slot)
            elif kind == K_LOAD or kind == K_SUM:
                if slots_shared:
                    ntk_zero = slot_gather(sm, cur, maxbuf, sm, sbase, ops[o, C_FH], ops[o, C_FW],
                                           ops[o, C_SH] != 0, szmask, want_ntk, sdim[o, 0],
                                           sdim[o, 1], spad[o + 1, 0], spad[o + 1, 1],
                                           spad[o + 1, 2], spad[o + 1, 3], zero, tid, nt)
                else:
                    ntk_zero = slot_gather(sm, cur, maxbuf, slot_g, gbase, ops[o, C_FH],
                                           ops[o, C_FW], ops[o, C_SH] != 0, szmask, want_ntk,
                                           sdim[o, 0], sdim[o, 1], spad[o + 1, 0], spad[o + 1, 1],
                                           spad[o + 1, 2], spad[o + 1, 3], zero, tid, nt)
                cur = 1 - cur
            else:
                pointwise(sm, cur, maxbuf, i, j, Q1, S1, Q2, S2, ops, fpar, sdim, spad, deltas,
                          consts, o, d, circ, want_ntk, ntk_zero, capture, same_pair, tid, nt)
                if kind == K_AFFINE and want_ntk:
                    ntk_zero = False
        kb = cur * maxbuf
        tb = (2 + cur) * maxbuf
        use_t = want_ntk and not ntk_zero
        H = sdim[o1, 0]
        W = sdim[o1, 1]
        plh = spad[o1, 0]
        plw = spad[o1, 1]
        Wp = spad[o1, 3]
        h0, h1 = valid_range(H, deltas[d, o1, 0], circ)
        w0, w1 = valid_range(W, deltas[d, o1, 1], circ)
        if o1 == ops.shape[0]:
            # ---- final slab: block reduction, one atomic add per pair
            red = 4 * maxbuf
            sk = zero
            stt = zero
            for pos in range(tid, spad[o1, 2] * Wp, nt):
                P = pos // Wp - plh
                Q = pos % Wp - plw
                if P >= h0 and P < h1 and Q >= w0 and Q < w1:
                    sk += sm[kb + pos]
                    if use_t:
                        stt += sm[tb + pos]
            sm[red + tid] = sk
            sm[red + nt + tid] = stt
            cuda.syncthreads()
            s = nt // 2
            while s > 0:
                if tid < s:
                    sm[red + tid] += sm[red + tid + s]
                    sm[red + nt + tid] += sm[red + nt + tid + s]
                cuda.syncthreads()
                s //= 2
            if tid == 0:
                cuda.atomic.add(out_k, p, sm[red] * inv_count)
                if want_ntk:
                    cuda.atomic.add(out_t, p, sm[red + nt] * inv_count)
            return
        # ---- AvgPool op o1: add the slab to the window sums of stage st + 1
        Ho = sdim[o1 + 1, 0]
        Wo = sdim[o1 + 1, 1]
        kh = ops[o1, C_FH]
        kw = ops[o1, C_FW]
        sh = ops[o1, C_SH]
        sw = ops[o1, C_SW]
        nxt = st + 1
        loh = pools[nxt, 0]
        low = pools[nxt, 1]
        R = (lut.shape[1] - 1) // 2
        for a in range(kh):
            for a2 in range(kh):
                okh, eh, vh0, p0, p1 = window_axis(deltas[d, o1, 0], a, a2, sh, Ho, h0, h1, loh)
                if not okh or p1 <= p0:
                    continue
                for b in range(kw):
                    for b2 in range(kw):
                        okw, ew, vw0, q0, q1 = window_axis(deltas[d, o1, 1], b, b2, sw, Wo, w0, w1,
                                                           low)
                        if not okw or q1 <= q0:
                            continue
                        e = lut[nxt, eh + R, ew + R]
                        if e < 0:
                            continue
                        nrow = min(Wo, Wo - ew) - vw0
                        nq = q1 - q0
                        for t in range(tid, (p1 - p0) * nq, nt):
                            P = p0 + t // nq
                            Q = q0 + t % nq
                            src = (sh * P + a - loh + plh) * Wp + plw + b - low + sw * Q
                            dst = accoff[e] + (P - vh0) * nrow + (Q - vw0)
                            cuda.atomic.add(pk, (p, dst), sm[kb + src])
                            if use_t:
                                cuda.atomic.add(pt, (p, dst), sm[tb + src])

    return stage_kernel
