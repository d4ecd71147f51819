"""``Explanation``: what ``kernel_fn.explain`` says about one call (path, tiles, cost)."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Tuple


@dataclasses.dataclass(frozen=True)
class Explanation:
    """How a ``kernel_fn(x1, x2)`` call of the given shapes would be evaluated.

    ``path``/``reason``: the engine's choice (``engine.select_path``) and why.
    ``tile``: ``(rows, cols)`` of the reference path's blocks under the memory
    budget (None on compiled paths). ``lanes``: image pairs the slab kernel
    runs together (None off the slab paths; it halves them on small calls).
    ``flops_per_entry``: the chosen path's arithmetic per kernel entry;
    ``bytes_per_entry``: memory per entry the chosen path holds, which the
    Gram planner budgets (``kernel_fn.cost``'s ``bytes_engine`` × itemsize: the
    reference path's temporaries, or the outputs alone on compiled paths). ``entries``: ``n1·n2``, or
    ``n(n+1)/2`` when x2 is x1 (upper triangle); ``total_flops`` their product.
    """

    path: str
    reason: str
    tile: Optional[Tuple[int, int]]
    lanes: Optional[int]
    flops_per_entry: float
    bytes_per_entry: float
    entries: int
    total_flops: float
    device: str = "cpu"
    dtype: str = "float64"

    def as_dict(self) -> Dict[str, Any]:
        """The fields as a JSON-ready dict (``tile`` as a list)."""
        out = dataclasses.asdict(self)
        out["tile"] = None if self.tile is None else list(self.tile)
        return out

    def lines(self) -> List[str]:
        """Human-readable facts, one per line."""
        out = [f"path: {self.path} ({self.reason})", f"device: {self.device}, dtype: {self.dtype}"]
        if self.tile is not None:
            out.append(f"tile: {self.tile[0]} x {self.tile[1]} entries per block (memory budget)")
        if self.lanes is not None:
            out.append(f"lanes: {self.lanes} image pairs per kernel group")
        out += [f"flops per entry: {self.flops_per_entry:.4g}",
                f"bytes per entry: {self.bytes_per_entry:.4g}",
                f"entries: {self.entries}",
                f"total flops: {self.total_flops:.4g}"]
        return out
