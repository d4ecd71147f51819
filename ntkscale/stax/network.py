"""``serial`` networks: the ``(init_fn, apply_fn, kernel_fn)`` triple as data.

Every layer constructor returns a :class:`Layer`, a 3-tuple
``(init_fn, apply_fn, kernel_fn)`` as in neural-tangents, that also carries
its canonical JSON spec. ``serial`` concatenates specs (nested ``serial``
flattens exactly). All three functions pickle by spec, so Dask can ship them
and scikit-learn can clone estimators holding them.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Dict, Iterable, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from ..choices import KERNELS
from ..errors import InputError, SpecError
from . import spec as registry
from .engine import Explanation, cost_per_entry, evaluate, evaluate_diagonal, explain
from .inputs import validate_pair
from .layers.base import LayerImpl, check_arity
from .spec import Spec


class Kernel(NamedTuple):
    """Result of ``kernel_fn(x1, x2)`` with ``get=None``."""

    nngp: Any
    ntk: Any


def parse_get(get: Union[None, str, Sequence[str]]) -> Tuple[Tuple[str, ...], str]:
    """Normalise ``get`` to ``(names, form)``; form is ``"kernel"``,
    ``"single"`` or ``"tuple"``."""
    if get is None:
        return KERNELS, "kernel"
    if isinstance(get, str):
        names, form = (get,), "single"
    else:
        try:
            names, form = tuple(get), "tuple"
        except TypeError:
            raise InputError(f"get must be 'nngp', 'ntk', a tuple of them or None; got {get!r}") from None
    if not names:
        raise InputError("get is empty; ask for 'nngp', 'ntk' or both")
    for name in names:
        if name not in KERNELS:
            raise InputError(f"get={name!r} is not available; choose from 'nngp' and 'ntk'")
    return names, form


class _Bound:
    """Shared base of the three network functions: holds the canonical spec."""

    def __init__(self, spec: Spec):
        self._spec = spec
        self._layers = registry.build_layers(spec)

    @property
    def spec(self) -> Spec:
        """The canonical ``[[LayerName, {kwargs}], ...]`` list (a copy)."""
        return copy.deepcopy(self._spec)

    @property
    def layers(self) -> Tuple[LayerImpl, ...]:
        """The layer implementations (kernel maps), in order."""
        return tuple(self._layers)

    @property
    def spec_json(self) -> str:
        return registry.spec_to_json(self._spec)

    @property
    def spec_hash(self) -> str:
        return registry.spec_hash(self._spec)

    @property
    def is_image_net(self) -> bool:
        return any(getattr(layer, "image_layer", False) for layer in self._layers)

    def _validate(self, x1: Any, x2: Any) -> Tuple[Any, Any, Any]:
        """``validate_pair``; for image networks the error also names the
        layer that receives the images."""
        try:
            return validate_pair(x1, x2, self.is_image_net)
        except InputError as exc:
            if not self.is_image_net:
                raise
            first = self._layers[0]
            name = getattr(first, "describe", lambda: first.layer_name)()
            raise InputError(f"{exc} (the network's input layer 0 is {name})") from None

    def __reduce__(self):
        return (type(self), (self._spec,))

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._spec == self._spec  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.spec_json))

    def __repr__(self) -> str:
        inner = ", ".join(repr(layer) for layer in self._layers)
        return f"{type(self).__name__}(serial({inner}))"


class InitFn(_Bound):
    """``init_fn(rng, input_shape) -> (output_shape, params)``; finite width."""

    def __call__(self, rng: Union[int, np.random.Generator, None], input_shape: Sequence[int]):
        check_arity(self._layers, "the network")
        rng = np.random.default_rng(rng)
        shape = tuple(int(s) for s in input_shape)
        per_example = shape[1:]
        params = []
        for layer in self._layers:
            params.append(layer.init(rng, per_example))
            per_example = layer.output_shape(per_example)
        return (shape[0],) + tuple(per_example), params


class ApplyFn(_Bound):
    """``apply_fn(params, x, rng=None) -> outputs`` of the finite-width NumPy network
    (``rng``: the dropout masks of top-level ``Dropout(mode="train")`` layers)."""

    def __call__(self, params: Sequence[Any], x: Any, *, rng: Any = None,
                 **kwargs: Any) -> np.ndarray:
        check_arity(self._layers, "the network")
        if len(params) != len(self._layers):
            raise InputError(f"params has {len(params)} entries for {len(self._layers)} layers; use init_fn's output")
        x = np.asarray(x, dtype=np.float64)
        gen = None if rng is None else np.random.default_rng(rng)
        for layer, p in zip(self._layers, params):
            if gen is not None and getattr(layer, "stochastic", False):
                x = layer.apply_random(p, x, gen)
            else:
                x = layer.apply(p, x)
        return x


class KernelFn(_Bound):
    """``kernel_fn(x1, x2=None, get=None)``: exact infinite-width kernels.

    ``get`` is ``"nngp"``, ``"ntk"``, a tuple of them (a tuple comes back in
    that order) or ``None`` (a :class:`Kernel` with ``.nngp`` and ``.ntk``).
    ``x2=None`` means ``x2 = x1``. Output lives in the inputs' array namespace
    and floating dtype. ``memory_budget`` (bytes) bounds the temporaries;
    ``fast=False`` forces the array-API reference path.
    """

    def __call__(self, x1: Any, x2: Any = None, get: Union[None, str, Sequence[str]] = None, *,
                 memory_budget: Optional[int] = None, fast: bool = True) -> Any:
        names, form = parse_get(get)
        x1, x2v, xp = self._validate(x1, x2)
        out = evaluate(self._layers, x1, x2v, xp, want_ntk="ntk" in names,
                       memory_budget=memory_budget, fast=fast)
        return _package(out, names, form)

    def diag(self, x: Any, get: Union[None, str, Sequence[str]] = None, *, fast: bool = True) -> Any:
        """``k(x_i, x_i)`` for every row: the diagonal of ``kernel_fn(x, x)``
        without the n² work (posterior variances need it)."""
        names, form = parse_get(get)
        x, _, xp = self._validate(x, None)
        out = evaluate_diagonal(self._layers, x, xp, want_ntk="ntk" in names)
        return _package(out, names, form)

    def cost(self, input_shape: Sequence[int]) -> Dict[str, float]:
        """Flops and bytes per kernel entry for per-example ``input_shape``
        (the planner sizes blocks from it)."""
        return cost_per_entry(self._layers, tuple(int(s) for s in input_shape))

    def explain(self, x1_shape: Sequence[int], x2_shape: Optional[Sequence[int]] = None,
                device: str = "cpu", memory_budget: Optional[int] = None,
                dtype: str = "float64", *, fast: bool = True) -> Explanation:
        """How ``self(x1, x2)`` would run for inputs of these shapes (batch axis
        included, e.g. ``(n, 32, 32, 3)``): the path and why, the reference
        path's tile, the slab lanes and the cost (see ``engine.Explanation``)."""
        return explain(self._layers, x1_shape, x2_shape, device, memory_budget, dtype, fast)


def _package(out: Dict[str, Any], names: Tuple[str, ...], form: str) -> Any:
    if form == "kernel":
        return Kernel(out["nngp"], out.get("ntk"))
    if form == "single":
        return out[names[0]]
    return tuple(out[n] for n in names)


class Layer(tuple):
    """``(init_fn, apply_fn, kernel_fn)`` that also knows its spec."""

    def __new__(cls, spec: Spec) -> "Layer":
        spec = registry.canonical_spec(spec)
        self = super().__new__(cls, (InitFn(spec), ApplyFn(spec), KernelFn(spec)))
        self.spec = spec
        return self

    def __reduce__(self):
        return (Layer, (self.spec,))

    def __repr__(self) -> str:
        return f"Layer({registry.spec_to_json(self.spec)})"


def make_layer(name: str, kwargs: Dict[str, Any]) -> Layer:
    return Layer([registry.canonical_layer(name, kwargs)])


def spec_of(item: Any, index: int, where: str = "serial") -> Spec:
    """The canonical spec of a layer (or a triple/function of one), argument ``index`` of ``where``."""
    if isinstance(item, Layer):
        return item.spec
    for part in (item if isinstance(item, tuple) and len(item) == 3 else ()):
        if isinstance(part, _Bound):
            return part.spec
    if isinstance(item, _Bound):
        return item.spec
    raise SpecError(
        f"{where}() argument {index} is {type(item).__name__}, not an ntkscale layer; build layers "
        "with ntkscale.stax (e.g. stax.Dense(512), stax.Relu())"
    )


def serial(*layers: Any) -> Layer:
    """Compose layers (neural-tangents ``stax.serial``); nested serials flatten."""
    if len(layers) == 1 and isinstance(layers[0], list):
        layers = tuple(layers[0])
    spec: Spec = []
    for i, layer in enumerate(layers):
        spec.extend(spec_of(layer, i))
    return Layer(spec)


def from_spec(spec: Union[Spec, str, Iterable[Any]]) -> Layer:
    """Rebuild ``(init_fn, apply_fn, kernel_fn)`` from a spec or its JSON text."""
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as exc:
            raise SpecError(f"the network spec is not valid JSON: {exc}") from exc
    return Layer(list(spec))  # type: ignore[arg-type]


def kernel_fn_from_spec(spec: Union[Spec, str]) -> KernelFn:
    return from_spec(spec)[2]
