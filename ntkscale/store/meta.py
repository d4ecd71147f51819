"""The store's attributes as a frozen value, and what a run may change in them.

:class:`StoreMeta` mirrors ``zarr.json`` ``attributes["ntkscale"]`` of a store
(unknown keys are kept in ``extra`` and written back unchanged).
:meth:`StoreMeta.diff` compares a store with what a run wants and either
raises :class:`~ntkscale.errors.SpecMismatchError` naming what differs, or
returns a :class:`StoreDiff`: the changes the run is allowed to make.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from ..errors import SpecMismatchError
from .layout import FORMAT_VERSION

_UNCHANGED = "; the store was not changed"


@dataclasses.dataclass(frozen=True)
class StoreDiff:
    """What a run may change in an existing store (nothing else may differ).

    ``add_test``: the store has no test part and the run brings one;
    ``drop_test``: the run's test inputs differ and it asked to recompute them;
    ``replace_y``: the input sets (``"train"``/``"test"``) whose labels are replaced.
    """

    add_test: bool = False
    drop_test: bool = False
    replace_y: Tuple[str, ...] = ()

    @property
    def new_test(self) -> bool:
        """The test part is (re)created from the run's test inputs."""
        return self.add_test or self.drop_test

    @property
    def empty(self) -> bool:
        return not (self.add_test or self.drop_test or self.replace_y)


@dataclasses.dataclass(frozen=True)
class StoreMeta:
    """A store's attributes (or what a run wants them to be; then ``block_size`` is 0)."""

    spec: list
    spec_hash: str
    dtype: str
    get: Tuple[str, ...]
    n_train: int
    n_test: int = 0
    block_size: int = 0
    fingerprints: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    sources: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    sample_shape: Tuple[int, ...] = ()
    format_version: int = FORMAT_VERSION
    checksum: Optional[str] = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, attrs: Mapping[str, Any]) -> "StoreMeta":
        """From the attribute dict (keys this class does not name go to ``extra``)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in attrs.items() if k in names}
        known["get"] = tuple(known.get("get") or ())
        known["sample_shape"] = tuple(known.get("sample_shape") or ())
        known["n_test"] = int(known.get("n_test") or 0)
        known.setdefault("n_train", 0)
        known["fingerprints"] = dict(known.get("fingerprints") or {})
        known["sources"] = dict(known.get("sources") or {})
        known.setdefault("format_version", 0)
        return cls(**known, extra={k: v for k, v in attrs.items() if k not in names})

    def to_dict(self) -> Dict[str, Any]:
        """The attribute dict as stored (JSON types)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        out.update(get=list(self.get), sample_shape=list(self.sample_shape),
                   fingerprints=dict(self.fingerprints), sources=dict(self.sources))
        if out["checksum"] is None:
            del out["checksum"]
        out.update(self.extra)
        return out

    def diff(self, wanted: Union["StoreMeta", Mapping[str, Any]], *, recompute_test: bool = False,
             replace_y: bool = False, path: Any = None) -> StoreDiff:
        """Compare this store with what a run wants (read-only).

        Raises :class:`SpecMismatchError` naming what differs (spec, dtype, a
        kernel the store lacks, train inputs; test inputs unless
        ``recompute_test``; labels unless ``replace_y``), else returns the
        allowed changes. ``path`` names the store in messages.
        """
        want = wanted if isinstance(wanted, StoreMeta) else StoreMeta.from_dict(wanted)
        where = f"store {path}" if path is not None else "the store"
        if want.spec_hash != self.spec_hash:
            raise SpecMismatchError(
                f"{where} was made with a different kernel spec (kernel.layers): "
                f"{_layer_diff(want.spec, self.spec)}; spec hash {want.spec_hash[:12]} vs "
                f"{self.spec_hash[:12]}. Use another store path{_UNCHANGED}")
        if want.dtype != self.dtype:
            raise SpecMismatchError(f"{where} holds dtype {self.dtype} but the config asks for "
                                    f"{want.dtype} (dtype); use the same dtype or another store{_UNCHANGED}")
        missing = [k for k in want.get if k not in self.get]
        if missing:
            raise SpecMismatchError(f"{where} holds {', '.join(self.get)} but the config also asks for "
                                    f"{', '.join(missing)} (kernel.get); use another store{_UNCHANGED}")
        add_test = drop_test = False
        new_y = []
        for which in ("train", "test"):
            w, h = want.fingerprints.get(which), self.fingerprints.get(which)
            if w is None or h is None:
                add_test = add_test or (which == "test" and w is not None)
                continue
            if w["x"] != h["x"]:
                # a pattern's fingerprint is folded into x's: name the pattern when it is what changed
                keys = "data.train.pattern" if w.get("pattern") != h.get("pattern") else "data.train.x"
                if which == "train":
                    raise SpecMismatchError(
                        f"{where} was made from different train inputs ({keys}): fingerprint "
                        f"{w['x'][:19]} vs {h['x'][:19]} in the store; the train Gram depends on them, "
                        f"so use another store{_UNCHANGED}")
                if not recompute_test:
                    raise SpecMismatchError(
                        f"{where} was made with a different test set (data.test.x): fingerprint "
                        f"{w['x'][:19]} vs {h['x'][:19]}; the train Gram is still valid: rerun with "
                        f"--recompute-test (Python: recompute_test=True) to recompute only the test "
                        f"part{_UNCHANGED}")
                drop_test = True
                continue
            if w.get("y") != h.get("y"):
                if not replace_y:
                    raise SpecMismatchError(
                        f"{where} holds different labels (data.{which}.y); the Gram does not depend on "
                        f"them: rerun with --replace-y (Python: replace_y=True) to store the new "
                        f"ones{_UNCHANGED}")
                new_y.append(which)
        return StoreDiff(add_test=add_test, drop_test=drop_test, replace_y=tuple(new_y))


def _layer_diff(want: list, have: list) -> str:
    for i, (a, b) in enumerate(zip(want, have, strict=False)):
        if a != b:
            return f"layer {i} is {json.dumps(a)} in the config but {json.dumps(b)} in the store"
    return f"the config has {len(want)} layers, the store {len(have)}"
