"""The image part of a network encoded for the slab kernels (``slab_kernels``).

AvgPool (window k, stride s, padding lo) couples slabs: the pooled slab δ'
at P averages the input pairs (sP + a − lo, sP + sδ' + a' − lo), i.e. input
slabs δ = sδ' + (a' − a). So the layer program is cut into *stages* at the
AvgPools. Walking back from the end (Flatten: δ = 0; GlobalAvgPool: all
offsets), each stage needs at its end the offsets sδ' + e, |e| < k, of the
offsets δ' the next stage needs (Myrtle: all offsets before the last pools).
Per group of pairs, every slab of a stage runs through the stage's layers
and adds its entries to the window sums of the next stage's slabs (kept per
thread: about the full pooled pixel-pair covariance, see
``MAX_SCRATCH_BYTES``); the next stage divides them by the window sizes
and goes on. Activations after a pool need each image's pooled per-pixel
variance: a first pass over the self pairs (i, i) takes it from the pair's
own δ = 0 slab (computed first in every stage) before the other slabs use it.

Supported: Conv (any filter and strides; SAME/VALID, or CIRCULAR everywhere
with strides dividing the image), Dense on images, ReLU family
(Relu/LeakyRelu/Abs/ABRelu), Erf, Identity, AvgPool (SAME/VALID, any window
and strides, ``normalize_edges``; not with CIRCULAR padding anywhere),
LayerNorm (channel axis, optionally the spatial axes: per pixel, Σ and Θ
divided by √(q̄ + ε)·√(q̄' + ε), q̄ the self-variance averaged over them),
Dropout (test: identity; train: the δ = 0 slab of a pair of one input twice
times 1/rate), and FanOut/parallel/FanInSum/FanInProd/FanInConcat blocks
(``program_walk``: the branches run one after the other on the same slab,
saved in per-lane slots, and combine slab by slab; every branch of a block
must have the same Conv strides, and no pooling inside branches), ending in
GlobalAvgPool or Flatten, then any flat layers (run by the reference code on
the ``n1 × n2`` result). Branched and LayerNorm programs take their
per-pixel variances from the self pairs' δ = 0 slabs, like pooled ones
(``selfvar``). Other image networks (Gelu/Sin on images, CIRCULAR pooling)
use the array-API path; the CUDA kernel (cuda_kernels.py) runs the same
programs. Arithmetic is in the input dtype. Parity with the reference path
is tested in ``tests/stax/test_conv_fast.py`` and
``tests/stax/test_residual_fast.py``.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from ...errors import SpecError
from .program_walk import BRANCH_STEPS, Step, check_steps, concat_scales, flatten
from .slab_kernels import (C_FH, C_FW, C_KIND, C_SH, C_STD, C_SW, C_VOFF, CONSTS, K_ABRELU,
    K_AFFINE, K_CONV, K_DROP, K_ERF, K_IDENT, K_LNORM, K_LOAD, K_POOL, K_STORE, K_SUM, NCOLS)
from .reference_image import ImagePlan
from ..layers.base import PARALLEL_TOLERANCE_EPS, LayerImpl

_ACT_KINDS = {"Relu": K_ABRELU, "LeakyRelu": K_ABRELU, "Abs": K_ABRELU,
              "ABRelu": K_ABRELU, "Erf": K_ERF, "Identity": K_IDENT}

#: Layers the slab kernels run on images (by registry name), up to and
#: including the GlobalAvgPool/Flatten that ends the image part.
SUPPORTED_LAYERS = frozenset({"Conv", "Dense", "AvgPool", "GlobalAvgPool", "Flatten",
                              "LayerNorm", "Dropout"} | set(_ACT_KINDS) | BRANCH_STEPS)
_SLOT_KINDS = {"store": K_STORE, "load": K_LOAD, "sum": K_SUM}
#: Layers of the numba slab kernel that a kernel without pooling stages lacks: none.
CPU_ONLY: frozenset = frozenset()

#: Image pairs processed together (one per lane of every inner loop): at
#: least LANES_MIN, and as many more (up to LANES_MAX) as keep a thread's
#: scratch within SCRATCH_BYTES. Longer lanes amortise the per-row loop
#: overhead (measured: 64 lanes ≈ 1.3× faster than 16 on 8×8 images); every
#: thread still gets ≥ 4 groups (see ``cpu_slab._run_pairs``).
LANES_MIN, LANES_MAX = 8, 64
SCRATCH_BYTES = 8 << 20
#: Networks with AvgPool keep the window sums of every pooled stage per
#: thread (about the full pixel-pair covariance after the first pool:
#: (H/2)²(W/2)² values per lane and Σ/Θ, ~9 MB at 32×32 with 8 lanes);
#: larger ones use the reference path.
MAX_SCRATCH_BYTES = 512 << 20


# ------------------------------------------------------------- planning
def _image_end(layers: List[LayerImpl], plan: ImagePlan) -> int:
    """Index of the GlobalAvgPool/Flatten that makes the state flat."""
    for l in range(len(layers)):
        if plan.hw[l + 1] is None:
            return l
    raise AssertionError("image plan without a flat output")  # pragma: no cover


def _step_hws(steps: List[Step], hw0: Tuple[int, int]) -> List[Tuple[int, int]]:
    """Image shape entering every step (and after the last)."""
    out, cur, saved = [], tuple(hw0), {}
    for step in steps:
        if step.kind in ("load", "sum"):
            cur = saved[step.slot]
        out.append(cur)
        if step.kind == "store":
            saved[step.slot] = cur
        elif step.kind == "layer" and step.layer.layer_name in ("Conv", "AvgPool"):
            cur = tuple(step.layer.output_hw(cur))
    return out + [cur]


def _multipliers(steps: List[Step]) -> Union[np.ndarray, str]:
    """Per step, the Conv stride product (h, w) from its entry to the end of its
    stage (the next top-level AvgPool, or the end) along its own branch: slab
    offset δ at the stage end is δ·m at the step. All branches of a block must
    agree on it (else a reason string)."""
    n = len(steps)
    mult = np.ones((n + 1, 2), np.int64)
    cur: Optional[Tuple[int, int]] = (1, 1)
    slots: dict = {}
    for o in range(n - 1, -1, -1):
        step = steps[o]
        if step.kind == "sum":
            for e in range(step.slot, step.slot + step.count):
                slots[e] = cur
            mult[o] = cur
            cur = None
        elif step.kind == "load":
            slots[step.slot] = cur
            mult[o] = cur
            cur = None
        elif step.kind == "store":
            want = slots.pop(step.slot)
            if cur is not None and want != cur:
                return (f"{step.where}: the branches of this block have different strides "
                        f"({cur} and {want}); the slab kernel needs equal ones")
            cur = want
            mult[o] = cur
        else:
            layer = step.layer
            if layer.layer_name == "AvgPool":
                cur = (1, 1)
            elif layer.layer_name == "Conv":
                cur = (cur[0] * layer.strides[0], cur[1] * layer.strides[1])
            mult[o] = cur
    return mult


def unsupported(layers: Sequence[LayerImpl], plan: ImagePlan, pooling: bool = True) -> Optional[str]:
    """Why the slab formulation cannot run this network (any backend), or None.

    ``pooling=False``: for kernels without AvgPool stages (CUDA). The layers
    up to GlobalAvgPool/Flatten must be in ``SUPPORTED_LAYERS`` (branches as
    FanOut/parallel/FanInSum blocks, see ``program_walk``); the flat layers
    after it run the reference maps on the ``n1 × n2`` result.
    """
    layers = list(layers)
    end = _image_end(layers, plan)
    if layers[end].layer_name not in ("GlobalAvgPool", "Flatten"):
        return f"layer {end} ({layers[end].layer_name}) cannot end the image part"
    steps, _, why = flatten(layers[:end])
    if why is not None:
        return why
    for step in steps:
        name = step.name if step.kind == "layer" else "FanOut"
        if name not in SUPPORTED_LAYERS:
            return f"{step.where} ({name}) on images has no compiled slab kernel"
        if not pooling and name in CPU_ONLY:   # the CUDA kernel has none of these
            return f"{step.where} ({name}): this slab kernel has no {name} op"
    mult = _multipliers(steps)
    if isinstance(mult, str):
        return mult
    hws = _step_hws(steps, plan.hw[0])
    named = [(s.where, s.layer, hws[o]) for o, s in enumerate(steps) if s.kind == "layer"]
    convs = [(w, x, hw) for w, x, hw in named if x.layer_name == "Conv"]
    pools = [(w, x, hw) for w, x, hw in named if x.layer_name == "AvgPool"]
    if pools:
        if not pooling:
            return f"{pools[0][0]} (AvgPool): this slab kernel has no pooling stages"
        circ = [(w, x) for w, x, _ in convs + pools if x.padding == "CIRCULAR"]
        if circ:
            return (f"{circ[0][0]} ({circ[0][1].layer_name}) has CIRCULAR padding, which "
                    "the slab kernel does not combine with AvgPool")
        per_lane = Program(layers, plan, np.dtype(np.float64)).scratch_per_lane
        if per_lane * LANES_MIN > MAX_SCRATCH_BYTES:
            return (f"the AvgPool window sums need {per_lane * LANES_MIN >> 20} MiB per thread, "
                    f"over the slab kernel's {MAX_SCRATCH_BYTES >> 20} MiB")
        return None
    circular = [x.padding == "CIRCULAR" for _, x, _ in convs]
    if any(circular) and not all(circular):
        w = next(w for w, x, _ in convs if x.padding != "CIRCULAR")
        return f"{w} (Conv) is not CIRCULAR while other Convs are (mixed padding)"
    if any(circular):
        for w, layer, (h, wd) in convs:
            if h % layer.strides[0] or wd % layer.strides[1]:
                return (f"{w} (Conv, CIRCULAR): strides {tuple(layer.strides)} do not divide "
                        f"its {h}x{wd} input")
    return None


def _window_counts(pool: LayerImpl, axis: int, n_in: int, n_out: int, lo: int) -> np.ndarray:
    """Divisor of each output position of ``pool`` along ``axis``: the
    window size, or with ``normalize_edges`` (SAME) the in-image part."""
    k, s = pool.window[axis], pool.strides[axis]
    if not (pool.params["normalize_edges"] and pool.padding == "SAME"):
        return np.full(n_out, float(k))
    start = np.arange(n_out) * s - lo
    return (np.minimum(start + k, n_in) - np.maximum(start, 0)).astype(np.float64)


class Program:
    """The image part of a network encoded for ``slab_kernels.slab_pairs``:
    op table, slab offsets per stage, lanes and scratch sizes."""

    def __init__(self, layers: List[LayerImpl], plan: ImagePlan, dtype: np.dtype):
        end = _image_end(layers, plan)
        self.end = end
        self.flatten = layers[end].layer_name == "Flatten"
        steps, nslots, why = flatten(layers[:end])
        if why is not None:  # pragma: no cover - unsupported() is asked first
            raise AssertionError(why)
        hws = _step_hws(steps, plan.hw[0])
        check_steps(steps, plan.input_shape[2], hws)
        self.steps = steps
        #: saved slab states (FanOut/parallel/FanInSum blocks), per lane
        self.nslots = nslots
        img = [s.layer for s in steps]
        n = len(steps)
        self.ops = np.zeros((n, NCOLS), np.int64)
        self.fpar = np.zeros((n, 4), np.float64)
        self.sdim = np.array(hws, np.int64).reshape(n + 1, 2)
        self.spad = np.zeros((n + 1, 4), np.int64)
        self.circ = any(x is not None and x.layer_name == "Conv" and x.padding == "CIRCULAR"
                        for x in img)
        self.act_layers: List[int] = []
        width: Optional[int] = plan.input_shape[2]
        saved: dict = {}
        widths: List[Optional[int]] = []
        voff = 0
        for l, step in enumerate(steps):
            layer = step.layer
            widths.append(width)
            if step.kind != "layer":
                prod = step.kind == "sum" and layer.layer_name == "FanInProd"
                self.ops[l, [C_KIND, C_FH, C_FW, C_SH]] = (_SLOT_KINDS[step.kind], step.slot,
                                                           max(step.count, 1), int(prod))
                if step.kind == "store":
                    saved[step.slot] = width
                elif step.kind == "load" or layer.layer_name != "FanInConcat":
                    width = saved[step.slot]
                else:
                    ws = [saved[step.slot + i] for i in range(step.count)]
                    width = None if None in ws else sum(ws)
                continue
            p = layer.params
            if layer.layer_name in ("Conv", "Dense"):
                fh, fw = layer.filter if layer.layer_name == "Conv" else (1, 1)
                std = p["parameterization"] == "standard"
                if std and width is None:
                    what = "Conv" if layer.layer_name == "Conv" else "Dense"
                    raise SpecError(
                        f'{what}(parameterization="standard") needs the input width; give '
                        "out_dim (out_chan) to the layer before it")
                b2 = (p["b_std"] or 0.0) ** 2
                w2 = p["W_std"] ** 2
                self.fpar[l] = (w2 / (fh * fw), b2, float(width or 0),
                                0.0 if p["b_std"] is None else 1.0)
                self.ops[l, C_STD] = int(std)
                if layer.layer_name == "Conv":
                    self.ops[l, [C_KIND, C_FH, C_FW, C_SH, C_SW]] = (
                        K_CONV, fh, fw, layer.strides[0], layer.strides[1])
                    width = p["out_chan"]
                else:
                    self.ops[l, C_KIND] = K_AFFINE
                    width = p["out_dim"]
            elif layer.layer_name == "AvgPool":
                self.ops[l, [C_KIND, C_FH, C_FW, C_SH, C_SW]] = (
                    K_POOL, layer.window[0], layer.window[1], layer.strides[0], layer.strides[1])
            elif layer.layer_name == "Dropout":
                train = p["mode"] == "train"
                self.ops[l, C_KIND] = K_DROP if train else K_IDENT
                self.fpar[l, 0] = 1.0 / p["rate"]
            else:
                if layer.layer_name == "LayerNorm":
                    axes = layer.spatial_axes(4, "images")
                    kind = K_LNORM
                    self.ops[l, [C_SH, C_SW]] = (int(0 in axes), int(1 in axes))
                    self.fpar[l, 0] = p["eps"]
                else:
                    kind = _ACT_KINDS[layer.layer_name]
                self.ops[l, C_KIND] = kind
                self.ops[l, C_VOFF] = voff
                h, w = hws[l]
                voff += h * w
                self.act_layers.append(l)
                if kind == K_ABRELU:
                    a, b = layer.slopes()
                    self.fpar[l] = ((a * a + b * b) / 2.0, (a - b) ** 2 / (2.0 * math.pi), 0.0, 0.0)
                elif kind == K_ERF:
                    self.fpar[l] = (p["a"], p["b"], p["c"], 0.0)
        self.nvar = voff
        for l, scale in enumerate(concat_scales(steps, widths)):
            if steps[l].kind == "store":
                self.fpar[l, 0] = scale
        hf, wf = plan.hw[end]
        self.width_out = None if width is None else (width * hf * wf if self.flatten else width)
        # buffer padding entering each step = the pads of the next Conv (none across a
        # slot step: those re-lay the slab out, see slab_ops.slot_op)
        for s in range(n + 1):
            h, w = hws[s]
            pads = (0, 0, 0, 0)
            for o in range(s, n):
                if steps[o].kind != "layer" or img[o].layer_name == "AvgPool":
                    break
                if img[o].layer_name == "Conv":
                    (_, lo_h, hi_h), (_, lo_w, hi_w) = img[o].geometry(hws[o])
                    pads = (lo_h, hi_h, lo_w, hi_w)
                    break
            self.spad[s] = (pads[0], pads[2], h + pads[0] + pads[1], w + pads[2] + pads[3])
        # slab offsets δ of every step, from the final ones
        if self.flatten:
            finals = [(0, 0)]
            self.count = float(hf * wf)
        elif self.circ:
            finals = [(a, b) for a in range(hf) for b in range(wf)]
            self.count = float(hf * hf * wf * wf)
        else:
            finals = [(a, b) for a in range(-(hf - 1), hf) for b in range(-(wf - 1), wf)]
            self.count = float(hf * hf * wf * wf)
        #: activation variances from the self pairs' own δ = 0 slabs (``cpu_slab._self_pass``):
        #: after a pool, and for branched or LayerNorm programs
        self.selfvar = (any(x is not None and x.layer_name == "AvgPool" for x in img)
                        or nslots > 0 or bool(self.ops.shape[0] and (self.ops[:, C_KIND] == K_LNORM).any()))
        self._stages(img, hws, finals, _multipliers(steps))
        maxbuf = int((self.spad[:, 2] * self.spad[:, 3]).max())
        self.maxbuf = maxbuf
        maxt = max([int(self.sdim[o + 1, 0] * self.spad[o, 3]) for o in range(n)
                    if self.ops[o, C_KIND] == K_CONV] or [1])
        per_lane = (4 * maxbuf + 2 * maxt + 2 * plan.input_shape[2] * int(self.sdim[0].prod())
                    + 4 * self.nvar + 2 * self.accsize + 2 * nslots * maxbuf) * np.dtype(dtype).itemsize
        self.scratch_per_lane = per_lane
        lanes = LANES_MIN
        while lanes < LANES_MAX and 2 * lanes * per_lane <= SCRATCH_BYTES:
            lanes *= 2
        self.lanes = lanes
        eps = float(np.finfo(dtype).eps)
        self.consts = np.array(CONSTS + (PARALLEL_TOLERANCE_EPS * eps, float(plan.input_shape[2])),
                               dtype=dtype)
        self.fpar = self.fpar.astype(dtype)
        self.pinv = self.pinv.astype(dtype)

    def _stages(self, img: List[Optional[LayerImpl]], hws: List[Tuple[int, int]],
                finals: List[Tuple[int, int]], mult: np.ndarray) -> None:
        """Stages between AvgPools and their slabs, from the last stage back.

        A stage needs at its end (before the AvgPool that closes it) every
        offset sδ' + e (|e| < window) of the offsets δ' the next stage needs;
        Conv strides multiply offsets inside a stage (``mult``, per step along
        its branch). ``deltas[d, o]``: slab d's offset entering op o (only the
        ops of d's stage are set). Slabs in the order of ``finals``, with δ = 0
        first in every stage when ``selfvar`` (see ``selfvar`` in
        ``slab_kernels._group``).
        """
        n = len(img)
        pool_ops = [o for o in range(n) if img[o] is not None and img[o].layer_name == "AvgPool"]
        firsts = [0] + [o + 1 for o in pool_ops]
        lasts = pool_ops + [n]
        nst = len(firsts)
        self.pooled = nst > 1
        per_stage: List[np.ndarray] = [np.zeros((0, n + 1, 2), np.int64)] * nst
        need = finals
        for st in range(nst - 1, -1, -1):
            o0, o1 = firsts[st], lasts[st]
            if self.selfvar:
                need = sorted(set(need), key=lambda ab: (ab != (0, 0), ab))
            rows = np.zeros((len(need), n + 1, 2), np.int64)
            for i, (a, b) in enumerate(need):
                for o in range(o0, o1 + 1):
                    a2, b2 = a * int(mult[o, 0]), b * int(mult[o, 1])
                    if self.circ:
                        a2, b2 = a2 % hws[o][0], b2 % hws[o][1]
                    rows[i, o] = (a2, b2)
            per_stage[st] = rows
            if st:
                pool = img[o0 - 1]
                (kh, kw), (sh, sw) = pool.window, pool.strides
                h, w = hws[o0 - 1]
                need = [(sh * a + e, sw * b + f) for a, b in rows[:, o0].tolist()
                        for e in range(1 - kh, kh) for f in range(1 - kw, kw)
                        if abs(sh * a + e) < h and abs(sw * b + f) < w]
        self.deltas = np.concatenate(per_stage)
        bounds = np.cumsum([0] + [len(r) for r in per_stage])
        self.stages = np.array([(firsts[st], lasts[st], bounds[st], bounds[st + 1])
                                for st in range(nst)], np.int64)
        # pooled stages: window sums stored compactly (valid part of each slab)
        R = max(max(hw) for hw in hws)
        self.lut = np.full((nst, 2 * R + 1, 2 * R + 1), -1, np.int64)
        self.accoff = np.zeros(self.deltas.shape[0], np.int64)
        self.pools = np.zeros((nst, 2), np.int64)
        self.pinv = np.ones((nst, 2, R), np.float64)
        size = 0
        for st in range(1, nst):
            o0 = firsts[st]
            pool = img[o0 - 1]
            ho, wo = hws[o0]
            (_, lo_h, _), (_, lo_w, _) = pool.geometry(hws[o0 - 1])
            self.pools[st] = (lo_h, lo_w)
            for ax, (m, lo) in enumerate(((ho, lo_h), (wo, lo_w))):
                self.pinv[st, ax, :m] = 1.0 / _window_counts(pool, ax, hws[o0 - 1][ax], m, lo)
            for d in range(bounds[st], bounds[st + 1]):
                a, b = (int(v) for v in self.deltas[d, o0])
                if abs(a) < ho and abs(b) < wo:
                    self.lut[st, a + R, b + R] = d
                self.accoff[d] = size
                size += max(0, ho - abs(a)) * max(0, wo - abs(b))
        self.accsize = size


def flops_per_pair(layers: List[LayerImpl], plan: ImagePlan) -> float:
    """Arithmetic of the slab kernel per image pair (sqrt and divide count 1).

    Per slab entry: Conv (fh + fw − 2 adds, 2-flop affine; twice with the
    NTK, plus 2 for Θ's affine), ReLU family 37 (11-term polynomial, angle
    selection, Θ·K̇), Erf 45, Dense on images 5; K0 costs 2C + 1. AvgPool:
    2 adds (Σ, Θ) per input entry and window it falls in, and 6 (divisors)
    per pooled entry. LayerNorm 4 (a divide of Σ and Θ); branch slots: 2 per
    entry and slot summed or loaded (Σ, Θ).
    """
    prog = Program(layers, plan, np.dtype(np.float64))
    total = 0.0
    n = prog.ops.shape[0]
    for st, (o0, o1, d0, d1) in enumerate(prog.stages.tolist()):
        for d in range(d0, d1):
            def entries(s):
                h, w = prog.sdim[s]
                a, b = prog.deltas[d, s]
                if prog.circ:
                    return h * w
                return max(0, h - abs(a)) * max(0, w - abs(b))
            total += (2 * plan.input_shape[2] + 1) * entries(0) if st == 0 else 6 * entries(o0)
            for o in range(o0, o1):
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
                elif kind == K_LNORM:
                    total += entries(o) * 4
                elif kind in (K_LOAD, K_SUM):
                    total += entries(o) * 2 * prog.ops[o, C_FW]
            if o1 == n:
                total += 2 * entries(n)
            else:
                windows = (prog.ops[o1, C_FH] * prog.ops[o1, C_FW]
                           / (prog.ops[o1, C_SH] * prog.ops[o1, C_SW])) ** 2
                total += 2 * entries(o1) * windows
    return total
