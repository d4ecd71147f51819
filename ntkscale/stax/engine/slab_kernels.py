"""Numba driver of the compiled conv path: all slabs of a group of image
pairs (see ``cpu_slab`` for the method).

Everything here is hand-written loops compiled by numba rather than NumPy
array expressions: a slab is a few KiB and each op a short loop over it, so
per-call overhead and temporaries of array expressions would dominate, and
fusing (a Conv's sums, its affine map and the activation in one pass; the
pooling scatter straight into the next stage's sums) keeps the data in
cache. Planning (which slabs, offsets and divisors) is in ``slab_program``.

The pieces: ``slab_ops`` (op encoding, vector primitives, activations and
the pointwise ops), ``slab_conv`` (a Conv op on a slab, incl. the fused
3-wide Conv + ReLU-family pass), ``slab_pool`` (AvgPool between stages);
this module loads the first stage (``_k0_slab``), runs the ops of a stage on
a slab (``_slab_ops``), reduces the final slabs (``_reduce_slab``) and loops
over stages and slabs (``_group``) and over groups (``slab_pairs``). It
re-exports the encoding constants and row kernels for ``slab_program`` and
the tests.

numba's on-disk cache does not notice edits to a callee in another file:
after editing one of the piece modules, delete this folder's ``__pycache__``.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from .slab_conv import conv_relu_fused, conv_slab
from .slab_ops import (ATAN_R, C_FH, C_FW, C_KIND, C_SH, C_STD, C_SW, C_VOFF, CONSTS,
                       FASTMATH, K_ABRELU, K_AFFINE, K_CONV, K_DROP, K_ERF, K_IDENT, K_LNORM, K_LOAD,
                       K_POOL, K_STORE, K_SUM, NCOLS, abrelu_row, add_to, erf_row, fill,
                       dropout_op, pointwise_op, slot_op, valid_range)
from .slab_pool import pool_load, pool_scatter

__all__ = ["ATAN_R", "CONSTS", "C_FH", "C_FW", "C_KIND", "C_SH", "C_STD", "C_SW", "C_VOFF",
           "K_ABRELU", "K_AFFINE", "K_CONV", "K_DROP", "K_ERF", "K_IDENT", "K_LNORM", "K_LOAD", "K_POOL",
           "K_STORE", "K_SUM", "NCOLS",
           "abrelu_row", "erf_row", "slab_pairs"]


@numba.njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _k0_slab(L, xa, xb, sdim, spad, deltas, consts, d, circ, kb):  # pragma: no cover
    """Slab d of the first stage: K0 = <x_a, x_b> / C into ``kb`` (buffer 0);
    ``xa``/``xb``: images ``[c, h, w, lane]``."""
    H0 = sdim[0, 0]
    W0 = sdim[0, 1]
    C = xa.shape[0] // (H0 * W0 * L)
    zero = consts[0]
    cf = consts[16]
    plh = spad[0, 0]
    plw = spad[0, 1]
    Wp = spad[0, 3]
    dh = deltas[d, 0, 0]
    dw = deltas[d, 0, 1]
    fill(kb[0:spad[0, 2] * Wp * L], zero)
    h0, h1 = valid_range(H0, dh, circ)
    w0, w1 = valid_range(W0, dw, circ)
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


@numba.njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _slab_ops(L, va, vb, ops, fpar, sdim, spad, deltas, consts, circ, want_ntk, kb, tb, tk, tt,
              d, o_first, o_last, ntk_zero, capture, sk, sq, szero, lsame):  # pragma: no cover
    """Ops ``o_first..o_last-1`` of a stage on slab d, which starts in buffer
    0 of ``kb``/``tb``; a Conv writes the other buffer (a 3-wide stride-1
    Conv followed by a ReLU-family op runs fused, unless CIRCULAR or
    ``capture``). ``ntk_zero``: Θ is zero on entry. Returns the buffer that
    holds the result and whether Θ is still zero. ``sk``/``sq``/``szero``: the
    branch slots (``slab_ops.slot_op``); ``lsame``: lanes whose pair is one input twice
    (``slab_ops.dropout_op``)."""
    bufsize = kb.shape[0] // 2
    cur = 0
    o = o_first
    while o < o_last:
        kind = ops[o, C_KIND]
        cb = cur * bufsize
        if kind == K_CONV:
            nb = (1 - cur) * bufsize
            use_t = want_ntk and not ntk_zero
            if (not circ and ops[o, C_FW] == 3 and ops[o, C_SW] == 1 and o + 1 < o_last
                    and ops[o + 1, C_KIND] == K_ABRELU and not capture):
                conv_relu_fused(L, kb, tb, tk, tt, cb, nb, va, vb, ops, fpar, sdim, spad, deltas,
                                consts, o, d, want_ntk, use_t)
                o += 1  # the activation ran fused
            else:
                conv_slab(L, kb, tb, tk, tt, cb, nb, ops, fpar, sdim, spad, deltas, consts[0],
                          o, d, circ, want_ntk, use_t)
            cur = 1 - cur
            if want_ntk:
                ntk_zero = False
        elif kind == K_STORE or kind == K_LOAD or kind == K_SUM:
            moved, ntk_zero = slot_op(L, kb, tb, cb, (1 - cur) * bufsize, kind, ops[o, C_FH],
                                      ops[o, C_FW], sk, sq, szero, ntk_zero, want_ntk,
                                      sdim[o, 0], sdim[o, 1], spad[o + 1, 0], spad[o + 1, 1],
                                      spad[o + 1, 2], spad[o + 1, 3], consts[0], fpar[o, 0],
                                      ops[o, C_SH] != 0)
            if moved:
                cur = 1 - cur
        elif kind == K_DROP:
            dropout_op(L, kb, tb, cur * bufsize, o, d, sdim, spad, deltas, lsame, fpar[o, 0],
                       want_ntk and not ntk_zero)
        else:
            pointwise_op(L, kb, tb, cb, va, vb, ops, fpar, sdim, spad, deltas, consts, o, d, circ,
                         want_ntk, ntk_zero, capture)
            if kind == K_AFFINE and want_ntk:
                ntk_zero = False
        o += 1
    return cur, ntk_zero


@numba.njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _reduce_slab(L, kb, tb, cb, d, o, sdim, spad, deltas, circ, acc, use_t):  # pragma: no cover
    """Add the valid entries of final slab d (entering op o, in ``kb[cb:]``/
    ``tb[cb:]``) to the sums ``acc[0:L]`` (Σ) and, with ``use_t``,
    ``acc[L:2L]`` (Θ): GlobalAvgPool sums every slab, Flatten only δ = 0."""
    H = sdim[o, 0]
    W = sdim[o, 1]
    plh = spad[o, 0]
    plw = spad[o, 1]
    Wp = spad[o, 3]
    h0, h1 = valid_range(H, deltas[d, o, 0], circ)
    w0, w1 = valid_range(W, deltas[d, o, 1], circ)
    ak = acc[0:L]
    at = acc[L:2 * L]
    for P in range(h0, h1):
        ob = cb + ((P + plh) * Wp + plw) * L
        for Q in range(w0, w1):
            add_to(ak, kb[ob + Q * L:ob + Q * L + L])
            if use_t:
                add_to(at, tb[ob + Q * L:ob + Q * L + L])


@numba.njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _group(L, xa, xb, va, vb, ops, fpar, sdim, spad, deltas, consts, circ, want_ntk,
           kb, tb, tk, tt, acc, stages, pools, pinv, lut, accoff, pk, pt,
           selfvar, sk, sq, szero, lsame):  # pragma: no cover - compiled
    """All slabs of one group of L image pairs (lane k = pair k).

    Buffers are flat, position-major, lane-minor (``buf[pos * L + k]``), so
    every inner loop runs over a contiguous range (a slab row × L lanes) of
    an array view starting at 0, which LLVM vectorises. ``xa``/``xb``: images
    ``[c, h, w, lane]``; ``va``/``vb``: per activation pixel
    ``[(q, √q), pixel, lane]``. ``acc[0:L]``/``acc[L:2L]`` receive the
    sums of Σ and Θ over the final slabs.

    Stages ``stages[s] = (o0, o1, d0, d1)`` (ops ``o0..o1-1``, slabs
    ``d0..d1-1``) are separated by AvgPool ops ``o1``: every slab of stage s
    adds its window sums to the pooled slabs ``pk``/``pt`` (``pool_scatter``)
    that stage s + 1 starts from (``pool_load``). ``selfvar`` (pairs (i, i);
    slab d0 of every stage has δ = 0): the variances entering each
    activation are copied from that slab before the stage's other slabs
    read them (``pointwise_op``).
    """
    zero = consts[0]
    bufsize = kb.shape[0] // 2
    nstages = stages.shape[0]
    fill(acc, zero)
    if nstages > 1:
        fill(pk, zero)
        if want_ntk:
            fill(pt, zero)
    ntk_zero = True
    for st in range(nstages):
        o_first = stages[st, 0]
        o_last = stages[st, 1]
        stage_ntk_zero = ntk_zero  # Θ is zero on entry to this stage
        for d in range(stages[st, 2], stages[st, 3]):
            if st == 0:
                _k0_slab(L, xa, xb, sdim, spad, deltas, consts, d, circ, kb)
            else:
                pool_load(L, kb, tb, d, o_first, st, sdim, spad, deltas, pinv, accoff, pk, pt,
                          want_ntk and not stage_ntk_zero, zero)
            cur, ntk_zero = _slab_ops(L, va, vb, ops, fpar, sdim, spad, deltas, consts, circ,
                                      want_ntk, kb, tb, tk, tt, d, o_first, o_last,
                                      stage_ntk_zero, selfvar and d == stages[st, 2], sk, sq,
                                      szero, lsame)
            if st + 1 < nstages:
                pool_scatter(L, kb, tb, cur * bufsize, d, o_last, st + 1, ops, sdim, spad,
                             deltas, pools, lut, accoff, pk, pt, want_ntk and not ntk_zero)
            else:
                _reduce_slab(L, kb, tb, cur * bufsize, d, o_last, sdim, spad, deltas, circ, acc,
                             want_ntk and not ntk_zero)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def slab_pairs(X1, X2, pi, pj, L, ops, fpar, sdim, spad, deltas, V1, V2, consts,
                final_count, circ, want_ntk, out_k, out_t, g_start, g_stop,
                stages, pools, pinv, lut, accoff, accsize, selfvar, out_v,
                nslots, same):  # pragma: no cover
    """Kernel entries of the image pairs (pi[p], pj[p]) of groups
    ``g_start..g_stop`` (L pairs each); releases the GIL (threads share the
    groups, see ``_run_pairs``). ``selfvar``: pairs (i, i) whose activation
    variances come from their own δ = 0 slabs (``V1``/``V2`` unused), written
    to ``out_v[p]``. ``nslots``: branch slots of the program (``slab_ops.slot_op``); ``same``: a pair
    (i, i) is one input twice (x2 is x1, or self pairs), for Dropout(mode="train")."""
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
    ns = max(nslots, 1)
    sk = np.empty(ns * maxbuf * L, dt)
    sq = np.empty(ns * maxbuf * L, dt)
    szero = np.ones(ns, np.bool_)
    lsame = np.zeros(L, np.bool_)
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
            lsame[k] = same and i == j
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
               kb, tb, tk, tt, acc, stages, pools, pinv, lut, accoff, pk, pt, selfvar, sk, sq,
               szero, lsame)
        for k in range(L):
            p = g * L + k
            if p < npairs:
                out_k[p] = acc[k] * inv_count
                out_t[p] = acc[L + k] * inv_count
                if selfvar:
                    for v in range(nv):
                        out_v[p, v] = va[v * L + k]
