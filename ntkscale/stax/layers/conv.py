"""Convolution: ``Conv`` kernel map, geometry and finite-width network (NHWC).

Kernel map (Novak et al. 2019, Arora et al. 2019; the form neural-tangents
uses, NT-CONVENTIONS): a Conv with an ``fh × fw`` filter shifts *both*
positions of every pixel pair by the same filter offset, sums the shifted
covariances (zero outside the image for ``"SAME"``/``"VALID"``, wrapped for
``"CIRCULAR"``), divides by ``fh·fw`` and applies the Dense affine map::

    Σ[P, P'] = W² · (1/(fh fw)) Σ_d K[sP + d − lo, sP' + d − lo] + b²
    Θ[P, P'] = Σ[P, P'] + W² · (1/(fh fw)) Σ_d Θ[...]             ("ntk")
    Θ[P, P'] = fan_in · avg_d K[...] + W² · avg_d Θ[...] + [b_std given] ("standard")

with ``fan_in = channels · fh · fw``. Images are NHWC; sequences are NWC and run as
``1 × W`` images (a 1-D ``filter_shape=(k,)`` is the window ``(1, k)``). The array-API
reference implementation here (``shift_conv``, ``window_sum``, ...) is the
oracle the compiled paths (``engine.cpu_slab``, ``engine.cuda_slab``) are tested against.
"""

from __future__ import annotations

import math
from typing import Any, Tuple

import numpy as np

from ...errors import SpecError
from .dense import affine_kernel
from .base import LayerImpl, Shape
from ..network import Layer, make_layer
from ..spec import Param, register
from ..state import KernelState

PADDINGS = ("VALID", "SAME", "CIRCULAR")

CONV_PARAMS = {
    "out_chan": Param(None, "int?"),
    "filter_shape": Param(None, "ints", required=True),
    "strides": Param(None, "ints?"),
    "padding": Param("VALID", "str", choices=PADDINGS),
    "W_std": Param(1.0, "float"),
    "b_std": Param(None, "float?"),
    "dimension_numbers": Param(None, "any", supported=(None,)),
    "parameterization": Param("ntk", "str", choices=("ntk", "standard")),
    "s": Param((1, 1), "any", supported=((1, 1),)),
}


# ----------------------------------------------------------------- geometry
def pair2(layer: str, key: str, value: Any, default: Tuple[int, int] | None = None) -> Tuple[int, int]:
    """A 2-tuple of positive ints ``(height, width)``; one entry ``(k,)`` (a 1-D
    window over NWC sequences) is ``(1, k)``: a sequence runs as a ``1 × W`` image."""
    if value is None:
        assert default is not None
        return default
    if len(value) == 1:
        return 1, int(value[0])
    if len(value) != 2:
        raise SpecError(
            f"{layer}({key}={tuple(value)!r}) must have 1 entry (NWC sequences) or 2 entries "
            "(NHWC images: height, width); ntkscale supports 1-D and 2-D inputs"
        )
    return int(value[0]), int(value[1])



def window_geometry(size: int, window: int, stride: int, padding: str) -> Tuple[int, int, int]:
    """``(out_size, pad_lo, pad_hi)`` of a window op along one axis, as
    ``lax.padtype_to_pads`` (CIRCULAR pads like SAME, with wrapped values).
    ``out_size`` is 0 when the window does not fit (VALID)."""
    if padding == "VALID":
        out = (size - window) // stride + 1 if size >= window else 0
        return out, 0, 0
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    return out, total // 2, total - total // 2


# --------------------------------------------------- array-API reference ops
def _slice_axis(ndim: int, axis: int, sl: slice) -> Tuple[Any, ...]:
    axis = axis % ndim
    return (slice(None),) * axis + (sl,) + (slice(None),) * (ndim - axis - 1)


def pad_axis(a: Any, axis: int, lo: int, hi: int, circular: bool, xp: Any) -> Any:
    """Pad one axis with zeros (or wrapped values when ``circular``)."""
    if lo == 0 and hi == 0:
        return a
    n = a.shape[axis]
    if circular:
        idx = np.arange(-lo, n + hi) % n
        return xp.take(a, xp.asarray(idx, dtype=xp.int64), axis=axis)
    parts = []
    shape = list(a.shape)
    if lo:
        shape[axis] = lo
        parts.append(xp.zeros(tuple(shape), dtype=a.dtype))
    parts.append(a)
    if hi:
        shape[axis] = hi
        parts.append(xp.zeros(tuple(shape), dtype=a.dtype))
    return xp.concat(parts, axis=axis)


def window_sum(a: Any, axis: int, window: int, stride: int, lo: int, hi: int,
               circular: bool, xp: Any) -> Any:
    """``out[P] = Σ_d a[sP + d − lo]`` along one axis (zero/wrapped outside)."""
    a = pad_axis(a, axis, lo, hi, circular, xp)
    n = a.shape[axis]
    out = (n - window) // stride + 1
    total = None
    for d in range(window):
        part = a[_slice_axis(a.ndim, axis, slice(d, d + stride * (out - 1) + 1, stride))]
        total = part if total is None else total + part
    return total


def shift_sum(a: Any, axes: Tuple[int, int], window: int, stride: int, lo: int, hi: int,
              circular: bool, xp: Any) -> Any:
    """``out[P, P'] = Σ_d a[sP + d − lo, sP' + d − lo]`` over two axes shifted
    together (the Conv map on a pixel-pair covariance)."""
    ax0, ax1 = axes
    a = pad_axis(pad_axis(a, ax0, lo, hi, circular, xp), ax1, lo, hi, circular, xp)
    n = a.shape[ax0]
    out = (n - window) // stride + 1
    total = None
    for d in range(window):
        sl = slice(d, d + stride * (out - 1) + 1, stride)
        idx = list(_slice_axis(a.ndim, ax0, sl))
        idx += [slice(None)] * (a.ndim - len(idx))
        idx[ax1 % a.ndim] = sl
        part = a[tuple(idx)]
        total = part if total is None else total + part
    return total


# ------------------------------------------------------------------- layers
class WindowedLayer(LayerImpl):
    """A layer that slides a 2-D window over NHWC images (``Conv``, ``AvgPool``):
    ``window``, ``strides`` and ``padding`` give its output size and pads."""

    image_layer = True
    window: Tuple[int, int]
    strides: Tuple[int, int]
    padding: str

    def geometry(self, hw: Tuple[int, int]):
        """Per axis ``(out, lo, hi)`` for input ``(H, W)``."""
        return tuple(window_geometry(n, f, s, self.padding)
                     for n, f, s in zip(hw, self.window, self.strides))

    def output_hw(self, hw: Tuple[int, int]) -> Tuple[int, int]:
        (ho, _, _), (wo, _, _) = self.geometry(hw)
        return ho, wo


@register("Conv", CONV_PARAMS)
class ConvImpl(WindowedLayer):
    """``Conv(out_chan, filter_shape, strides, padding, W_std, b_std,
    parameterization)`` as in neural-tangents (2-D, NHWC)."""

    def __init__(self, params):
        super().__init__(params)
        filt, strides = params["filter_shape"], params["strides"]
        if strides is not None and len(strides) != len(filt):
            raise SpecError(f"Conv(filter_shape={tuple(filt)!r}, strides={tuple(strides)!r}): give "
                            "strides one entry per filter axis")
        self.filter = self.window = pair2("Conv", "filter_shape", filt)
        self.strides = pair2("Conv", "strides", strides, (1, 1))
        self.padding = params["padding"]

    def describe(self) -> str:
        filt = tuple(self.params["filter_shape"])
        strides = self.params["strides"]
        extra = "" if self.strides == (1, 1) else f", strides={tuple(strides)}"
        return f"Conv(filter_shape={filt}{extra}, padding={self.padding!r})"

    # kernel --------------------------------------------------------------
    def conv_sum(self, a: Any, diagonal: bool, xp: Any) -> Any:
        """The (unnormalised) filter sum over the trailing spatial axes."""
        circular = self.padding == "CIRCULAR"
        (_, lo_h, hi_h), (_, lo_w, hi_w) = self.geometry(
            (a.shape[-2], a.shape[-1]) if diagonal else (a.shape[-4], a.shape[-2]))
        (fh, fw), (sh, sw) = self.filter, self.strides
        if diagonal:
            a = window_sum(a, -2, fh, sh, lo_h, hi_h, circular, xp)
            return window_sum(a, -1, fw, sw, lo_w, hi_w, circular, xp)
        a = shift_sum(a, (-4, -3), fh, sh, lo_h, hi_h, circular, xp)
        return shift_sum(a, (-2, -1), fw, sw, lo_w, hi_w, circular, xp)

    def kernel(self, state: KernelState, xp: Any) -> KernelState:
        p = self.params
        scale = 1.0 / (self.filter[0] * self.filter[1])
        diag = state.diagonal_spatial
        nngp = self.conv_sum(state.nngp, diag, xp) * scale
        ntk = state.ntk
        if ntk is not None:
            ntk = self.conv_sum(ntk, diag, xp) * scale if hasattr(ntk, "shape") else ntk
        var1 = self.conv_sum(state.var1, True, xp) * scale
        var2 = None if state.var2 is None else self.conv_sum(state.var2, True, xp) * scale
        fan_in = None if state.width is None else state.width * self.filter[0] * self.filter[1]
        moved = state.replace(nngp=nngp, ntk=ntk, var1=var1, var2=var2,
                              spatial=self.output_hw(state.spatial))
        out = affine_kernel(moved, p["W_std"], p["b_std"], p["parameterization"], fan_in, "Conv")
        return out.replace(width=p["out_chan"], gaussian=True)

    # finite width ----------------------------------------------------------
    def output_shape(self, input_shape: Shape) -> Shape:
        h, w, _ = input_shape
        return self.output_hw((h, w)) + (self._out_chan(),)

    def _out_chan(self) -> int:
        if self.params["out_chan"] is None:
            raise SpecError("the finite-width network (init_fn/apply_fn) needs Conv(out_chan=...)")
        return self.params["out_chan"]

    def init(self, rng: np.random.Generator, input_shape: Shape):
        c_in, c_out = int(input_shape[-1]), self._out_chan()
        fh, fw = self.filter
        W = rng.standard_normal((fh, fw, c_in, c_out))
        b = rng.standard_normal((c_out,))
        if self.params["parameterization"] == "standard":
            W *= self.params["W_std"] / math.sqrt(c_in * fh * fw)
            b *= self.params["b_std"] or 0.0
        return W, b

    def apply(self, params: Any, x: np.ndarray) -> np.ndarray:
        W, b = params
        p = self.params
        fh, fw, c_in, _ = W.shape
        patches = extract_patches(x, self.filter, self.strides, self.padding)
        z = np.tensordot(patches, W, axes=([3, 4, 5], [0, 1, 2]))
        if p["parameterization"] == "standard":
            return z + (b if p["b_std"] is not None else 0.0)
        z = (p["W_std"] / math.sqrt(c_in * fh * fw)) * z
        return z if p["b_std"] is None else z + p["b_std"] * b

    def flops_per_entry(self, state_shape: Shape) -> float:
        # filter sum (separable: fh + fw adds) + affine, for Σ and Θ.
        return 2.0 * (self.filter[0] + self.filter[1] + 3) * float(np.prod(state_shape or (1,)))


def extract_patches(x: np.ndarray, window: Tuple[int, int], strides: Tuple[int, int],
                    padding: str) -> np.ndarray:
    """``(n, Ho, Wo, fh, fw, C)`` windows of NHWC ``x`` (zero or wrapped pads)."""
    n, h, w, c = x.shape
    (ho, lo_h, hi_h), (wo, lo_w, hi_w) = (window_geometry(h, window[0], strides[0], padding),
                                          window_geometry(w, window[1], strides[1], padding))
    mode = "wrap" if padding == "CIRCULAR" else "constant"
    xpad = np.pad(x, ((0, 0), (lo_h, hi_h), (lo_w, hi_w), (0, 0)), mode=mode)
    win = np.lib.stride_tricks.sliding_window_view(xpad, window, axis=(1, 2))
    # (n, H', W', C, fh, fw) -> strided -> (n, Ho, Wo, fh, fw, C)
    win = win[:, ::strides[0], ::strides[1]][:, :ho, :wo]
    return np.moveaxis(win, 3, 5)


def Conv(out_chan: int | None = None, filter_shape: Tuple[int, int] | None = None,
         strides: Tuple[int, int] | None = None, padding: str = "VALID", W_std: float = 1.0,
         b_std: float | None = None, dimension_numbers: Any = None,
         parameterization: str = "ntk", s: Tuple[int, int] = (1, 1)) -> Layer:
    """Convolution (neural-tangents ``stax.Conv``): 2-D on NHWC images
    (``filter_shape=(kh, kw)``) or 1-D on NWC sequences (``filter_shape=(k,)``).

    ``out_chan`` is ignored by the infinite-width kernel in the ``"ntk"``
    parameterization (needed by ``init_fn``/``apply_fn`` and by
    ``"standard"``). ``padding``: ``"VALID"`` (default), ``"SAME"`` or
    ``"CIRCULAR"`` (periodic).
    """
    kwargs = dict(out_chan=out_chan, strides=strides, padding=padding, W_std=W_std,
                  b_std=b_std, dimension_numbers=dimension_numbers,
                  parameterization=parameterization, s=s)
    if filter_shape is not None:
        kwargs["filter_shape"] = filter_shape
    return make_layer("Conv", kwargs)
