"""The shape plan of an image or sequence network (``plan_image_net``, ``ImagePlan``).

Walks the layer list once with the per-sample input shape: checks shapes (clear
errors that name the layer and the sizes), the spatial rank of windowed layers
(a 1-D ``Conv``/``AvgPool`` on NWC sequences, 2-D on NHWC images) and chooses
the layout each layer sees (see ``reference_image``). Sequences run as ``1 × W``
images: a per-sample shape ``(W, C)`` is planned as ``(1, W, C)`` with ``rank = 1``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ...errors import InputError, SpecError, UnsupportedOptionError
from ..layers.base import LayerImpl

FULL, DIAG, FLAT = "full", "diag", "flat"


def window_rank(layer: LayerImpl) -> Optional[int]:
    """Spatial rank a windowed layer (``Conv``, ``AvgPool``) was written for: 1
    (``(k,)``, NWC sequences) or 2 (``(kh, kw)``, NHWC images); None otherwise."""
    for key in ("filter_shape", "window_shape"):
        value = layer.params.get(key)
        if value is not None:
            return len(value)
    return None


def _name(layer: LayerImpl) -> str:
    return getattr(layer, "describe", lambda: layer.layer_name)()


@dataclasses.dataclass(frozen=True)
class ImagePlan:
    """Shapes and layouts of an image network for one input image shape.

    ``hw[l]``/``layouts[l]``: spatial shape and layout entering layer ``l``
    (``l = len(layers)`` is the output). ``to_diag_after[l]``: cut a full state
    to its spatial diagonal after layer ``l``. ``inner``: for the layers inside
    ``parallel`` branches, ``{key: (hw, layout)}`` with ``key`` the path
    ``(l, branch, l2, ...)``; a branch keeps the layout entering its ``parallel``
    (the full one when a branch pools), so no cut happens inside a branch.
    """

    input_shape: Tuple[int, int, int]
    hw: Tuple[Optional[Tuple[int, int]], ...]
    layouts: Tuple[str, ...]
    to_diag_after: Tuple[bool, ...]
    inner: Dict[Tuple[int, ...], Tuple[Optional[Tuple[int, int]], str]] = dataclasses.field(
        default_factory=dict, compare=False)
    #: spatial axes of the inputs: 2 (NHWC images) or 1 (NWC sequences, run as 1 x W images)
    rank: int = 2

    def entries(self, l: int) -> int:
        """Covariance values per image pair entering layer ``l``."""
        return _entries(self.hw[l], self.layouts[l])

    @property
    def pair_entries(self) -> int:
        top = max(self.entries(l) for l in range(len(self.layouts)))
        return max([top] + [_entries(hw, lay) for hw, lay in self.inner.values()])


def _entries(hw: Optional[Tuple[int, int]], layout: str) -> int:
    if layout == FLAT or hw is None:
        return 1
    h, w = hw
    return h * h * w * w if layout == FULL else h * w


def _pools(layer: LayerImpl) -> bool:
    """Does ``layer`` (or a layer in its branches) need every position pair?"""
    if layer.layer_name in ("GlobalAvgPool", "AvgPool", "GlobalSumPool", "SumPool") or \
            getattr(layer, "needs_full_spatial", False):
        return True
    return any(_pools(x) for b in getattr(layer, "branches", ()) for x in b)


def _fmt(hw: Tuple[int, int], rank: int) -> str:
    return f"{hw[1]} positions" if rank == 1 else f"{hw[0]}x{hw[1]} pixels"


def _rank_error(layer: LayerImpl, name: str, rank: int, h0: int) -> Optional[str]:
    """Why a windowed layer does not fit inputs of spatial ``rank`` (None: it fits)."""
    if rank == 1 and layer.layer_name == "LayerNorm":
        axis = layer.params.get("axis")
        axes = [axis] if isinstance(axis, int) else list(axis or ())
        if any(isinstance(a, int) and a >= 0 for a in axes):
            return (f"{name} on NWC sequences: give LayerNorm negative axes (-1 channels, -2 "
                    "positions); sequences run as 1 x W images, where positive axes count differently")
    r = window_rank(layer) if layer.layer_name in ("Conv", "AvgPool", "SumPool") else None
    if r is None or r == rank or (r == 1 and h0 == 1):
        return None
    if r == 2:
        return (f"{name} is 2-D and needs a 4-D NHWC image batch (n, height, width, channels), "
                "but the inputs are 3-D NWC sequences (n, length, channels)")
    return (f"{name} is 1-D and needs a 3-D NWC sequence batch (n, length, channels), but the "
            "inputs are 4-D NHWC images; give it a 2-D window (kh, kw)")


def _walk_shapes(layers: Sequence[LayerImpl], cur: Optional[Tuple[int, int]], where: str,
                 h0w0c0: Tuple[int, int, int], hw: List[Optional[Tuple[int, int]]],
                 inner: Dict[Tuple[int, ...], Any], prefix: Tuple[int, ...],
                 rank: int = 2) -> Optional[Tuple[int, int]]:
    """Forward shape walk: appends the spatial shape after every layer to ``hw``
    (top level) or records it in ``inner`` (branches); returns the output's."""
    h0, w0, c0 = h0w0c0
    flattened_by = "it was flattened before this branch"
    for l, layer in enumerate(layers):
        name = f"{where}layer {l} ({_name(layer)})"
        if prefix:
            inner[prefix + (l,)] = cur
        why = _rank_error(layer, name, rank, h0)
        if why is not None:
            raise InputError(why)
        why = getattr(layer, "kernel_unsupported", lambda: None)()
        if why is not None:
            raise UnsupportedOptionError(f"{name}: {why}")
        if layer.layer_name == "parallel":
            outs = [_walk_shapes(branch, cur, f"{where}layer {l} (parallel) branch {b}: ", h0w0c0,
                                 [], inner, prefix + (l, b), rank)
                    for b, branch in enumerate(layer.branches)]
            if any(o != outs[0] for o in outs):
                shown = ", ".join("flat" if o is None else _fmt(o, rank) for o in outs)
                raise SpecError(f"{name}: its branches end in different shapes ({shown}); the FanIn "
                                "layer after it needs equal shapes (give every branch the same "
                                "strides and padding)")
            cur = outs[0]
        elif layer.image_layer and cur is None:
            raise SpecError(f"{name} needs an image or a sequence, but its input is already flat "
                            f"({flattened_by}); put spatial layers before GlobalAvgPool/Flatten")
        elif layer.layer_name in ("Conv", "AvgPool", "SumPool"):
            out = layer.output_hw(cur)
            if min(out) <= 0:
                window = layer.filter if layer.layer_name == "Conv" else layer.window
                if rank == 1:
                    raise InputError(
                        f"{name} needs a sequence of at least {window[1]} positions, but its input "
                        f"has {cur[1]} (input sequences are {w0}x{c0}); use padding='SAME', a "
                        "smaller window or longer sequences")
                raise InputError(
                    f"{name} needs an image of at least {window[0]}x{window[1]} "
                    f"pixels, but its input is {cur[0]}x{cur[1]} (input images are {h0}x{w0}x{c0}); "
                    "use padding='SAME', a smaller window or larger images")
            cur = out
        elif hasattr(layer, "check_input"):
            layer.check_input(name, cur, rank)
        elif layer.layer_name in ("GlobalAvgPool", "GlobalSumPool", "Flatten"):
            flattened_by = f"{where}layer {l} is {_name(layer)}"
            cur = None
        if not prefix:
            hw.append(cur)
    return cur


def plan_image_net(layers: Sequence[LayerImpl], input_shape: Tuple[int, ...]) -> ImagePlan:
    """Check shapes layer by layer and choose each layer's layout. ``input_shape``
    is ``(H, W, C)`` (images) or ``(W, C)`` (sequences, planned as ``(1, W, C)``)."""
    if len(input_shape) not in (2, 3):
        raise InputError(
            f"layer 0 ({_name(layers[0])}) of this network needs NHWC images or NWC sequences; "
            f"got per-sample shape {tuple(input_shape)}, expected (height, width, channels) or "
            "(length, channels)"
        )
    rank = len(input_shape) - 1
    h0, w0, c0 = (int(s) for s in ((1,) + tuple(input_shape) if rank == 1 else input_shape))
    hw: List[Optional[Tuple[int, int]]] = [(h0, w0)]
    inner_hw: Dict[Tuple[int, ...], Any] = {}
    _walk_shapes(layers, (h0, w0), "", (h0, w0, c0), hw, inner_hw, (), rank)
    if hw[-1] is not None:
        raise SpecError(
            f"the network's output is still {'a sequence' if rank == 1 else 'an image'} "
            f"({_fmt(hw[-1], rank)}); end the spatial part with GlobalAvgPool() or Flatten() "
            "before the readout Dense"
        )
    # Backwards: which layout does each layer need to see?
    n = len(layers)
    layouts: List[str] = [FLAT] * (n + 1)
    req = FLAT
    for l in range(n - 1, -1, -1):
        layer = layers[l]
        if hw[l] is None:
            req = FLAT
        elif layer.layer_name == "Flatten":
            req = DIAG
        elif _pools(layer):
            req = FULL
        elif layer.layer_name == "parallel" and req == FLAT:
            req = DIAG   # branches that end in Flatten
        layouts[l] = req
    inner = {key: (cur, FLAT if cur is None else layouts[key[0]])
             for key, cur in inner_hw.items()}
    to_diag = tuple(layouts[l] == FULL and layouts[l + 1] == DIAG for l in range(n))
    return ImagePlan((h0, w0, c0), tuple(hw), tuple(layouts), to_diag, inner, rank)


def rank_errors(layers: Sequence[LayerImpl], rank: int, h0: int, where: str = "") -> Optional[str]:
    """The first windowed layer (branches included) whose spatial rank does not fit
    inputs of ``rank`` spatial axes (``h0``: the input height), or None."""
    for l, layer in enumerate(layers):
        name = f"{where}layer {l} ({_name(layer)})"
        why = _rank_error(layer, name, rank, h0)
        if why is not None:
            return why
        for b, branch in enumerate(getattr(layer, "branches", ())):
            why = rank_errors(branch, rank, h0, f"{where}layer {l} (parallel) branch {b}: ")
            if why is not None:
                return why
    return None
