"""Reading a configuration file: YAML with the surprises removed, or JSON.

PyYAML implements YAML 1.1, whose float pattern needs a dot: ``1e-3`` is read as the
*string* ``"1e-3"`` while ``1.0e-3`` is a float (YAML 1.2, JSON and Python all read
``1e-3`` as a number). :class:`ConfigLoader` is ``yaml.SafeLoader`` with the YAML 1.2
float pattern (exponent without a dot allowed), and it refuses a mapping that names a
key twice (YAML 1.2 requires unique keys; PyYAML keeps the last one silently),
naming the key and both lines. JSON text gets the same duplicate-key check.
"""

from __future__ import annotations

import json
import re
from typing import Any, Dict, List, Tuple

import yaml

from ..errors import ConfigError

FLOAT_TAG = "tag:yaml.org,2002:float"
MERGE_TAG = "tag:yaml.org,2002:merge"

#: YAML 1.1's float forms (``1.5``, ``.5``, ``1.``, ``1.5e-3``, ``190:20:30.15``, ``.inf``,
#: ``.nan``) plus the YAML 1.2 / JSON form with an exponent and no dot (``1e-3``, ``2E+5``).
FLOAT = re.compile(r"""^(?:
     [-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X)


class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that reads ``1e-3`` as a float and refuses duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            first: Dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == MERGE_TAG:       # ``<<: *base`` entries may be overridden
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    seen = first.get(key)
                except TypeError:                   # unhashable key: SafeLoader names it below
                    continue
                line = key_node.start_mark.line + 1
                if seen is not None:
                    raise ConfigError(f"duplicate key {key!r} on line {line} (first on line {seen}): "
                                      "each key may appear once in a mapping; keep one")
                first[key] = line
        return super().construct_mapping(node, deep=deep)


ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != FLOAT_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
ConfigLoader.add_implicit_resolver(FLOAT_TAG, FLOAT, list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """Parse YAML text with :class:`ConfigLoader`."""
    return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 (ConfigLoader is a SafeLoader)


def _unique_pairs(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ConfigError(f"duplicate key {key!r}: each key may appear once in an object; keep one")
        out[key] = value
    return out


def load_json(text: str) -> Any:
    """Parse JSON text, refusing duplicate keys."""
    return json.loads(text, object_pairs_hook=_unique_pairs)
