"""Empirical (finite-width) kernels of the networks ``init_fn``/``apply_fn`` build:
neural-tangents' ``empirical_ntk_fn``, ``empirical_nngp_fn`` and
``empirical_kernel_fn`` (same names, call shapes and numbers).

* NNGP sample: ``f(x1) f(x2)^T`` averaged over the traced output axes
  (Lee et al. 2018, "Deep Neural Networks as Gaussian Processes", ICLR).
* NTK sample: ``J(x1) J(x2)^T`` with ``J = ∂f/∂θ`` over every parameter
  (Jacot et al. 2018, "Neural Tangent Kernel", NeurIPS), averaged over the
  traced output axes. As the width grows both converge to the exact kernels
  ``kernel_fn`` computes (Jacot et al. 2018, Thm. 1; Lee et al. 2019, Fig. 1).

The parameter gradients come from hand-written backpropagation through the
layers ``apply_fn`` supports (Dense, the activations, Conv, AvgPool,
GlobalAvgPool, Flatten). No autodiff library: the package's finite network is
plain NumPy, the layer set is small and fixed, and JAX/PyTorch would be a
heavy dependency for one function. Per layer the contribution is contracted
without forming the Jacobian: a linear layer ``z = s·u W + b_s·b`` (``u`` the
input, Conv patches or Dense rows, at every pixel) adds
``s² Σ_{p,p'} <u1[p], u2[p']> <δ1[p], δ2[p']> + b_s² <Σ_p δ1[p], Σ_p' δ2[p']>``
with ``δ = ∂f/∂z``, or the same through per-example weight gradients when
those are smaller.
"""

from __future__ import annotations

import collections
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import InputError, UnsupportedOptionError
from .layers.conv import extract_patches, window_geometry
from .network import ApplyFn, parse_get

Axes = Union[int, Sequence[int]]


# ------------------------------------------------------------ derivatives
def _activation_derivative(layer: Any, x: np.ndarray) -> np.ndarray:
    """``φ'(x)`` of an activation layer: each activation implements its own
    ``derivative`` (layers without a finite-width network raise there)."""
    return layer.derivative(x)


def _fold_patches(g: np.ndarray, in_hw: Tuple[int, int], window: Tuple[int, int], strides: Tuple[int, int],
                  padding: str) -> np.ndarray:
    """Adjoint of ``extract_patches``: ``(B, Ho, Wo, fh, fw, C) -> (B, H, W, C)``."""
    selections = []
    for n, f, s, ho in zip(in_hw, window, strides, g.shape[1:3]):
        _, lo, hi = window_geometry(n, f, s, padding)
        padded = n + lo + hi
        rows = np.arange(padded) - lo
        sel = np.zeros((padded, n))
        keep = (rows >= 0) & (rows < n) if padding != "CIRCULAR" else np.ones(padded, bool)
        sel[np.arange(padded)[keep], rows[keep] % n] = 1.0
        # output position o with window offset d reads padded row o·s + d
        place = np.zeros((ho, f, padded))
        for o in range(ho):
            for d in range(f):
                place[o, d, o * s + d] = 1.0
        selections.append(np.einsum("odr,rn->odn", place, sel))
    sh, sw = selections
    return np.einsum("bhwxyc,hxi,wyj->bijc", g, sh, sw, optimize=True)


def _layer_params(layer: Any, W: np.ndarray) -> Tuple[float, float]:
    """``(s, b_s)``: ``z = s·(u W) + b_s·b``; ``b_s = 0`` when there is no bias."""
    p = layer.params
    if p["parameterization"] == "standard":
        return 1.0, (1.0 if p["b_std"] is not None else 0.0)
    fan_in = int(np.prod(W.shape[:-1]))
    return p["W_std"] / math.sqrt(fan_in), (p["b_std"] if p["b_std"] is not None else 0.0)


# ------------------------------------------------------------ forward / backward
class _Trace:
    """One batch through the network: per linear layer its input features
    ``u (n, P, F)``, its output cotangent ``δ (n, k, P, C)`` and scales."""

    def __init__(self, layers: Sequence[Any], params: Sequence[Any], x: np.ndarray):
        acts: List[np.ndarray] = [np.asarray(x, dtype=np.float64)]
        for layer, p in zip(layers, params):
            acts.append(layer.apply(p, acts[-1]))
        out = acts[-1]
        if out.ndim != 2:
            raise UnsupportedOptionError(
                f"the empirical kernels need (batch, outputs) network outputs; this network gives shape "
                f"{out.shape}: end it with Flatten() or GlobalAvgPool() and a Dense readout")
        self.output = out
        n, k = out.shape
        self.linear: List[Tuple[np.ndarray, np.ndarray, float, float]] = []
        delta = np.broadcast_to(np.eye(k), (n, k, k)).copy()      # ∂f_c/∂out: (n, k, *out_shape)
        for layer, p, h in reversed(list(zip(layers, params, acts[:-1]))):
            delta = self._back(layer, p, h, delta)

    def _back(self, layer: Any, p: Any, h: np.ndarray, delta: np.ndarray) -> np.ndarray:
        name = layer.layer_name
        n, k = delta.shape[:2]
        if name == "Dense":
            W, _ = p
            s, bs = _layer_params(layer, W)
            self.linear.append((h.reshape(n, -1, h.shape[-1]), delta.reshape(n, k, -1, W.shape[1]), s, bs))
            return s * (delta @ W.T)
        if name == "Conv":
            W, _ = p
            s, bs = _layer_params(layer, W)
            patches = extract_patches(h, layer.filter, layer.strides, layer.padding)
            self.linear.append((patches.reshape(n, -1, int(np.prod(W.shape[:3]))),
                                delta.reshape(n, k, -1, W.shape[3]), s, bs))
            g = s * np.tensordot(delta, W, axes=([-1], [3]))          # (n, k, Ho, Wo, fh, fw, C)
            folded = _fold_patches(g.reshape((n * k,) + g.shape[2:]), h.shape[1:3], layer.filter,
                                   layer.strides, layer.padding)
            return folded.reshape((n, k) + h.shape[1:])
        if getattr(layer, "elementwise", False):
            return delta * _activation_derivative(layer, h)[:, None]
        if name in ("AvgPool", "SumPool"):
            win = layer.window
            div: Any = float(win[0] * win[1]) if layer.average else 1.0
            if layer.average and layer.params["normalize_edges"] and layer.padding == "SAME":
                ones = np.ones((1,) + h.shape[1:3] + (1,))
                div = extract_patches(ones, win, layer.strides, "SAME").sum(axis=(3, 4))[0]   # (Ho, Wo, 1)
            g = np.broadcast_to((delta / div)[..., None, None, :], delta.shape[:-1] + win + delta.shape[-1:])
            folded = _fold_patches(g.reshape((n * k,) + g.shape[2:]), h.shape[1:3], win, layer.strides,
                                   layer.padding)
            return folded.reshape((n, k) + h.shape[1:])
        if name in ("GlobalAvgPool", "GlobalSumPool"):
            hh, ww = h.shape[1:3]
            div = hh * ww if layer.average else 1
            return np.broadcast_to(delta[:, :, None, None, :] / div, (n, k) + h.shape[1:]).copy()
        if name == "Flatten":
            return delta.reshape((n, k) + h.shape[1:])
        raise UnsupportedOptionError(f"the empirical kernels do not support layer {name}")


def _contract_linear(t1: Tuple, t2: Tuple, pairs: str) -> np.ndarray:
    """One linear layer's NTK contribution, ``(n1, n2, k)`` for ``pairs="diag"``
    (output c with c) or ``(n1, n2, k, k)`` for ``"full"``."""
    u1, d1, s, bs = t1
    u2, d2, _, _ = t2
    n1, k, p, c = d1.shape
    n2, f = u2.shape[0], u1.shape[2]
    o = "ijc" if pairs == "diag" else "ijcd"
    e2 = "c" if pairs == "diag" else "d"
    pairwise = n1 * n2 * p * p * (f + k * c)
    per_example = (n1 + n2) * k * p * f * c + n1 * n2 * k * f * c
    if pairwise <= per_example:
        gram_u = np.einsum("ipf,jqf->ipjq", u1, u2)
        out = s * s * np.einsum(f"ipjq,icpo,j{e2}qo->{o}", gram_u, d1, d2, optimize=True)
    else:
        g1 = np.einsum("ipf,icpo->icfo", u1, d1).reshape(n1, k, -1)
        g2 = np.einsum("ipf,icpo->icfo", u2, d2).reshape(n2, k, -1)
        out = s * s * np.einsum(f"icx,j{e2}x->{o}", g1, g2, optimize=True)
    if bs:
        b1, b2 = d1.sum(axis=2), d2.sum(axis=2)
        out = out + bs * bs * np.einsum(f"ico,j{e2}o->{o}", b1, b2)
    return out


# ------------------------------------------------------------ public API
def _layers_of(f: Any) -> Tuple[Any, ...]:
    if isinstance(f, tuple) and len(f) == 3 and isinstance(f[1], ApplyFn):
        f = f[1]
    if not isinstance(f, ApplyFn):
        raise InputError(f"f must be an ntkscale apply_fn (stax.serial(...)[1]); got {type(f).__name__}")
    return f.layers


def _reduction(trace_axes: Axes, diagonal_axes: Axes) -> str:
    """``"trace"``, ``"diag"`` or ``"full"`` over the output axis (-1)."""
    def norm(a):
        a = [a] if isinstance(a, int) else list(a)
        if any(int(v) % 2 != 1 for v in a):
            raise UnsupportedOptionError(
                f"trace_axes/diagonal_axes {tuple(a)} are not supported: the outputs are (batch, outputs), "
                "so use (-1,) or () (the batch axis cannot be traced)")
        return bool(a)
    traced, diagonal = norm(trace_axes), norm(diagonal_axes)
    if traced and diagonal:
        raise InputError("the output axis cannot be in both trace_axes and diagonal_axes")
    return "trace" if traced else ("diag" if diagonal else "full")


def _check_params(layers: Sequence[Any], params: Sequence[Any]) -> None:
    if len(params) != len(layers):
        raise InputError(f"params has {len(params)} entries for {len(layers)} layers; use init_fn's output")


def empirical_nngp_fn(f: Any, trace_axes: Axes = (-1,), diagonal_axes: Axes = ()) -> Callable[..., np.ndarray]:
    """``nngp_fn(x1, x2, params)``: one sample ``f(x1) f(x2)^T`` of the NNGP of a
    finite network (``x2=None`` means ``x1``), averaged over ``trace_axes``
    (neural-tangents' ``empirical_nngp_fn``; Lee et al. 2018). Shapes:
    ``(n1, n2)`` for ``trace_axes=(-1,)``, ``(n1, n2, k, k)`` for ``()``,
    ``(n1, n2, k)`` with ``diagonal_axes=(-1,)``."""
    layers, mode = _layers_of(f), _reduction(trace_axes, diagonal_axes)
    apply_fn = f[1] if isinstance(f, tuple) else f

    def nngp_fn(x1: Any, x2: Optional[Any], params: Sequence[Any], **apply_fn_kwargs: Any) -> np.ndarray:
        _check_params(layers, params)
        o1 = apply_fn(params, x1)
        o2 = o1 if x2 is None else apply_fn(params, x2)
        if mode == "trace":
            return o1 @ o2.T / o1.shape[1]
        return np.einsum("ic,jc->ijc" if mode == "diag" else "ic,jd->ijcd", o1, o2)

    return nngp_fn


def empirical_ntk_fn(f: Any, trace_axes: Axes = (-1,), diagonal_axes: Axes = (), vmap_axes: Any = None,
                     implementation: Any = None) -> Callable[..., np.ndarray]:
    """``ntk_fn(x1, x2, params)``: the NTK ``J(x1) J(x2)^T`` of a finite network at
    ``params`` (neural-tangents' ``empirical_ntk_fn``; Jacot et al. 2018),
    averaged over ``trace_axes``; shapes as :func:`empirical_nngp_fn`.
    ``vmap_axes`` and ``implementation`` choose how JAX evaluates it in
    neural-tangents; the values are the same, so they are accepted and ignored."""
    layers, mode = _layers_of(f), _reduction(trace_axes, diagonal_axes)

    def ntk_fn(x1: Any, x2: Optional[Any], params: Sequence[Any], **apply_fn_kwargs: Any) -> np.ndarray:
        _check_params(layers, params)
        t1 = _Trace(layers, params, x1)
        t2 = t1 if x2 is None else _Trace(layers, params, x2)
        pairs = "full" if mode == "full" else "diag"
        out = sum(_contract_linear(a, b, pairs) for a, b in zip(t1.linear, t2.linear))
        if not t1.linear:
            raise InputError("the network has no parameters, so its NTK is zero")
        return out.mean(axis=-1) if mode == "trace" else out

    return ntk_fn


_EMPIRICAL_TUPLES: Dict[Tuple[str, ...], Any] = {}


def empirical_kernel_fn(f: Any, trace_axes: Axes = (-1,), diagonal_axes: Axes = (), vmap_axes: Any = None,
                        implementation: Any = None) -> Callable[..., Any]:
    """``kernel_fn(x1, x2, get, params)``: empirical NNGP and/or NTK
    (neural-tangents' ``empirical_kernel_fn``): one array for a single ``get``,
    else an ``EmpiricalKernel`` namedtuple (``get=None``: ``nngp`` and ``ntk``)."""
    fns = {"nngp": empirical_nngp_fn(f, trace_axes, diagonal_axes),
           "ntk": empirical_ntk_fn(f, trace_axes, diagonal_axes, vmap_axes, implementation)}

    def kernel_fn(x1: Any, x2: Optional[Any], get: Union[None, str, Sequence[str]], params: Sequence[Any],
                  **apply_fn_kwargs: Any) -> Any:
        names, form = parse_get(get)
        out = {g: fns[g](x1, x2, params) for g in names}
        if form == "single":
            return out[names[0]]
        if names not in _EMPIRICAL_TUPLES:
            _EMPIRICAL_TUPLES[names] = collections.namedtuple("EmpiricalKernel", names)
        return _EMPIRICAL_TUPLES[names](*(out[g] for g in names))

    return kernel_fn
