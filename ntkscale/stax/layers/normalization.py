"""``LayerNorm`` and ``Dropout``: kernel maps as in neural-tangents 0.6.5.

- ``LayerNorm(axis, eps)`` (Ba et al. 2016): in the infinite-width limit the
  mean over the channels of a mean-zero Gaussian layer vanishes and the
  variance estimate converges to the covariance's diagonal, so
  ``Σ(x, x') ← Σ(x, x') / √((ε + q̄)(ε + q̄'))`` and the same for Θ, with q̄
  the self-variance averaged over the normalised spatial axes (Novak et al.
  2019, "Neural Tangents", §B). The channel axis must be normalised.
- ``Dropout(rate, mode)`` (Srivastava et al. 2014): ``rate`` is the KEEP
  probability as in neural-tangents. ``"test"`` is the identity; ``"train"``
  multiplies the entries that pair an input with itself (the same dropout
  mask on both sides) by ``1/rate``, and the self-variances likewise.
"""

from __future__ import annotations

from typing import Any, List, Sequence, Tuple, Union

import numpy as np

from ...errors import InputError, SpecError, UnsupportedOptionError
from .base import LayerImpl, Shape
from ..network import Layer, make_layer
from ..spec import Param, register
from ..state import KernelState

_AXES = {"batch_axis": Param(0, "any", supported=(0,)),
         "channel_axis": Param(-1, "any", supported=(-1,))}


def _axes(axis: Any, ndim: int, what: str) -> List[int]:
    """``axis`` (an int or a sequence of ints) as non-negative axes of ``ndim``-D inputs."""
    items = [axis] if isinstance(axis, int) and not isinstance(axis, bool) else axis
    try:
        items = list(items)
    except TypeError:
        raise SpecError(f"LayerNorm(axis={axis!r}) must be an integer or a tuple of integers") from None
    out = []
    for a in items:
        if isinstance(a, bool) or not isinstance(a, int):
            raise SpecError(f"LayerNorm(axis={axis!r}) must be an integer or a tuple of integers")
        if not -ndim <= a < ndim:
            raise SpecError(f"LayerNorm(axis={axis!r}): {what} have no axis {a} (they have "
                            f"{ndim} axes, batch first)")
        out.append(a % ndim)
    return sorted(set(out))


@register("LayerNorm", {"axis": Param(-1, "any"), "eps": Param(1e-12, "float"), **_AXES})
class LayerNormImpl(LayerImpl):
    """``LayerNorm(axis=-1, eps=1e-12)`` (neural-tangents ``stax.LayerNorm``)."""

    def spatial_axes(self, ndim: int, what: str) -> Tuple[int, ...]:
        """The normalised spatial axes among the covariance's ``(H, W)`` (0 and/or 1)."""
        axes = _axes(self.params["axis"], ndim, what)
        if ndim - 1 not in axes:
            raise SpecError(f"LayerNorm(axis={self.params['axis']!r}) must normalise the channel "
                            f"axis ({ndim - 1} or -1) for an infinite-width kernel to exist")
        if 0 in axes:
            raise UnsupportedOptionError(f"LayerNorm(axis={self.params['axis']!r}) normalises over "
                                         "the batch axis; ntkscale supports channel and spatial axes")
        return tuple(a - 1 for a in axes if a != ndim - 1)

    def _state_what(self, state: KernelState) -> str:
        if state.spatial is None:
            return "flat inputs (n, channels)"
        return f"images (n, {state.spatial[0]}, {state.spatial[1]}, channels)"

    def check_state(self, state: KernelState) -> Tuple[int, ...]:
        """The normalised spatial axes for ``state`` (only its ``spatial`` and
        ``gaussian`` are read; the compiled paths call it); raises on bad placement."""
        ndim = 2 if state.spatial is None else 4
        spatial = self.spatial_axes(ndim, self._state_what(state))
        if not state.gaussian:
            raise SpecError("LayerNorm needs mean-zero Gaussian inputs (as in neural-tangents): put "
                            "it right after a Dense or Conv layer")
        return spatial

    def kernel(self, state: KernelState, xp: Any) -> KernelState:
        spatial = self.check_state(state)
        eps = self.params["eps"]

        def shifted(v: Any) -> Any:
            if v is None:
                return None
            v = v + eps
            if spatial:
                axes = tuple(1 + a for a in spatial)
                v = xp.mean(v, axis=axes, keepdims=True) + xp.zeros_like(v)
            return v

        e1, e2 = shifted(state.var1), shifted(state.var2)
        q1, q2 = state.replace(var1=e1, var2=e2).pair_variances(xp)
        norm = xp.sqrt(q1 * q2)
        ntk = None if state.ntk is None else state.ntk / norm
        return state.replace(nngp=state.nngp / norm, ntk=ntk, var1=state.var1 / e1,
                             var2=None if e2 is None else state.var2 / e2)

    def output_shape(self, input_shape: Shape) -> Shape:
        self.spatial_axes(len(input_shape) + 1, f"inputs of per-example shape {tuple(input_shape)}")
        return input_shape

    def apply(self, params: Any, x: np.ndarray) -> np.ndarray:
        axes = tuple(_axes(self.params["axis"], x.ndim, f"inputs of shape {x.shape}"))
        mean = x.mean(axis=axes, keepdims=True)
        var = x.var(axis=axes, keepdims=True)
        return (x - mean) / np.sqrt(self.params["eps"] + var)

    def flops_per_entry(self, state_shape: Shape) -> float:
        return 4.0 * float(np.prod(state_shape or (1,)))


def _self_pairs(state: KernelState, xp: Any, shape: Tuple[int, ...]) -> Any:
    """Boolean mask (broadcastable to ``shape``) of the entries that pair an input
    with itself at the same pixel, or None when there are none."""
    full = state.spatial is not None and not state.diagonal_spatial
    if state.diagonal_batch:
        if not full:
            return True
        _, h, _, w, _ = shape
        eh = xp.reshape(xp.eye(h, dtype=xp.bool), (1, h, h, 1, 1))
        ew = xp.reshape(xp.eye(w, dtype=xp.bool), (1, 1, 1, w, w))
        return eh & ew
    if state.diag_offset is None:
        return None
    n1, n2 = shape[0], shape[1]
    rows = xp.reshape(xp.arange(n1), (n1, 1))
    cols = xp.reshape(xp.arange(n2), (1, n2))
    mask = cols == rows + state.diag_offset
    extra = len(shape) - 2
    mask = xp.reshape(mask, (n1, n2) + (1,) * extra)
    if full:
        _, _, h, _, w, _ = shape
        mask = mask & xp.reshape(xp.eye(h, dtype=xp.bool), (1, 1, h, h, 1, 1))
        mask = mask & xp.reshape(xp.eye(w, dtype=xp.bool), (1, 1, 1, 1, w, w))
    return mask


@register("Dropout", {"rate": Param(None, "float", required=True),
                      "mode": Param("train", "str", choices=("train", "test"))})
class DropoutImpl(LayerImpl):
    """``Dropout(rate, mode="train")``; ``rate`` is the keep probability."""

    #: apply_fn needs an ``rng`` in train mode.
    stochastic = True

    def __init__(self, params: Any):
        super().__init__(params)
        rate = params["rate"]
        if not 0.0 < rate <= 1.0:
            raise SpecError(f"Dropout(rate={rate!r}): the keep rate must be in (0, 1]")

    def kernel(self, state: KernelState, xp: Any) -> KernelState:
        if self.params["mode"] == "test":
            return state
        factor = 1.0 / self.params["rate"]

        def scale(a: Any) -> Any:
            if a is None or not hasattr(a, "shape"):
                return a
            mask = _self_pairs(state, xp, tuple(a.shape))
            if mask is None:
                return a
            if mask is True:
                return a * factor
            return xp.where(mask, a * factor, a)

        return state.replace(nngp=scale(state.nngp), ntk=scale(state.ntk),
                             gaussian=False).map_variances(lambda v: v * factor)

    def apply(self, params: Any, x: np.ndarray) -> np.ndarray:
        if self.params["mode"] == "test":
            return x
        raise InputError('Dropout(mode="train") draws random masks: call apply_fn(params, x, '
                         'rng=...) (or use mode="test")')

    def apply_random(self, params: Any, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.params["mode"] == "test":
            return x
        rate = self.params["rate"]
        keep = rng.uniform(size=x.shape) < rate
        return np.where(keep, x / rate, 0.0)

    def flops_per_entry(self, state_shape: Shape) -> float:
        return float(np.prod(state_shape or (1,)))


def LayerNorm(axis: Union[int, Sequence[int]] = -1, eps: float = 1e-12, batch_axis: int = 0,
              channel_axis: int = -1) -> Layer:
    """Layer normalisation (neural-tangents ``stax.LayerNorm``): normalise over
    ``axis`` (the channel axis, optionally with spatial axes of NHWC images)."""
    return make_layer("LayerNorm", dict(axis=axis, eps=eps, batch_axis=batch_axis,
                                        channel_axis=channel_axis))


def Dropout(rate: float, mode: str = "train") -> Layer:
    """Dropout with keep probability ``rate`` (neural-tangents ``stax.Dropout``)."""
    return make_layer("Dropout", dict(rate=rate, mode=mode))
