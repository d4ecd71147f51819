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
from .engine.image_plan import plan_image_net, rank_errors
from .engine.reference import default_memory_budget
from .engine.reference_image import evaluate_image, evaluate_image_diagonal
from .inputs import as_float_array, validate_pair
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

    @property
    def uses_patterns(self) -> bool:
        """Does the network aggregate over graph patterns (an ``Aggregate`` layer,
        inside ``parallel`` branches too)? Its callers must then pass ``pattern=``."""
        def has(layers: Any) -> bool:
            return any(layer.layer_name == "Aggregate" or any(has(b) for b in getattr(layer, "branches", ()))
                       for layer in layers)
        return has(self._layers)

    def _first_name(self) -> str:
        first = self._layers[0]
        return getattr(first, "describe", lambda: first.layer_name)()

    def _validate(self, x1: Any, x2: Any) -> Tuple[Any, Any, Any]:
        """``validate_pair``; for image networks the error also names the
        layer that receives the images. NWC sequences ``(n, W, C)`` come back
        as ``(n, 1, W, C)``: the engine runs a sequence as a ``1 × W`` image."""
        try:
            x1, x2, xp = validate_pair(x1, x2, self.is_image_net)
        except InputError as exc:
            if not self.is_image_net:
                raise
            first = next(l for l, layer in enumerate(self._layers) if layer.image_layer)
            if first == 0:
                raise InputError(f"{exc} (the network's input layer 0 is {self._first_name()})") from None
            layer = self._layers[first]
            name = getattr(layer, "describe", lambda: layer.layer_name)()
            raise InputError(f"{exc} (layer {first} of the network, {name}, needs them)") from None
        if self.is_image_net and x1.ndim == 3:
            self._check_rank(tuple(x1.shape), "x1")
            plan_image_net(self._layers, tuple(x1.shape[1:]))   # shape errors in sequence terms
            x1 = xp.reshape(x1, (x1.shape[0], 1) + tuple(x1.shape[1:]))
            x2 = None if x2 is None else xp.reshape(x2, (x2.shape[0], 1) + tuple(x2.shape[1:]))
        return x1, x2, xp

    def _check_rank(self, shape: Tuple[int, ...], name: str) -> None:
        """Windowed layers must have the rank of the inputs (1-D on NWC sequences)."""
        why = rank_errors(self._layers, len(shape) - 2, shape[1] if len(shape) == 4 else 1)
        if why is not None:
            hint = "; for one-channel images add a channel axis with x[..., None]" if len(shape) == 3 else ""
            raise InputError(f"{why}; {name} has shape {shape}{hint} (the network's input "
                             f"layer 0 is {self._first_name()})")

    def _patterns(self, pattern: Any, n1: int, n2: Optional[int], xp: Any) -> Tuple[Any, Any]:
        """neural-tangents' ``pattern=(p1, p2)`` (``Aggregate``) as arrays of ``xp``;
        ``p2`` may be None when ``x2`` is (then it is ``p1``)."""
        if pattern is None:
            return None, None
        if not isinstance(pattern, (tuple, list)) or len(pattern) != 2:
            raise InputError("kernel_fn(..., pattern=...) takes a pair (pattern1, pattern2) as in "
                             "neural-tangents, one pattern per input batch")
        p1, p2 = pattern
        if p2 is None and n2 is None:
            p2 = p1
        if (p1 is None) != (p2 is None):
            raise InputError("pattern=(pattern1, pattern2) has exactly one None; give both patterns "
                             "or neither (as neural-tangents)")
        if p1 is None:
            return None, None
        out = []
        for name, p, n in (("pattern1", p1, n1), ("pattern2", p2, n1 if n2 is None else n2)):
            arr, _ = as_float_array(p, name)
            if arr.ndim < 1 or arr.shape[0] != n:
                raise InputError(f"{name} (the graph pattern of Aggregate) has shape {tuple(arr.shape)} "
                                 f"but its inputs have {n} rows; give one pattern per input (leading "
                                 "axis = batch)")
            out.append(xp.asarray(arr))
        return out[0], out[1]

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
        sequence = self.is_image_net and len(shape) == 3
        if sequence:   # NWC sequences run as 1 x W images
            self._check_rank(shape, "input_shape")
            per_example = (1,) + per_example
        params = []
        for layer in self._layers:
            params.append(layer.init(rng, per_example))
            per_example = layer.output_shape(per_example)
        if sequence and len(per_example) == 3:
            per_example = per_example[1:]
        return (shape[0],) + tuple(per_example), params


class ApplyFn(_Bound):
    """``apply_fn(params, x, rng=None) -> outputs`` of the finite-width NumPy network
    (``rng``: the dropout masks of top-level ``Dropout(mode="train")`` layers)."""

    def __call__(self, params: Sequence[Any], x: Any, *, rng: Any = None,
                 pattern: Any = None, **kwargs: Any) -> np.ndarray:
        """``pattern``: the graph pattern of ``x``'s rows for ``Aggregate`` layers
        (neural-tangents' ``apply_fn(params, x, pattern=p)``)."""
        check_arity(self._layers, "the network")
        if len(params) != len(self._layers):
            raise InputError(f"params has {len(params)} entries for {len(self._layers)} layers; use init_fn's output")
        x = np.asarray(x, dtype=np.float64)
        sequence = self.is_image_net and x.ndim == 3
        if sequence:
            self._check_rank(tuple(x.shape), "x")
            x = x[:, None]
        gen = None if rng is None else np.random.default_rng(rng)
        for layer, p in zip(self._layers, params):
            if gen is not None and getattr(layer, "stochastic", False):
                x = layer.apply_random(p, x, gen)
            elif getattr(layer, "takes_pattern", False):
                x = layer.apply_pattern(p, x, pattern)
            else:
                x = layer.apply(p, x)
        return x[:, 0] if sequence and x.ndim == 4 else x


class KernelFn(_Bound):
    """``kernel_fn(x1, x2=None, get=None)``: exact infinite-width kernels.

    Inputs are 2-D ``(n, features)`` for flat networks, 4-D NHWC images or 3-D
    NWC sequences ``(n, length, channels)`` for networks with spatial layers.
    ``pattern=(p1, p2)``: graph patterns of x1's and x2's rows for ``Aggregate``
    (neural-tangents' keyword).

    ``get`` is ``"nngp"``, ``"ntk"``, a tuple of them (a tuple comes back in
    that order) or ``None`` (a :class:`Kernel` with ``.nngp`` and ``.ntk``).
    ``x2=None`` means ``x2 = x1``. Output lives in the inputs' array namespace
    and floating dtype. ``memory_budget`` (bytes) bounds the temporaries;
    ``fast=False`` forces the array-API reference path.
    """

    def __call__(self, x1: Any, x2: Any = None, get: Union[None, str, Sequence[str]] = None, *,
                 memory_budget: Optional[int] = None, fast: bool = True,
                 pattern: Any = None) -> Any:
        names, form = parse_get(get)
        x1, x2v, xp = self._validate(x1, x2)
        p1, p2 = self._patterns(pattern, x1.shape[0], None if x2v is None else x2v.shape[0], xp)
        if p1 is not None and self.is_image_net:
            # graph patterns (Aggregate) travel with the rows: the reference image path
            out = evaluate_image(self._layers, x1, x2v, xp, want_ntk="ntk" in names,
                                 memory_budget=memory_budget or default_memory_budget(),
                                 patterns=(p1, p2))
        else:
            out = evaluate(self._layers, x1, x2v, xp, want_ntk="ntk" in names,
                           memory_budget=memory_budget, fast=fast)
        return _package(out, names, form)

    def diag(self, x: Any, get: Union[None, str, Sequence[str]] = None, *, fast: bool = True,
             pattern: Any = None) -> Any:
        """``k(x_i, x_i)`` for every row: the diagonal of ``kernel_fn(x, x)``
        without the n² work (posterior variances need it). ``pattern``: the
        graph pattern of ``x``'s rows (``Aggregate``)."""
        names, form = parse_get(get)
        x, _, xp = self._validate(x, None)
        p, _ = self._patterns(None if pattern is None else (pattern, None), x.shape[0], None, xp)
        if p is not None and self.is_image_net:
            out = evaluate_image_diagonal(self._layers, x, xp, want_ntk="ntk" in names,
                                          memory_budget=default_memory_budget(), pattern=p)
        else:
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
