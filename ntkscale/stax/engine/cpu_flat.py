"""Compiled CPU path for fully-connected networks (numba).

For a flat network every entry's recursion after the first GEMM is a scalar
function of (c, q_i, q'_j) per layer, so one fused pass per entry replaces
the ~10 full-size temporaries of the array-API reference path: BLAS computes
``X1 X2ᵀ`` (SYRK when x2 is x1), then a parallel numba loop runs all layers
over row tiles of ``TILE`` columns held in cache, in the inputs' precision
(float32 SIMD lanes are twice as many), with √q and 1/√q of every input
precomputed per layer so an entry's cosine costs no root or division, and
writes NNGP and NTK once. For x2 = x1 only the upper triangle is computed and
mirrored. Branches (FanOut/parallel/FanIn*) are slot steps of the same pass
(``program_walk``): a FanOut saves the row buffers, each branch loads and
saves them, the FanIn combines them; LayerNorm divides by √((q + ε)(q' + ε))
and Dropout(mode="train") scales the diagonal of a symmetric call. Parity
with the reference path is tested (tests/stax/test_stax_properties.py,
tests/stax/test_conv_fast.py, tests/stax/test_residual_fast.py).

Hand-written because no library fuses a per-entry layer recursion after a
GEMM on CPU; the arithmetic mirrors ``activations.py`` exactly.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import numba
import numpy as np

from ...errors import SpecError
from ..layers.base import PARALLEL_TOLERANCE_EPS, LayerImpl
from ..state import KernelState
from .program_walk import BRANCH_STEPS, Step, check_steps, concat_scales, flatten

(OP_DENSE_NTK, OP_DENSE_STANDARD, OP_ABRELU, OP_ERF, OP_GELU, OP_SIN, OP_IDENTITY,
 OP_STORE, OP_LOAD, OP_SUM, OP_LNORM, OP_DROP) = range(12)

_ACTIVATION_OPS = {
    "Relu": OP_ABRELU, "LeakyRelu": OP_ABRELU, "Abs": OP_ABRELU, "ABRelu": OP_ABRELU,
    "Erf": OP_ERF, "Gelu": OP_GELU, "Sin": OP_SIN, "Identity": OP_IDENTITY,
}
_STEP_OPS = {"store": OP_STORE, "load": OP_LOAD, "sum": OP_SUM}

#: Layers this path runs (by registry name); any flat network of them qualifies
#: (branches: FanOut/parallel/FanInSum blocks, see ``program_walk``).
SUPPORTED_LAYERS = frozenset({"Dense", "LayerNorm", "Dropout"} | set(_ACTIVATION_OPS)
                             | BRANCH_STEPS)


def unsupported(layers: Sequence[LayerImpl], input_shape: Tuple[int, ...]) -> Optional[str]:
    """Why this path cannot run ``layers`` on per-example ``input_shape``, or None."""
    if len(input_shape) != 1:
        return f"inputs of per-example shape {tuple(input_shape)} are not flat vectors"
    _, _, why = flatten(layers)
    if why is not None:
        return why
    for step in flatten(layers)[0]:
        if step.kind == "layer" and step.layer.layer_name not in SUPPORTED_LAYERS:
            return f"{step.where} ({step.layer.layer_name}) has no compiled flat kernel"
    return None


def _encode(steps: List[Step], d: int, want_ntk: bool) -> Tuple[np.ndarray, np.ndarray]:
    ops = np.zeros(len(steps), np.int64)
    params = np.zeros((len(steps), 4), np.float64)
    width: Optional[int] = d
    saved = {}
    widths: List[Optional[int]] = []
    for l, step in enumerate(steps):
        widths.append(width)
        if step.kind != "layer":
            prod = step.kind == "sum" and step.layer.layer_name == "FanInProd"
            ops[l], params[l] = _STEP_OPS[step.kind], (step.slot, step.count, float(prod), 1.0)
            if step.kind == "store":
                saved[step.slot] = width
            elif step.kind == "load" or step.layer.layer_name != "FanInConcat":
                width = saved[step.slot]
            else:
                ws = [saved[step.slot + i] for i in range(step.count)]
                width = None if None in ws else sum(ws)
            continue
        layer = step.layer
        p = layer.params
        if layer.layer_name == "Dense":
            w2 = p["W_std"] ** 2
            b2 = (p["b_std"] or 0.0) ** 2
            if p["parameterization"] == "ntk":
                ops[l], params[l] = OP_DENSE_NTK, (w2, b2, 0.0, 0.0)
            else:
                if width is None and want_ntk:
                    raise SpecError('Dense(parameterization="standard") needs the input width; '
                                    "give out_dim to the layer before it")
                ops[l] = OP_DENSE_STANDARD
                params[l] = (w2, b2, float(width or 0), 0.0 if p["b_std"] is None else 1.0)
            width = p["out_dim"]
        elif layer.layer_name == "LayerNorm":
            ops[l], params[l] = OP_LNORM, (p["eps"], 0.0, 0.0, 0.0)
        elif layer.layer_name == "Dropout":
            train = p["mode"] == "train"
            ops[l] = OP_DROP if train else OP_IDENTITY
            params[l] = (1.0 / p["rate"], 0.0, 0.0, 0.0)
        else:
            op = _ACTIVATION_OPS[layer.layer_name]
            ops[l] = op
            if op == OP_ABRELU:
                a, b = layer.slopes()
                params[l] = (a, b, 0.0, 0.0)
            elif op in (OP_ERF, OP_SIN):
                params[l] = (p["a"], p["b"], p["c"], 0.0)
    for l, scale in enumerate(concat_scales(steps, widths)):
        if ops[l] == OP_STORE:
            params[l, 3] = scale
    return ops, params


def _layer_variances(steps: List[Step], var: np.ndarray) -> np.ndarray:
    """Self-variance entering each step, shape (S, n), via the reference maps."""
    out = np.empty((len(steps), var.shape[0]), np.float64)
    # ntk=None: widths (standard parameterization) only enter the NTK.
    state = KernelState(nngp=var, ntk=None, var1=var, var2=None, diagonal_batch=True, width=None)
    slots = {}
    for l, step in enumerate(steps):
        out[l] = state.var1
        if step.kind == "store":
            slots[step.slot] = state
        elif step.kind == "load":
            state = slots[step.slot]
        elif step.kind == "sum":
            state = step.layer.kernel(tuple(slots[step.slot + i] for i in range(step.count)), np)
        else:
            state = step.layer.kernel(state, np)
    return out


def _variance_roots(q: np.ndarray) -> np.ndarray:
    """(3, S, n): the variances q, √q and 1/√q (``_roots``), C-contiguous."""
    return np.ascontiguousarray(np.stack((q,) + _roots(q)))


# Coefficients (highest degree first) of R(z) = (asin(√z) − √z)/(z√z) on
# [0, 1/4], a degree-12 Chebyshev fit (|error| < 2e-17, mpmath.chebyfit).
# A branch-free polynomial arccos lets LLVM vectorise the angle, which a
# libm atan2 call per entry does not (numba here has no SVML).


@numba.njit(inline="always", fastmath={"contract"})
def _acos(rho, ft):
    """arccos on [-1, 1] to ~1 ulp of ``ft`` (float32 or float64: every constant is
    of that type, so a float32 buffer is computed in float32): asin range
    reduction (Cephes-style)."""
    t = abs(rho)
    big = t > ft(0.5)
    z = ft(0.5) * (ft(1.0) - t) if big else t * t
    y = math.sqrt(z) if big else t
    r = ft(0.028757851367421566)
    r = r * z - ft(0.014851887071247204)
    r = r * z + ft(0.01740087944269402)
    r = r * z + ft(0.005457506718640358)
    r = r * z + ft(0.01032281435018578)
    r = r * z + ft(0.011479177415184906)
    r = r * z + ft(0.013971212973552933)
    r = r * z + ft(0.017352392720869973)
    r = r * z + ft(0.02237217294214989)
    r = r * z + ft(0.030381944138531247)
    r = r * z + ft(0.04464285714635543)
    r = r * z + ft(0.07499999999998433)
    r = r * z + ft(0.16666666666666669)
    a = y + y * z * r  # asin(y)
    acos_t = ft(2.0) * a if big else ft(0.5 * math.pi) - a
    return ft(math.pi) - acos_t if rho < ft(0.0) else acos_t


@numba.njit(inline="always")
def _cosine(c, si, ri, sj, rj, tol, ft):
    """(norm, ρ, √(1−ρ²)) of a covariance c between inputs of variances si², sj²;
    ``r = 1/s`` (1 where s = 0) is precomputed per input and layer, so an entry
    costs no square root or division here (``_roots``)."""
    norm = si * sj
    rho = c * (ri * rj)
    one = ft(1.0)
    rho = min(max(rho, -one), one)
    rho = one if rho > one - tol else rho
    rho = -one if rho < -one + tol else rho
    return norm, rho, math.sqrt((one - rho) * (one + rho))


def _roots(q: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """√q and 1/√q (1 where q = 0: ρ is then c itself, 0 for a zero input)."""
    s = np.sqrt(q)
    r = np.ones_like(s)
    np.divide(1.0, s, out=r, where=s > 0.0)
    return s, r


@numba.njit(inline="always")
def _slot_pass(op, slot, count, prod, scale, c, t, sc, st, want_ntk):
    """Slot steps (``program_walk``): store the row buffers (times ``scale``: a
    FanInConcat weight), load them, or combine slots (sum; ``prod``: FanInProd,
    Σ = Π Σ_e, Θ = Σ_e Θ_e Π_{f≠e} Σ_f)."""
    m = c.shape[0]
    if op == OP_STORE:
        for k in range(m):
            sc[slot, k] = c[k] * scale
            st[slot, k] = t[k] * scale
    elif op == OP_LOAD:
        for k in range(m):
            c[k] = sc[slot, k]
            t[k] = st[slot, k]
    else:
        for k in range(m):
            c[k] = sc[slot, k]
            t[k] = st[slot, k]
        for e in range(slot + 1, slot + count):
            if prod:
                for k in range(m):
                    t[k] = t[k] * sc[e, k] + c[k] * st[e, k]
                    c[k] = c[k] * sc[e, k]
            else:
                for k in range(m):
                    c[k] += sc[e, k]
                    t[k] += st[e, k]


@numba.njit(inline="always", fastmath={"contract"})
def _layer_pass(op, pa, pb, pc, pd, c, t, qi, si, ri, q2, s2, r2, tol, want_ntk, diag):
    """Apply one layer to a row buffer (c, t) against columns of variances q2
    (roots s2, r2: ``_roots``), vectorisable; ``diag``: column 0 pairs the row's
    input with itself (Dropout "train"). Computed in the buffers' precision: the
    parameters, variances and ``tol`` come in the same type, every constant is
    made of it (``ft``)."""
    m = c.shape[0]
    ft = c.dtype.type
    one = ft(1.0)
    two_pi = ft(2.0 * math.pi)
    if op == OP_LNORM:
        for k in range(m):
            inv = one / math.sqrt((qi + pa) * (q2[k] + pa))
            c[k] = c[k] * inv
            t[k] = t[k] * inv
    elif op == OP_DROP:
        if diag:
            c[0] = c[0] * pa
            t[0] = t[0] * pa
    elif op == OP_DENSE_NTK:
        for k in range(m):
            ck = pa * c[k] + pb
            c[k] = ck
            t[k] = ck + pa * t[k]
    elif op == OP_DENSE_STANDARD:
        for k in range(m):
            t[k] = pc * c[k] + pa * t[k] + pd
            c[k] = pa * c[k] + pb
    elif op == OP_ABRELU:
        big_a = ft(0.5) * (pa * pa + pb * pb)
        f = (pa - pb) * (pa - pb) / two_pi
        for k in range(m):
            norm, rho, s = _cosine(c[k], si, ri, s2[k], r2[k], tol, ft)
            dot = big_a - f * _acos(rho, ft)
            c[k] = norm * (f * s + dot * rho)
            t[k] = t[k] * dot
    elif op == OP_ERF:
        b2 = pb * pb
        for k in range(m):
            ck = c[k]
            b = q2[k]
            norm, rho, s = _cosine(ck, si, ri, s2[k], r2[k], tol, ft)
            g = norm * s
            root = math.sqrt(one + ft(2.0) * b2 * (qi + b) + ft(4.0) * b2 * b2 * g * g)
            t[k] = t[k] * (pa * pa * b2 * ft(4.0 / math.pi) / root)
            c[k] = pa * pa * ft(2.0 / math.pi) * math.atan2(ft(2.0) * b2 * ck, root) + pc * pc
    elif op == OP_GELU:
        for k in range(m):
            ck = c[k]
            b = q2[k]
            norm, rho, s = _cosine(ck, si, ri, s2[k], r2[k], tol, ft)
            g = norm * s
            prod = qi * b
            prod1 = (qi + one) * (b + one)
            delta2 = g * g + qi + b + one
            delta = math.sqrt(delta2)
            angle = math.atan2(ck, delta)
            first = (one / delta2 + (one - prod) / prod1 + one) * ck / (delta * two_pi)
            t[k] = t[k] * (first + ft(0.25) + angle / two_pi)
            c[k] = ft(0.25) * ck + ((ck * ck + prod * delta2) / (prod1 * delta) + ck * angle) / two_pi
    elif op == OP_SIN:
        b2 = pb * pb
        cos2c = math.cos(ft(2.0) * pc)
        for k in range(m):
            ck = c[k]
            half = ft(0.5) * (qi + q2[k])
            e1 = math.exp(b2 * (ck - half))
            e2 = math.exp(-b2 * (ck + half)) * cos2c
            t[k] = t[k] * (ft(0.5) * pa * pa * b2 * (e1 + e2))
            c[k] = ft(0.5) * pa * pa * (e1 - e2)


#: Columns per row tile: the tile's buffers (Σ, Θ and the branch slots) stay in
#: L1/L2 while every layer runs over them.
TILE = 512


@numba.njit(inline="always")
def _row(K, T, i, j0, j1, scale, v1, v2, ops, params, tol, want_ntk, c, t, sc, st, diag):
    """Columns j0..j1 of row i through every step, in the buffers (c, t): K holds
    the input inner products, times ``scale`` (1/d) on loading. ``v1``/``v2``:
    (3, S, n) self-variances q, √q and 1/√q of each step's inputs; ``diag``: column
    j0 is the row's own input, whose variance is set exactly."""
    m = j1 - j0
    cb = c[:m]
    tb = t[:m]
    sc_ = sc[:, :m]
    st_ = st[:, :m]
    for k in range(m):
        cb[k] = K[i, j0 + k] * scale
        tb[k] = 0.0
    if diag:
        cb[0] = v1[0, 0, i]  # exact parallel pair
    for l in range(ops.shape[0]):
        op = ops[l]
        if op >= OP_STORE and op <= OP_SUM:
            _slot_pass(op, np.int64(params[l, 0]), np.int64(params[l, 1]), params[l, 2] != 0.0,
                       params[l, 3], cb, tb, sc_, st_, want_ntk)
        else:
            _layer_pass(op, params[l, 0], params[l, 1], params[l, 2], params[l, 3], cb, tb,
                        v1[0, l, i], v1[1, l, i], v1[2, l, i],
                        v2[0, l, j0:j1], v2[1, l, j0:j1], v2[2, l, j0:j1],
                        tol, want_ntk, diag)
    for k in range(m):
        K[i, j0 + k] = cb[k]
    if want_ntk:
        for k in range(m):
            T[i, j0 + k] = tb[k]


@numba.njit(inline="always")
def _row_tiles(K, T, i, j0, scale, v1, v2, ops, params, tol, want_ntk, c, t, sc, st,
               symmetric):
    n2 = K.shape[1]
    for a in range(j0, n2, TILE):
        _row(K, T, i, a, min(n2, a + TILE), scale, v1, v2, ops, params, tol, want_ntk, c, t,
             sc, st, symmetric and a == j0)


@numba.njit(parallel=True, cache=True, fastmath={"contract"})
def _fused_rect(K, T, scale, v1, v2, ops, params, tol, want_ntk, nslots):
    n1 = K.shape[0]
    for i in numba.prange(n1):
        c = np.empty(TILE, K.dtype)
        t = np.empty(TILE, K.dtype)
        sc = np.empty((nslots, TILE), K.dtype)
        st = np.empty((nslots, TILE), K.dtype)
        _row_tiles(K, T, i, 0, scale, v1, v2, ops, params, tol, want_ntk, c, t, sc, st, False)


@numba.njit(parallel=True, cache=True, fastmath={"contract"})
def _fused_sym(K, T, scale, v, ops, params, tol, want_ntk, nslots):
    n = K.shape[0]
    half = (n + 1) // 2
    # Rows p and n-1-p together give every thread equal upper-triangle work.
    for pp in numba.prange(half):
        p = np.int64(pp)
        c = np.empty(TILE, K.dtype)
        t = np.empty(TILE, K.dtype)
        sc = np.empty((nslots, TILE), K.dtype)
        st = np.empty((nslots, TILE), K.dtype)
        _row_tiles(K, T, p, p, scale, v, v, ops, params, tol, want_ntk, c, t, sc, st, True)
        if n - 1 - p != p:
            _row_tiles(K, T, n - 1 - p, n - 1 - p, scale, v, v, ops, params, tol, want_ntk, c,
                       t, sc, st, True)


@numba.njit(parallel=True, cache=True)
def _mirror_upper(A):
    """Copy the upper triangle onto the lower one in cache-sized tiles, in place
    and in parallel (NumPy only; ``reference_image._mirror_upper`` is the
    functional array-API version for tiles on any namespace)."""
    n = A.shape[0]
    tile = 64
    nt = (n + tile - 1) // tile
    for bi in numba.prange(nt):
        i0 = bi * tile
        i1 = min(n, i0 + tile)
        for bj in range(bi + 1):
            j0 = bj * tile
            j1 = min(n, j0 + tile)
            for i in range(i0, i1):
                for j in range(j0, min(j1, i)):
                    A[i, j] = A[j, i]


def evaluate(layers: List[LayerImpl], x1: np.ndarray, x2: Optional[np.ndarray], *,
             want_ntk: bool) -> Dict[str, np.ndarray]:
    """NNGP (and NTK) of a flat network for all row pairs, fused per entry, in the
    inputs' precision (float32 inputs are computed in float32, as the reference
    path and neural-tangents do; within the float32 parity tolerance of the
    float64 result, tests/stax/test_stax_properties.py)."""
    d = x1.shape[1]
    steps, nslots, why = flatten(layers)
    if why is not None:  # pragma: no cover - select_path checks first
        raise AssertionError(why)
    check_steps(steps, d, [])
    ops, params = _encode(steps, d, want_ntk)
    nslots = max(nslots, 1)
    cdt = np.dtype(x1.dtype)
    ft = cdt.type
    tol = ft(PARALLEL_TOLERANCE_EPS * float(np.finfo(cdt).eps))
    params = params.astype(cdt)
    var1 = np.einsum("ij,ij->i", x1, x1, dtype=np.float64) / d
    v1 = _variance_roots(_layer_variances(steps, var1)).astype(cdt)
    symmetric = x2 is None
    # 1/d is applied as each tile is loaded (no separate pass over K).
    K = x1 @ x1.T if symmetric else x1 @ x2.T  # NumPy uses SYRK for a @ a.T
    T = np.empty_like(K) if want_ntk else np.empty((1, 1), K.dtype)
    if symmetric:
        _fused_sym(K, T, ft(1.0 / d), v1, ops, params, tol, want_ntk, nslots)
        _mirror_upper(K)
        if want_ntk:
            _mirror_upper(T)
    else:
        var2 = np.einsum("ij,ij->i", x2, x2, dtype=np.float64) / d
        v2 = _variance_roots(_layer_variances(steps, var2)).astype(cdt)
        _fused_rect(K, T, ft(1.0 / d), v1, v2, ops, params, tol, want_ntk, nslots)
    out = {"nngp": K}
    if want_ntk:
        out["ntk"] = T
    return out
