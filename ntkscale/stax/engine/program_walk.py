"""Branched networks as one straight program for the compiled paths.

A ``FanOut(n) / parallel(b_1, ..., b_n) / FanInSum()`` block is a sum of
kernel states (Novak et al. 2019, "Neural Tangents"; Yang 2019, "Tensor
Programs I": the branches are independent Gaussian processes, so Σ and Θ of
the sum are the sums of the branches'). The compiled paths run it as a
straight list of steps over one *current* state plus a few saved *slots*:

- ``FanOut(n)``: ``store`` the current state into slots ``base .. base+n-1``;
- ``parallel``: for each branch b: ``load`` slot ``base+b``, the branch's
  steps, ``store`` into slot ``base+b``;
- ``FanInSum``: ``sum`` of the n slots into the current state (``FanInProd``: their
  product, Σ = Π Σ_i, Θ = Σ_i Θ_i Π_{j≠i} Σ_j; ``FanInConcat`` along channels: their
  width-weighted mean; the step's ``layer`` says which).

Slots are allocated like a stack (a nested FanOut inside a branch uses the
slots above its parent's), so ``nslots`` is the deepest nesting's total.
``flatten`` returns the steps, or the reason a structure is not supported
(pooling inside branches stays on the reference path). ``check_steps`` raises the reference path's spec errors
(FanInSum of non-Gaussian or unequal branches, LayerNorm placement) from a
symbolic walk, since the compiled paths do not call those layers' maps.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence, Tuple, Union

from ..layers.base import LayerImpl
from ..state import KernelState

#: Layers the flattening turns into slot steps.
FAN_IN = frozenset({"FanInSum", "FanInProd", "FanInConcat"})
BRANCH_STEPS = frozenset({"FanOut", "parallel"}) | FAN_IN
#: Branch layers no compiled path runs (``explain`` names them): none at present.
UNSUPPORTED_FAN_IN: frozenset = frozenset()


@dataclasses.dataclass
class Step:
    """One step: ``kind`` is ``"layer"`` (``layer`` set), ``"store"``, ``"load"``
    (``slot``) or ``"sum"`` (slots ``slot .. slot+count-1``; ``layer``: the FanInSum).
    ``where``: the layer's position for messages (``"layer 3"``, ``"layer 2 branch 0 layer 1"``)."""

    kind: str
    layer: Optional[LayerImpl] = None
    slot: int = 0
    count: int = 0
    where: str = ""

    @property
    def name(self) -> str:
        return self.layer.layer_name if self.kind == "layer" else self.kind


def _walk(layers: Sequence[LayerImpl], prefix: str, top: int, out: List[Step],
          depth: int) -> Union[int, str]:
    """Append the steps of ``layers`` (slots from ``top`` up); returns the
    highest slot count used, or a reason string."""
    frame: Optional[Tuple[int, int]] = None
    high = top
    for l, layer in enumerate(layers):
        name = layer.layer_name
        where = f"{prefix}layer {l}"
        if name == "FanOut":
            n = int(layer.params["num"])
            frame = (top, n)
            high = max(high, top + n)
            out.extend(Step("store", slot=top + i, where=where) for i in range(n))
        elif name == "parallel":
            base, n = frame
            for b, branch in enumerate(layer.branches):
                out.append(Step("load", slot=base + b, where=where))
                inner = _walk(branch, f"{where} (parallel) branch {b}: ", base + n, out, depth + 1)
                if isinstance(inner, str):
                    return inner
                high = max(high, inner)
                out.append(Step("store", slot=base + b, where=where))
        elif name in FAN_IN:
            base, n = frame
            out.append(Step("sum", layer=layer, slot=base, count=n, where=where))
            frame = None
        elif name in UNSUPPORTED_FAN_IN:
            return (f"{where} ({name}): the compiled paths run FanOut/parallel/FanInSum "
                    f"blocks; {name} has no compiled kernel, the reference path runs it")
        else:
            if depth and name in ("AvgPool", "GlobalAvgPool", "Flatten"):
                return (f"{where} ({name}) pools inside a parallel branch; the compiled paths "
                        "pool only outside branches")
            out.append(Step("layer", layer=layer, where=where))
    return high


def flatten(layers: Sequence[LayerImpl]) -> Tuple[List[Step], int, Optional[str]]:
    """``(steps, nslots, reason)``: the straight program of ``layers`` (arity
    already checked) and its slot count; ``reason`` is not None (and the steps
    unusable) when a compiled path cannot run the structure."""
    steps: List[Step] = []
    high = _walk(layers, "", 0, steps, 0)
    if isinstance(high, str):
        return [], 0, high
    return steps, int(high), None


def concat_scales(steps: Sequence[Step], widths: Sequence[Optional[int]]) -> List[float]:
    """Per step, the factor a ``store`` applies to the state it saves: for the last
    store into each slot of a ``FanInConcat``, its branch's weight over the total
    (``FanInConcatImpl.weights``: the widths, or equal), so that the concatenation is
    the sum of the slots; 1 elsewhere. ``widths[s]``: the width entering step s."""
    scales = [1.0] * len(steps)
    for s, step in enumerate(steps):
        if step.kind != "sum" or step.layer.layer_name != "FanInConcat":
            continue
        last = {}
        for o in range(s - 1, -1, -1):
            if steps[o].kind == "store" and steps[o].slot not in last:
                last[steps[o].slot] = o
            if len(last) >= step.count and all(step.slot + i in last for i in range(step.count)):
                break
        states = [_light(widths[last[step.slot + i]], None, False) for i in range(step.count)]
        weights, _ = step.layer.weights(states)
        total = sum(weights)
        for i in range(step.count):
            scales[last[step.slot + i]] = weights[i] / total
    return scales


def has_branches(layers: Sequence[LayerImpl]) -> bool:
    return any(layer.layer_name == "FanOut" for layer in layers)


def _light(width: Optional[int], spatial: Optional[Tuple[int, int]], gaussian: bool) -> KernelState:
    return KernelState(nngp=None, ntk=None, var1=None, var2=None, width=width, spatial=spatial,
                       gaussian=gaussian)


def check_steps(steps: Sequence[Step], width: Optional[int],
                spatial: Sequence[Optional[Tuple[int, int]]]) -> None:
    """Raise the reference path's errors for this program: a symbolic walk
    of (width, shape, Gaussian) through the steps. ``spatial[s]``: the image
    shape entering step s (None when flat)."""
    cur = _light(width, spatial[0] if spatial else None, False)
    slots: dict = {}
    for s, step in enumerate(steps):
        hw = spatial[s] if spatial else None
        if step.kind in ("layer", "store"):
            cur = cur.replace(spatial=hw)
        if step.kind == "store":
            slots[step.slot] = cur
        elif step.kind == "load":
            cur = slots[step.slot]
        elif step.kind == "sum":
            states = tuple(slots[step.slot + i] for i in range(step.count))
            cur = step.layer.check_states(states)
        else:
            layer = step.layer
            name = layer.layer_name
            if name in ("Conv", "Dense"):
                out = layer.params.get("out_chan", layer.params.get("out_dim"))
                cur = cur.replace(width=out, gaussian=True)
            elif name == "LayerNorm":
                layer.check_state(cur)
            elif name == "Dropout":
                if layer.params["mode"] == "train":
                    cur = cur.replace(gaussian=False)
            elif layer.elementwise:
                cur = cur.replace(gaussian=cur.gaussian and getattr(layer, "keeps_gaussian", False))
