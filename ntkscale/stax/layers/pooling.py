"""Pooling and flattening: ``AvgPool``, ``SumPool``, ``GlobalAvgPool``,
``GlobalSumPool``, ``Flatten`` (NHWC).

Kernel maps as in neural-tangents (Novak et al. 2019; Arora et al. 2019):

- ``AvgPool(window, strides, padding)``: each position of a pixel pair is
  pooled independently, ``Σ[P, P'] = mean_{a, a'} K[sP + a − lo, sP' + a' − lo]``
  (divided by the full window size unless ``normalize_edges`` with SAME).
- ``SumPool(window, strides, padding)``: the same window sums, not divided
  (so K grows by the window size squared over ``AvgPool``).
- ``GlobalAvgPool()``: mean of K (and Θ) over all pixel pairs;
  ``GlobalSumPool()``: their sum.
- ``Flatten()``: mean over matching pixels only (p = p'), which is why a conv
  net ending in Flatten only tracks the spatial diagonal.

Pair states (``diagonal_batch=False``) come out with ``var1 = var2 = None``
after ``AvgPool``/``GlobalAvgPool``: the pooled self-variance needs the full
self-covariance, which the evaluator tracks separately (``engine.reference_image``).
"""

from __future__ import annotations

from typing import Any, Tuple

import numpy as np

from ...errors import SpecError
from .base import LayerImpl, Shape, spatial_diagonal
from .conv import PADDINGS, WindowedLayer, extract_patches, pair2, window_sum
from ..network import Layer, make_layer
from ..spec import Param, register
from ..state import KernelState

_AXES = {"batch_axis": Param(0, "any", supported=(0,)),
         "channel_axis": Param(-1, "any", supported=(-1,))}


@register("AvgPool", {
    "window_shape": Param(None, "ints", required=True),
    "strides": Param(None, "ints?"),
    "padding": Param("VALID", "str", choices=PADDINGS),
    "normalize_edges": Param(False, "bool"),
    **_AXES,
})
class AvgPoolImpl(WindowedLayer):
    """``AvgPool(window_shape, strides=None, padding="VALID")``; ``strides=None``
    is stride 1, as in neural-tangents."""

    #: False for ``SumPool``: window sums, not divided by the window size.
    average = True

    def __init__(self, params):
        super().__init__(params)
        self.window = pair2(self.layer_name, "window_shape", params["window_shape"])
        self.strides = pair2(self.layer_name, "strides", params["strides"], (1, 1))
        self.padding = params["padding"]

    def describe(self) -> str:
        extra = "" if self.strides == (1, 1) else f", strides={self.strides}"
        return f"{self.layer_name}(window_shape={self.window}{extra}, padding={self.padding!r})"

    def _normalize_edges(self) -> bool:
        return bool(self.params.get("normalize_edges", False)) and self.padding == "SAME"

    def _counts(self, n: int, window: int, stride: int, lo: int, hi: int, xp: Any, dtype: Any):
        """Window sizes per output position (the divisor)."""
        if self._normalize_edges():
            ones = xp.ones((n,), dtype=dtype)
            return window_sum(ones, 0, window, stride, lo, hi, False, xp)
        return None

    def pool(self, a: Any, xp: Any) -> Any:
        """Pool a full-layout ``(..., H, H, W, W)`` covariance."""
        circular = self.padding == "CIRCULAR"
        h, w = a.shape[-4], a.shape[-2]
        (_, lo_h, hi_h), (_, lo_w, hi_w) = self.geometry((h, w))
        (wh, ww), (sh, sw) = self.window, self.strides
        for axis in (-4, -3):
            a = window_sum(a, axis, wh, sh, lo_h, hi_h, circular, xp)
        for axis in (-2, -1):
            a = window_sum(a, axis, ww, sw, lo_w, hi_w, circular, xp)
        if not self.average:
            return a
        ch = self._counts(h, wh, sh, lo_h, hi_h, xp, a.dtype)
        if ch is None:
            return a * (1.0 / float(wh * wh * ww * ww))
        cw = self._counts(w, ww, sw, lo_w, hi_w, xp, a.dtype)
        ho, wo = ch.shape[0], cw.shape[0]
        div = (xp.reshape(ch, (ho, 1, 1, 1)) * xp.reshape(ch, (1, ho, 1, 1))
               * xp.reshape(cw, (1, 1, wo, 1)) * xp.reshape(cw, (1, 1, 1, wo)))
        return a / div

    def kernel(self, state: KernelState, xp: Any) -> KernelState:
        if state.diagonal_spatial:
            raise SpecError(f"{self.describe()} needs the full pixel-pair covariance (internal)")
        nngp = self.pool(state.nngp, xp)
        ntk = state.ntk
        if ntk is not None and hasattr(ntk, "shape"):
            ntk = self.pool(ntk, xp)
        var1 = spatial_diagonal(nngp, xp) if state.diagonal_batch else None
        return state.replace(nngp=nngp, ntk=ntk, var1=var1, var2=None,
                             spatial=self.output_hw(state.spatial))

    def output_shape(self, input_shape: Shape) -> Shape:
        h, w, c = input_shape
        return self.output_hw((h, w)) + (c,)

    def apply(self, params: Any, x: np.ndarray) -> np.ndarray:
        win = extract_patches(x, self.window, self.strides, self.padding)
        total = win.sum(axis=(3, 4))
        if not self.average:
            return total
        if self._normalize_edges():
            ones = extract_patches(np.ones_like(x[:1, ..., :1]), self.window, self.strides, "SAME")
            return total / ones.sum(axis=(3, 4))
        return total / float(self.window[0] * self.window[1])

    def flops_per_entry(self, state_shape: Shape) -> float:
        return float(self.window[0] + self.window[1]) * float(np.prod(state_shape or (1,)))


@register("SumPool", {
    "window_shape": Param(None, "ints", required=True),
    "strides": Param(None, "ints?"),
    "padding": Param("VALID", "str", choices=PADDINGS),
    **_AXES,
})
class SumPoolImpl(AvgPoolImpl):
    """``SumPool(window_shape, strides=None, padding="VALID")``: ``AvgPool``'s
    window sums without the division (neural-tangents ``stax.SumPool``)."""

    average = False


@register("GlobalAvgPool", dict(_AXES))
class GlobalAvgPoolImpl(LayerImpl):
    """``GlobalAvgPool()``: mean over all pixel pairs; the result is flat."""

    image_layer = True
    #: False for ``GlobalSumPool``: the sum over pixel pairs, not the mean.
    average = True

    def describe(self) -> str:
        return f"{self.layer_name}()"

    def kernel(self, state: KernelState, xp: Any) -> KernelState:
        if state.diagonal_spatial:
            raise SpecError(f"{self.layer_name} needs the full pixel-pair covariance (internal)")
        axes = (-4, -3, -2, -1)
        reduce = xp.mean if self.average else xp.sum
        nngp = reduce(state.nngp, axis=axes)
        ntk = state.ntk
        if ntk is not None and hasattr(ntk, "shape"):
            ntk = reduce(ntk, axis=axes)
        elif ntk is not None and not self.average:
            h, w = state.nngp.shape[-4], state.nngp.shape[-2]
            ntk = ntk * float(h * h * w * w)
        var1 = nngp if state.diagonal_batch else None
        return state.replace(nngp=nngp, ntk=ntk, var1=var1, var2=None, spatial=None,
                             diagonal_spatial=False)

    def output_shape(self, input_shape: Shape) -> Shape:
        return (input_shape[-1],)

    def apply(self, params: Any, x: np.ndarray) -> np.ndarray:
        return x.mean(axis=(1, 2)) if self.average else x.sum(axis=(1, 2))

    def flops_per_entry(self, state_shape: Shape) -> float:
        return 2.0 * float(np.prod(state_shape or (1,)))


@register("GlobalSumPool", dict(_AXES))
class GlobalSumPoolImpl(GlobalAvgPoolImpl):
    """``GlobalSumPool()``: sum over all pixel pairs; the result is flat."""

    average = False


@register("Flatten", {"batch_axis": Param(0, "any", supported=(0,)),
                      "batch_axis_out": Param(0, "any", supported=(0,))})
class FlattenImpl(LayerImpl):
    """``Flatten()``: mean over matching pixels (p = p'); the result is flat."""

    image_layer = True

    def describe(self) -> str:
        return "Flatten()"

    def kernel(self, state: KernelState, xp: Any) -> KernelState:
        def trace(a):
            if a is None or not hasattr(a, "shape"):
                return a
            if not state.diagonal_spatial:
                a = spatial_diagonal(a, xp)
            return xp.mean(a, axis=(-2, -1))

        h, w = state.spatial
        width = None if state.width is None else state.width * h * w
        return state.replace(nngp=trace(state.nngp), ntk=trace(state.ntk),
                             var1=xp.mean(state.var1, axis=(-2, -1)),
                             var2=None if state.var2 is None else xp.mean(state.var2, axis=(-2, -1)),
                             spatial=None, diagonal_spatial=False, width=width)

    def output_shape(self, input_shape: Shape) -> Shape:
        return (int(np.prod(input_shape)),)

    def apply(self, params: Any, x: np.ndarray) -> np.ndarray:
        return x.reshape(x.shape[0], -1)

    def flops_per_entry(self, state_shape: Shape) -> float:
        return float(np.prod(state_shape or (1,)))


def _make(name: str, **kwargs: Any) -> Layer:
    return make_layer(name, kwargs)


def AvgPool(window_shape: Tuple[int, int], strides: Tuple[int, int] | None = None,
            padding: str = "VALID", normalize_edges: bool = False, batch_axis: int = 0,
            channel_axis: int = -1) -> Layer:
    """Average pooling (neural-tangents ``stax.AvgPool``; ``strides=None`` is 1)."""
    return _make("AvgPool", window_shape=window_shape, strides=strides, padding=padding,
                 normalize_edges=normalize_edges, batch_axis=batch_axis, channel_axis=channel_axis)


def SumPool(window_shape: Tuple[int, int], strides: Tuple[int, int] | None = None,
            padding: str = "VALID", batch_axis: int = 0, channel_axis: int = -1) -> Layer:
    """Sum pooling (neural-tangents ``stax.SumPool``; ``strides=None`` is 1)."""
    return _make("SumPool", window_shape=window_shape, strides=strides, padding=padding,
                 batch_axis=batch_axis, channel_axis=channel_axis)


def GlobalSumPool(batch_axis: int = 0, channel_axis: int = -1) -> Layer:
    """Sum over all pixels (neural-tangents ``stax.GlobalSumPool``)."""
    return _make("GlobalSumPool", batch_axis=batch_axis, channel_axis=channel_axis)


def GlobalAvgPool(batch_axis: int = 0, channel_axis: int = -1) -> Layer:
    """Mean over all pixels (neural-tangents ``stax.GlobalAvgPool``)."""
    return _make("GlobalAvgPool", batch_axis=batch_axis, channel_axis=channel_axis)


def Flatten(batch_axis: int = 0, batch_axis_out: int = 0) -> Layer:
    """Flatten ``(H, W, C)`` to ``H·W·C`` features (neural-tangents ``stax.Flatten``)."""
    return _make("Flatten", batch_axis=batch_axis, batch_axis_out=batch_axis_out)
