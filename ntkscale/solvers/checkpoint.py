"""Checkpoints of an iterative solve: the protocol and a Zarr implementation.

A checkpoint is any object with ``save(state)`` and ``load() -> state | None``
(and optionally ``clear()``), where ``state`` is a flat ``dict`` of NumPy
arrays and JSON scalars. :func:`ntkscale.solvers.cg.cg` saves its iterate,
residual and search directions every ``checkpoint_every`` iterations and, on
the next call with the same problem, resumes from the last one.

:class:`ZarrCheckpoint` writes into a Zarr v3 group (the run's store) with two
slots used alternately: a slot is marked complete (its ``complete`` and
``seq`` attributes are written last) only after all its arrays are written,
so a process killed in the middle of a save leaves the previous slot intact.
Zarr's LocalStore writes each file atomically (temp file + rename), so a slot
marker is either absent or whole.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Optional, Protocol, runtime_checkable

import numpy as np

SLOTS = ("a", "b")


@runtime_checkable
class Checkpoint(Protocol):
    def save(self, state: Dict[str, Any]) -> None: ...

    def load(self) -> Optional[Dict[str, Any]]: ...


class MemoryCheckpoint:
    """Keeps the last state in memory (tests, and solves that need no resume)."""

    def __init__(self) -> None:
        self.state: Optional[Dict[str, Any]] = None
        self.saves = 0

    def save(self, state: Dict[str, Any]) -> None:
        self.state = {k: (np.array(v, copy=True) if isinstance(v, np.ndarray) else v) for k, v in state.items()}
        self.saves += 1

    def load(self) -> Optional[Dict[str, Any]]:
        return None if self.state is None else dict(self.state)

    def clear(self) -> None:
        self.state = None


class ZarrCheckpoint:
    """Checkpoint in ``group[name]`` of a Zarr v3 store (a path or a group).

    Arrays become Zarr arrays (one chunk each, uncompressed); scalars and
    strings go into the slot's attributes.
    """

    def __init__(self, group: Any, name: str = "cg_checkpoint"):
        import zarr  # noqa: PLC0415 - deferred: 0.6 s, and `import ntkscale` loads the solvers

        if isinstance(group, str) or hasattr(group, "__fspath__"):
            group = zarr.open_group(str(group), mode="a")
        self.root = group.require_group(name)
        self.name = name
        self.saves = 0

    def _slots(self):
        out = []
        for slot in SLOTS:
            try:
                g = self.root[slot]
                attrs = dict(g.attrs)
            except (KeyError, FileNotFoundError, ValueError, json.JSONDecodeError):
                continue
            if attrs.get("complete"):
                out.append((int(attrs.get("seq", -1)), slot, g, attrs))
        return sorted(out, key=lambda t: t[0])

    def save(self, state: Dict[str, Any]) -> None:
        slots = self._slots()
        seq = slots[-1][0] + 1 if slots else 0
        last = slots[-1][1] if slots else None
        slot = "b" if last == "a" else "a"
        g = self.root.require_group(slot)
        g.attrs.update({"complete": False})
        scalars: Dict[str, Any] = {}
        arrays = []
        for key, value in state.items():
            if isinstance(value, np.ndarray):
                value = np.ascontiguousarray(value)
                arr = g.create_array(key, shape=value.shape, dtype=value.dtype,
                                     chunks=value.shape if value.size else None,
                                     compressors=None, overwrite=True)
                if value.size:
                    arr[...] = value
                arrays.append(key)
            else:
                scalars[key] = value.item() if isinstance(value, np.generic) else value
        # The marker last: a slot is only trusted once this write has landed.
        g.attrs.put({"scalars": scalars, "arrays": arrays, "seq": seq, "complete": True})
        self.saves += 1

    def load(self) -> Optional[Dict[str, Any]]:
        for _, _, g, attrs in reversed(self._slots()):
            try:
                state: Dict[str, Any] = dict(attrs.get("scalars", {}))
                for key in attrs.get("arrays", []):
                    state[key] = np.asarray(g[key][...])
                return state
            except Exception:  # a damaged slot: fall back to the older one
                continue
        return None

    def clear(self) -> None:
        for slot in SLOTS:
            try:
                self.root[slot].attrs.update({"complete": False})
            except KeyError:
                pass
