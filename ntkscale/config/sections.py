"""Checks shared by every section of a run configuration.

:class:`Section` wraps one mapping of the config and checks its keys and values;
each error names the file and the dotted key (``run.yaml: cluster.memory: ...``)
and, for an unknown key, the closest known one. :func:`parse_memory` reads
Dask-style memory sizes (``2GB``, ``4GiB``, ``1e9``) with the unit table of
``dask.utils.parse_bytes``, so validating a config needs no Dask.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, Mapping, Optional, Tuple

from ..errors import ConfigError

#: Memory units, as ``dask.utils.byte_sizes`` (lower case; '' and 'b' are bytes).
BYTE_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
    "t": 10**12, "tb": 10**12, "p": 10**15, "pb": 10**15,
    "ki": 2**10, "kib": 2**10, "mi": 2**20, "mib": 2**20, "gi": 2**30, "gib": 2**30,
    "ti": 2**40, "tib": 2**40, "pi": 2**50, "pib": 2**50,
}


def parse_memory(value: Any, error: Callable[[str], Exception] = ConfigError) -> int:
    """``"4GiB"``/``"2GB"``/``1e9`` -> bytes, read as ``dask.utils.parse_bytes`` reads them.

    ``error(message)`` makes the exception raised for a value that is not a
    positive memory size.
    """
    bad = f"must be a memory size such as '2GB' or '4GiB', got {value!r}"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise error(bad)
    try:
        out = int(value) if not isinstance(value, str) else _parse_size(value)
    except (ValueError, OverflowError):
        raise error(bad) from None
    if out <= 0:
        raise error(f"must be a positive memory size, got {value!r}")
    return out


def _parse_size(text: str) -> int:
    """'5.4 kB' -> 5400; a unit alone ('MB') means one of it; raises ValueError."""
    text = text.replace(" ", "")
    if not any(c.isdigit() for c in text):
        text = "1" + text
    number = text.rstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    unit = text[len(number):].lower()
    if unit not in BYTE_UNITS:
        raise ValueError(f"unknown memory unit {unit!r}")
    return int(float(number) * BYTE_UNITS[unit])


class Section:
    """Checks one mapping of the config: required/optional keys, types, names."""

    def __init__(self, mapping: Any, where: str, source: str):
        self.where, self.source = where, source
        if not isinstance(mapping, Mapping):
            raise self.error(f"must be a mapping (key: value), got {type(mapping).__name__} {mapping!r}")
        self.mapping = dict(mapping)

    @classmethod
    def of(cls, options: Any, where: str, source: str) -> "Section":
        """``options`` itself when it is already a Section, else a new one over it."""
        return options if isinstance(options, Section) else cls(options, where, source)

    def error(self, message: str, key: Optional[str] = None) -> ConfigError:
        name = f"{self.where}.{key}" if self.where and key else (key or self.where or "config")
        return ConfigError(f"{self.source}: {name}: {message}")

    def check_keys(self, allowed: Tuple[str, ...]) -> None:
        for key in self.mapping:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise self.error(f"unknown key{hint} (allowed here: {', '.join(allowed)})", str(key))

    def get(self, key: str, default: Any = None, *, required: bool = False) -> Any:
        if key not in self.mapping or self.mapping[key] is None:
            if required:
                raise self.error("is required", key)
            return default
        return self.mapping[key]

    def int(self, key: str, default: Optional[int] = None, *, minimum: int = 1) -> Optional[int]:
        value = self.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(f"must be an integer >= {minimum}, got {value!r}", key)
        return int(value)

    def choice(self, key: str, choices: Tuple[str, ...], default: str) -> str:
        value = self.get(key, default)
        if value not in choices:
            raise self.error(f"must be one of {', '.join(choices)}, got {value!r}", key)
        return str(value)

    def bytes(self, key: str, default: Any = None) -> Optional[int]:
        """A memory size in bytes (None when absent or ``auto``)."""
        value = self.get(key, default)
        if value is None or value == "auto":
            return None
        return parse_memory(value, lambda msg: self.error(msg, key))

    def memory_string(self, key: str, default: Optional[str] = None) -> Optional[str]:
        """A memory size kept as written ('2GB', '4GiB'), after checking it parses."""
        value = self.get(key, default)
        if value is None:
            return None
        parse_memory(value, lambda msg: self.error(msg, key))
        return str(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise self.error(f"must be true or false, got {value!r}", key)
        return value

    def string(self, key: str, default: Optional[str] = None, *, required: bool = False) -> Optional[str]:
        value = self.get(key, default, required=required)
        if value is not None and not isinstance(value, str):
            raise self.error(f"must be a string, got {value!r}", key)
        return value

    def string_list(self, key: str) -> Tuple[str, ...]:
        value = self.get(key, ())
        if isinstance(value, str) or not isinstance(value, (list, tuple)) \
                or not all(isinstance(v, str) for v in value):
            raise self.error(f"must be a list of strings, got {value!r}", key)
        return tuple(value)

    def string_map(self, key: str) -> Tuple[Tuple[str, str], ...]:
        """A mapping of strings to strings, as sorted pairs (hashable)."""
        value = self.get(key, {})
        if not isinstance(value, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise self.error(f"must be a mapping of strings to strings (quote numbers), got {value!r}", key)
        return tuple(sorted(value.items()))
