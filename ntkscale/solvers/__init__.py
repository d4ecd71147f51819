"""Kernel-regression solvers: dense in-memory, blocked CG, tiled Cholesky.

``solve(A, Y, ridges=..., method="cg"|"cholesky")`` is the entry point the
pipeline uses; the pieces are importable on their own:

* :mod:`.operator`  - ``GramOperator`` over an array, a Zarr array or ``kernel_fn`` (streamed)
* :mod:`.cg`        - block/multi-ridge preconditioned CG with checkpoints (``cg``, ``CGInfo``);
  its iteration is in :mod:`.cg_core`, the multi-shift and sequential ridge paths in :mod:`.cg_ridges`
* :mod:`.nystrom`   - randomized Nyström and pivoted-Cholesky preconditioners
* :mod:`.cholesky`  - tiled out-of-core Cholesky on Zarr tiles (Dask graph)
* :mod:`.ridge`     - ridge selection on a seeded validation split of the training data
* :mod:`.dense`     - in-memory Cholesky with jitter retries
"""

from .api import SolveResult, solve
from .cg import CGInfo, cg
from .checkpoint import MemoryCheckpoint, ZarrCheckpoint
from .cholesky import TiledCholesky, cholesky_solve, tiled_cholesky
from .nystrom import (LowRankPreconditioner, build_preconditioner, nystrom_preconditioner,
    pivoted_cholesky_preconditioner)
from .operator import GramOperator, as_operator, choose_mode, make_operator
from .ridge import RidgeSelection, select_ridge, validation_split
from .validate import relative_ridges

__all__ = [
    "CGInfo", "GramOperator", "LowRankPreconditioner", "MemoryCheckpoint", "RidgeSelection", "SolveResult",
    "TiledCholesky", "ZarrCheckpoint", "as_operator", "build_preconditioner", "cg", "cholesky_solve",
    "choose_mode", "make_operator", "nystrom_preconditioner", "pivoted_cholesky_preconditioner",
    "relative_ridges", "select_ridge", "solve", "tiled_cholesky", "validation_split",
]
