"""Layer registry and the canonical, hashable network spec.

A network is data: ``[[LayerName, {kwargs}], ...]``. The canonical form has
every keyword present with its default filled in, tuples as lists and sorted
keys; its hash is the SHA-256 of that JSON. No semantic aliasing: ``Relu`` and
``ABRelu(0, 1)`` are different specs with equal values.

Branches nest: ``parallel(a, b)`` is ONE layer whose keyword ``branches`` holds
one canonical layer list per branch, ``["parallel", {"branches": [[...], [...]]}]``;
``FanOut``/``FanIn*`` are plain layers around it. A residual block reads
``[["FanOut", {"num": 2}], ["parallel", {"branches": [[["Relu", {...}], ["Dense",
{...}]], [["Identity", {}]]]}], ["FanInSum", {}]]``. Nested ``serial`` flattens
(also inside a branch), so specs without branches are exactly what they were.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple, Type

from ..errors import SpecError, UnsupportedOptionError

Spec = List[List[Any]]


@dataclasses.dataclass(frozen=True)
class Param:
    """One keyword of a layer constructor.

    kind: ``float``, ``float?`` (float or None), ``int?``, ``int``, ``str``,
    ``bool``, ``ints`` (tuple of ints), ``ints?``, ``any``, ``branches`` (a list of
    layer lists, each canonicalised recursively).
    ``supported``: when not None, the only values ntkscale supports yet.
    """

    default: Any
    kind: str
    choices: Tuple[Any, ...] | None = None
    supported: Tuple[Any, ...] | None = None
    required: bool = False


@dataclasses.dataclass(frozen=True)
class LayerEntry:
    name: str
    params: Dict[str, Param]  # in neural-tangents' positional order
    impl: Type[Any]


_REGISTRY: Dict[str, LayerEntry] = {}


def register(name: str, params: Dict[str, Param]) -> Callable[[Type[Any]], Type[Any]]:
    """Class decorator: register a layer implementation under ``name``."""

    def wrap(cls: Type[Any]) -> Type[Any]:
        _REGISTRY[name] = LayerEntry(name, dict(params), cls)
        cls.layer_name = name
        return cls

    return wrap


def layer_names() -> List[str]:
    return sorted(_REGISTRY)


def entry(name: str) -> LayerEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = [n for n in _REGISTRY if n.lower() == str(name).lower()]
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SpecError(
            f"unknown layer {name!r}{hint}; known layers: {', '.join(layer_names())}"
        ) from None


def _coerce(layer: str, key: str, value: Any, p: Param) -> Any:
    where = f"{layer}({key}=...)"
    kind = p.kind
    if value is None and (kind.endswith("?") or kind == "any"):
        return None
    if kind in ("float", "float?"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(f"{where} must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise SpecError(f"{where} must be finite, got {value!r}")
        return value
    if kind in ("int", "int?"):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            if isinstance(value, float) and value.is_integer() and value > 0:
                return int(value)
            raise SpecError(f"{where} must be a positive integer, got {value!r}")
        return int(value)
    if kind == "int0":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SpecError(f"{where} must be a non-negative integer, got {value!r}")
        return int(value)
    if kind == "floats":
        try:
            items = [] if isinstance(value, (str, bytes)) else list(value)
        except TypeError:
            items = []
        if not items or any(isinstance(v, (bool, str, bytes)) for v in items):
            raise SpecError(f"{where} must be a non-empty list of finite numbers, got {value!r}")
        try:
            out = [float(v) for v in items]
        except (TypeError, ValueError):
            raise SpecError(f"{where} must be a non-empty list of finite numbers, got {value!r}") from None
        if not all(math.isfinite(v) for v in out):
            raise SpecError(f"{where} must be a non-empty list of finite numbers, got {value!r}")
        return out
    if kind in ("ints", "ints?"):
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        try:
            out = [int(v) for v in value]
        except (TypeError, ValueError):
            raise SpecError(f"{where} must be a tuple of positive integers, got {value!r}") from None
        if any(v <= 0 for v in out) or any(float(v) != float(w) for v, w in zip(out, value)):
            raise SpecError(f"{where} must be a tuple of positive integers, got {value!r}")
        return out
    if kind == "str":
        if not isinstance(value, str):
            raise SpecError(f"{where} must be a string, got {value!r}")
        return value
    if kind == "branches":
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
            raise SpecError(f"{where} must be a non-empty list of branches, each a layer list; "
                            f"got {value!r}")
        return [canonical_spec(branch) for branch in value]
    if kind == "bool":
        if not isinstance(value, bool):
            raise SpecError(f"{where} must be True or False, got {value!r}")
        return value
    return _jsonable(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def canonical_layer(name: str, kwargs: Mapping[str, Any]) -> List[Any]:
    """Validate ``kwargs`` of layer ``name`` and return ``[name, full_kwargs]``."""
    e = entry(name)
    unknown = sorted(set(kwargs) - set(e.params))
    if unknown:
        raise SpecError(
            f"{name} got unknown keyword(s) {', '.join(map(repr, unknown))}; "
            f"{name} accepts: {', '.join(e.params) or 'no keywords'}"
        )
    out: Dict[str, Any] = {}
    for key, p in e.params.items():
        if key not in kwargs:
            if p.required:
                raise SpecError(f"{name} needs the keyword {key!r}")
            value = p.default
        else:
            value = kwargs[key]
        value = _coerce(name, key, value, p) if value is not None or p.required else None
        if p.choices is not None and value not in p.choices:
            raise SpecError(
                f"{name}({key}={value!r}) is not valid; choose one of {', '.join(map(repr, p.choices))}"
            )
        if p.supported is not None and value not in [_jsonable(s) for s in p.supported]:
            raise UnsupportedOptionError(
                f"{name}({key}={value!r}) is not supported by ntkscale yet; "
                f"only {key}={p.supported[0]!r} (the neural-tangents default) is"
            )
        out[key] = value
    return [name, dict(sorted(out.items()))]


def canonical_spec(spec: Sequence[Any]) -> Spec:
    """Canonical form of a layer list given as ``[[name, kwargs], ...]``."""
    if isinstance(spec, (str, bytes)) or not isinstance(spec, Sequence):
        raise SpecError(
            f"a network spec is a list of [LayerName, {{kwargs}}] pairs, got {type(spec).__name__}"
        )
    out: Spec = []
    for i, item in enumerate(spec):
        if isinstance(item, str):
            name, kwargs = item, {}
        elif isinstance(item, Sequence) and len(item) in (1, 2) and isinstance(item[0], str):
            name = item[0]
            kwargs = item[1] if len(item) == 2 else {}
            if kwargs is None:
                kwargs = {}
            if not isinstance(kwargs, Mapping):
                raise SpecError(f"layer {i} ({name}): keywords must be a mapping, got {kwargs!r}")
        else:
            raise SpecError(
                f"layer {i} of the spec must be [LayerName, {{kwargs}}], got {item!r}"
            )
        out.append(canonical_layer(name, kwargs))
    if not out:
        raise SpecError("the network spec is empty; give at least one layer")
    return out


def spec_to_json(spec: Spec) -> str:
    """Canonical JSON text of a (canonical) spec: sorted keys, no spaces."""
    return json.dumps(spec, sort_keys=True, separators=(",", ":"), allow_nan=False)


def spec_hash(spec: Spec) -> str:
    """SHA-256 (hex) of the canonical JSON of ``spec``."""
    return hashlib.sha256(spec_to_json(spec).encode("utf-8")).hexdigest()


def build_layers(spec: Spec) -> List[Any]:
    """The layer implementations of a canonical spec, in order."""
    return [entry(name).impl(dict(kwargs)) for name, kwargs in spec]
