"""Branches: ``FanOut``, ``parallel``, ``FanInSum``, ``FanInProd``, ``FanInConcat``.

Between a ``FanOut(num)`` and a ``FanIn*`` layer the kernel state is a tuple of
:class:`KernelState` (one per branch); ``parallel(*branches)`` maps branch ``i``
over state ``i``. Kernel maps as in neural-tangents (Novak et al. 2019, "Neural
Tangents", and Yang 2019, "Tensor Programs I", for the independence of branches
that each end in a fresh Gaussian layer):

- ``FanInSum``: Σ = Σ_i Σ_i, Θ = Σ_i Θ_i (the branches must be mean-zero
  Gaussian, i.e. end in Dense/Conv or an Identity of such);
- ``FanInProd``: Σ = Π_i Σ_i, Θ = Σ_i Θ_i Π_{j≠i} Σ_j;
- ``FanInConcat`` along channels: the width-weighted mean of the branches.

A spec nests branches: ``["parallel", {"branches": [[[name, kw], ...], ...]}]``.
"""

from __future__ import annotations

from typing import Any, List, Sequence, Tuple, Union

import numpy as np

from ...errors import SpecError, UnsupportedOptionError
from .base import LayerImpl, Shape, check_arity
from ..network import Layer, make_layer, spec_of
from ..spec import Param, build_layers, register
from ..state import KernelState

States = Union[KernelState, Tuple[KernelState, ...]]



def _where(layer: str, states: Any) -> Tuple[KernelState, ...]:
    if not isinstance(states, tuple):
        raise SpecError(f"{layer} takes the branches of a FanOut; put FanOut(n) (and parallel) "
                        "before it")
    return states


def _shape(s: KernelState) -> str:
    spatial = "" if s.spatial is None else f"{s.spatial[0]}x{s.spatial[1]} pixels, "
    return f"({spatial}{'?' if s.width is None else s.width} channels)"


def _check_same(layer: str, states: Sequence[KernelState]) -> None:
    spatial = {s.spatial for s in states}
    widths = {s.width for s in states if s.width is not None}
    if len(spatial) > 1 or len(widths) > 1:
        raise SpecError(f"{layer} needs branches of equal shapes; got "
                        f"{', '.join(_shape(s) for s in states)}")


def _check_gaussian(layer: str, states: Sequence[KernelState]) -> None:
    bad = [i for i, s in enumerate(states) if not s.gaussian]
    if len(states) > 1 and bad:
        raise SpecError(
            f"{layer} needs mean-zero Gaussian branches (each ending in Dense/Conv, as in "
            f"neural-tangents); branch {bad[0]} is not; put a Dense or Conv at its end")


@register("FanOut", {"num": Param(None, "int", required=True)})
class FanOutImpl(LayerImpl):
    """``FanOut(num)``: ``num`` copies of the state."""

    def kernel(self, state: States, xp: Any) -> States:
        if isinstance(state, tuple):
            raise SpecError("FanOut takes one input, not the branches of another FanOut; "
                            "close those with FanInSum/FanInConcat/FanInProd first")
        return (state,) * self.params["num"]

    def output_shape(self, input_shape: Any) -> Any:
        return [tuple(input_shape)] * self.params["num"]

    def apply(self, params: Any, x: np.ndarray) -> Any:
        return [x] * self.params["num"]

    def flops_per_entry(self, state_shape: Shape) -> float:
        return 0.0


@register("parallel", {"branches": Param(None, "branches", required=True)})
class ParallelImpl(LayerImpl):
    """``parallel(*layers)``: branch ``i`` runs on input ``i``."""

    def __init__(self, params: Any):
        super().__init__(params)
        self.branches: List[List[LayerImpl]] = [build_layers(b) for b in params["branches"]]
        for b, branch in enumerate(self.branches):
            check_arity(branch, f"branch {b} of parallel")
        self.image_layer = any(layer.image_layer for branch in self.branches for layer in branch)

    def __repr__(self) -> str:
        inner = ", ".join("serial(" + ", ".join(map(repr, b)) + ")" for b in self.branches)
        return f"parallel({inner})"

    def _inputs(self, states: Any) -> Tuple[Any, ...]:
        n = len(self.branches)
        if not isinstance(states, (tuple, list)) or len(states) != n:
            got = len(states) if isinstance(states, (tuple, list)) else 1
            raise SpecError(f"parallel with {n} branches got {got} input(s); put FanOut({n}) "
                            "before it")
        return tuple(states)

    def kernel(self, state: States, xp: Any) -> States:
        out = []
        for branch, s in zip(self.branches, self._inputs(state)):
            for layer in branch:
                s = layer.kernel(s, xp)
            out.append(s)
        return tuple(out)

    def output_shape(self, input_shape: Any) -> Any:
        out = []
        for branch, shape in zip(self.branches, self._inputs(input_shape)):
            for layer in branch:
                shape = layer.output_shape(shape)
            out.append(shape)
        return out

    def init(self, rng: np.random.Generator, input_shape: Any) -> Any:
        params = []
        for branch, shape in zip(self.branches, self._inputs(input_shape)):
            ps = []
            for layer in branch:
                ps.append(layer.init(rng, shape))
                shape = layer.output_shape(shape)
            params.append(ps)
        return params

    def apply(self, params: Any, x: Any) -> Any:
        out = []
        for branch, ps, xb in zip(self.branches, params, self._inputs(x)):
            for layer, p in zip(branch, ps):
                xb = layer.apply(p, xb)
            out.append(xb)
        return out

    def flops_per_entry(self, state_shape: Shape) -> float:
        return float(sum(layer.flops_per_entry(state_shape) for b in self.branches for layer in b))


class _FanIn(LayerImpl):
    def _shapes(self, input_shape: Any) -> List[Shape]:
        if not isinstance(input_shape, list):
            raise SpecError(f"{self.layer_name} takes the branches of a FanOut; put FanOut(n) "
                            "before it")
        return [tuple(s) for s in input_shape]

    def output_shape(self, input_shape: Any) -> Shape:
        shapes = self._shapes(input_shape)
        if any(s != shapes[0] for s in shapes):
            raise SpecError(f"{self.layer_name} needs branches of equal shapes; got per-example "
                            f"shapes {', '.join(map(str, shapes))}")
        return shapes[0]

    def flops_per_entry(self, state_shape: Shape) -> float:
        return 4.0 * float(np.prod(state_shape or (1,)))


def _sum(values: Sequence[Any]) -> Any:
    if any(v is None for v in values):
        return None
    out = values[0]
    for v in values[1:]:
        out = out + v
    return out


def _prod(values: Sequence[Any]) -> Any:
    if any(v is None for v in values):
        return None
    out = values[0]
    for v in values[1:]:
        out = out * v
    return out


@register("FanInSum", {})
class FanInSumImpl(_FanIn):
    """``FanInSum()``: Σ and Θ add up over the (independent, Gaussian) branches."""

    def check_states(self, states: Sequence[KernelState]) -> KernelState:
        """The branches' shapes must agree and each be mean-zero Gaussian; the
        output's description (only ``width``, ``spatial`` and ``gaussian`` are
        read and set: the compiled paths call it on light states)."""
        _check_same("FanInSum", states)
        _check_gaussian("FanInSum", states)
        return states[0].replace(gaussian=True)

    def kernel(self, state: States, xp: Any) -> KernelState:
        states = _where("FanInSum", state)
        self.check_states(states)
        return states[0].replace(nngp=_sum([s.nngp for s in states]),
                                 ntk=_sum([s.ntk for s in states]),
                                 var1=_sum([s.var1 for s in states]),
                                 var2=_sum([s.var2 for s in states]), gaussian=True)

    def apply(self, params: Any, x: Any) -> np.ndarray:
        return _sum(list(x))


@register("FanInProd", {})
class FanInProdImpl(_FanIn):
    """``FanInProd()``: elementwise product of the branches."""

    def check_states(self, states: Sequence[KernelState]) -> KernelState:
        """As ``FanInSumImpl.check_states``: equal shapes."""
        _check_same("FanInProd", states)
        return states[0].replace(gaussian=len(states) == 1 and states[0].gaussian)

    def kernel(self, state: States, xp: Any) -> KernelState:
        states = _where("FanInProd", state)
        self.check_states(states)
        nngp, ntk = states[0].nngp, states[0].ntk
        for s in states[1:]:
            if ntk is not None:
                ntk = ntk * s.nngp + nngp * s.ntk
            nngp = nngp * s.nngp
        return states[0].replace(nngp=nngp, ntk=ntk, var1=_prod([s.var1 for s in states]),
                                 var2=_prod([s.var2 for s in states]),
                                 gaussian=len(states) == 1 and states[0].gaussian)

    def apply(self, params: Any, x: Any) -> np.ndarray:
        return _prod(list(x))


@register("FanInConcat", {"axis": Param(-1, "any")})
class FanInConcatImpl(_FanIn):
    """``FanInConcat(axis=-1)`` along the channel axis: the covariance of the
    concatenation is the width-weighted mean of the branches' (neural-tangents)."""

    def _channel(self, ndim: int) -> None:
        axis = self.params["axis"]
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise SpecError(f"FanInConcat(axis={axis!r}) must be an integer axis")
        if not -ndim <= axis < ndim:
            raise SpecError(f"FanInConcat(axis={axis}): inputs of {ndim} axes (batch first) have no "
                            f"axis {axis}")
        if axis % ndim != ndim - 1:
            raise UnsupportedOptionError(
                f"FanInConcat(axis={axis}) concatenates along a batch or spatial axis of {ndim}-D "
                "inputs; ntkscale supports the channel axis (axis=-1) only")

    def weights(self, states: Sequence[KernelState]) -> Tuple[List[float], Any]:
        """The branches' weights in the mean (their widths, or equal) and the
        output width; raises on a bad axis or shapes (only ``width`` and
        ``spatial`` are read: the compiled paths call it on light states)."""
        self._channel(2 if states[0].spatial is None else 4)
        spatial = {s.spatial for s in states}
        if len(spatial) > 1:
            raise SpecError("FanInConcat needs branches with equal non-channel shapes; got "
                            f"{', '.join(_shape(s) for s in states)}")
        widths = [s.width for s in states]
        known = [w for w in widths if w is not None]
        if known and len(known) != len(widths):
            raise SpecError("FanInConcat of branches with different widths needs every branch's "
                            f"channel count; got {widths}: give out_dim/out_chan to each branch's "
                            "last Dense/Conv")
        weights = [1.0] * len(states) if not known or len(set(known)) == 1 else [float(w) for w in known]
        return weights, (sum(known) if known and len(known) == len(widths) else None)

    def check_states(self, states: Sequence[KernelState]) -> KernelState:
        """As ``FanInSumImpl.check_states``."""
        return states[0].replace(width=self.weights(states)[1], gaussian=False)

    def kernel(self, state: States, xp: Any) -> KernelState:
        states = _where("FanInConcat", state)
        weights, width = self.weights(states)
        total = sum(weights)

        def mean(values: Sequence[Any]) -> Any:
            if any(v is None for v in values):
                return None
            return _sum([v * w for v, w in zip(values, weights)]) / total

        return states[0].replace(nngp=mean([s.nngp for s in states]),
                                 ntk=mean([s.ntk for s in states]),
                                 var1=mean([s.var1 for s in states]),
                                 var2=mean([s.var2 for s in states]), width=width, gaussian=False)

    def output_shape(self, input_shape: Any) -> Shape:
        shapes = self._shapes(input_shape)
        self._channel(len(shapes[0]) + 1)
        if any(s[:-1] != shapes[0][:-1] for s in shapes):
            raise SpecError("FanInConcat needs branches with equal non-channel shapes; got "
                            f"per-example shapes {', '.join(map(str, shapes))}")
        return tuple(shapes[0][:-1]) + (sum(s[-1] for s in shapes),)

    def apply(self, params: Any, x: Any) -> np.ndarray:
        return np.concatenate(list(x), axis=-1)


def FanOut(num: int) -> Layer:
    """``num`` copies of the input, for ``parallel`` branches (neural-tangents ``stax.FanOut``)."""
    return make_layer("FanOut", dict(num=num))


def FanInSum() -> Layer:
    """Sum of the branches (neural-tangents ``stax.FanInSum``)."""
    return make_layer("FanInSum", {})


def FanInProd() -> Layer:
    """Elementwise product of the branches (neural-tangents ``stax.FanInProd``)."""
    return make_layer("FanInProd", {})


def FanInConcat(axis: int = -1) -> Layer:
    """Concatenation of the branches along ``axis`` (neural-tangents ``stax.FanInConcat``;
    ntkscale supports the channel axis)."""
    return make_layer("FanInConcat", dict(axis=axis))


def parallel(*layers: Any) -> Layer:
    """Run ``layers[i]`` on input ``i`` (neural-tangents ``stax.parallel``); put
    ``FanOut(len(layers))`` before it and a ``FanIn*`` layer after it."""
    if not layers:
        raise SpecError("parallel() needs at least one branch")
    return make_layer("parallel", dict(branches=[spec_of(layer, i, "parallel")
                                                 for i, layer in enumerate(layers)]))
