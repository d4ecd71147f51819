"""``solver.method: auto``: Cholesky or CG, from what is known before the solve starts.

The rule is the measured crossover, not a guess. On the MNIST FC3 NTK, float64,
ridge 1e-6 × mean diagonal, CG tol 1e-6 (``benchmarks/results/solvers.json``,
2k–16k, each solver in a fresh process; ``benchmarks/results/scale.json``,
4k–60k, the CLI on a 2-worker cluster; tables in ``benchmarks/README.md``,
"Solver crossover"), the tiled Cholesky on the stored Gram beat CG with the
rank-500 Nyström preconditioner at every n measured (8k: 6.0 s against 40.6 s;
16k: 28.6 s against 150 s; 60k: 1594 s against 3114 s), and plain CG was
slower still (over 90 s from 8k on). CG never won, so
the rule picks the Cholesky whenever it can run, and CG only where it cannot:

* the Gram is not stored (``mode: streamed``, panels recomputed from the
  inputs): the Cholesky needs the stored array;
* the factor does not fit where it is written: the tiled Cholesky keeps one
  lower triangle of tiles per factor, about ``n² / 2 × itemsize`` bytes
  (:func:`factor_bytes`); several ridges share one factor
  (:func:`ntkscale.solvers.shared.shared_factor_solve`), so one factor is needed
  whatever the number of ridges.

The number of ridges does not change the choice: with the shared factor, more
ridges cost preconditioned iterations, not factorisations (measured ratios in
the README section).
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from typing import Any, Optional

from .operator import ArraySource, GramOperator, ZarrSource

#: Where the rule comes from (quoted in the choice's reason).
SOURCE = "benchmarks/results/solvers.json"


@dataclass(frozen=True)
class MethodChoice:
    """The method ``auto`` resolved to, and why (one line)."""

    method: str
    reason: str


def factor_bytes(n: int, itemsize: int = 8, tile: int = 4096) -> int:
    """Bytes of one tiled Cholesky factor: the ``T (T + 1) / 2`` tiles on and below
    the diagonal (``T = ceil(n / tile)``), each ``tile² × itemsize``; the tiles
    above are never written."""
    t = max(1, min(int(tile), int(n)))
    T = math.ceil(n / t)
    return T * (T + 1) // 2 * t * t * int(itemsize)


def choose_method(n: int, *, stored: bool, n_ridges: int = 1, itemsize: int = 8,
                  free_bytes: Optional[float] = None, tile: int = 4096) -> MethodChoice:
    """``cholesky`` or ``cg`` for an ``n × n`` Gram (module docstring: the measured rule).

    ``stored``: the Gram is an array (Zarr or in memory), not recomputed per
    product; ``free_bytes``: room where the factor goes (None: not known, taken
    as enough); ``n_ridges``: how many ridges are solved (reported; one shared
    factor serves them all).
    """
    ridges = f", {n_ridges} ridges on one factor" if n_ridges > 1 else ""
    if not stored:
        return MethodChoice("cg", "the Gram is streamed (recomputed per product), and the Cholesky needs it stored")
    need = factor_bytes(n, itemsize, tile)
    if free_bytes is not None and need > free_bytes:
        return MethodChoice("cg", f"the Cholesky factor needs {need / 2**30:.1f} GiB and {free_bytes / 2**30:.1f} "
                                  "GiB are free where it goes")
    return MethodChoice("cholesky", f"stored Gram, n = {n}{ridges}: the tiled Cholesky beat CG at every measured n "
                                    f"(2k-60k, {SOURCE})")


def is_stored(op: Any) -> bool:
    """Whether a Gram (operator or array) can be factored: an array, or an operator over one."""
    if isinstance(op, GramOperator):
        return isinstance(op.source, (ArraySource, ZarrSource))
    return hasattr(op, "materialize") or (hasattr(op, "shape") and hasattr(op, "__getitem__"))


def free_bytes_at(group: Any) -> Optional[float]:
    """Free bytes on the file system under a Zarr group (None: not a local path)."""
    root = getattr(getattr(group, "store", None), "root", None)
    if root is None:
        return None
    try:
        return float(shutil.disk_usage(str(root)).free)
    except OSError:
        return None


def resolve_method(method: str, op: Any, n_ridges: int = 1, group: Any = None) -> MethodChoice:
    """``method`` itself when it is ``cg`` or ``cholesky``; for ``auto``, :func:`choose_method`
    with what ``op`` and ``group`` (where a factor would be written) tell."""
    if method != "auto":
        return MethodChoice(method, "set in the solver settings")
    n = int(op.shape[0])
    itemsize = int(getattr(getattr(op, "dtype", None), "itemsize", 8) or 8)
    return choose_method(n, stored=is_stored(op), n_ridges=n_ridges, itemsize=itemsize,
                         free_bytes=None if group is None else free_bytes_at(group))
