"""One entry point for kernel regression: ``solve(A, Y, ridges=..., method=...)``.

Both methods go through the same checks (ridges validated before any work,
right-hand sides finite) and return a :class:`SolveResult` with one solution
per ridge, so the pipeline (``ntkscale solve``/``run``) and the solver
contract tests treat CG and the tiled Cholesky alike.

With ridge 0 a singular Gram is not always caught by the factorisation (a
tiny jitter makes it numerically positive definite) or by CG (it may stall
without breaking down). So for ridge 0 the residual ``||K X - Y|| / ||Y||`` is
checked with one extra product, and a residual above ``singular_rtol``
raises :class:`~ntkscale.errors.NotPSDError` suggesting a ridge.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from ..choices import METHODS
from ..errors import InputError, NotPSDError, NumericalWarning
from .cg import CGInfo, cg
from .cholesky import TiledCholesky
from .choose import resolve_method
from .nystrom import build_preconditioner
from .shared import shared_factor_solve
from .operator import ArraySource, GramOperator, ZarrSource, as_operator
from .validate import check_rhs, check_ridges

@dataclass(frozen=True)
class SolveProgress:
    """One progress report of a long solve: CG's ``iteration`` and largest relative
    ``residual``, or the tiled Cholesky's ``tiles_done`` of ``tiles_total`` (for the
    factor of ``ridge``); ``seconds`` since that CG run or factorisation began."""

    method: str
    seconds: float
    iteration: int = 0
    residual: float = float("nan")
    tiles_done: int = 0
    tiles_total: int = 0
    ridge: float = 0.0


#: ``(SolveProgress) -> None``: where :func:`solve` sends its progress reports.
SolveProgressFn = Callable[[SolveProgress], None]


@dataclass
class SolveResult:
    """Solutions ``alpha``, one per absolute ridge: shape ``(s,) + Y.shape``, i.e.
    ``(s, n, k)`` for ``Y`` of shape ``(n, k)`` and ``(s, n)`` for a 1-D ``Y``."""

    alpha: np.ndarray
    ridges: np.ndarray
    method: str
    info: Optional[CGInfo] = None
    jitter: List[float] = field(default_factory=list)
    seconds: float = 0.0
    preconditioner: Optional[Dict[str, Any]] = None
    tiles_computed: Optional[int] = None
    method_reason: str = ""

    def summary(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"method": self.method, "ridges": [float(r) for r in self.ridges],
                               "seconds": round(self.seconds, 3)}
        if self.method_reason:
            out["method_reason"] = self.method_reason
        if self.info is not None:
            out["cg"] = self.info.summary()
        if self.jitter:
            out["jitter"] = [float(j) for j in self.jitter]
        if self.preconditioner:
            out["preconditioner"] = self.preconditioner
        if self.tiles_computed is not None:
            out["tiles_computed"] = self.tiles_computed
        return out


def _array_of(A: Any) -> Any:
    if isinstance(A, GramOperator):
        if isinstance(A.source, (ArraySource, ZarrSource)):
            return A.source.array
        raise InputError("method 'cholesky' needs the stored train Gram (a Zarr or in-memory array); this "
                         f"operator recomputes it on the fly ({A.mode} mode): use method 'cg' or store the Gram")
    if hasattr(A, "materialize"):
        return A.materialize()
    if hasattr(A, "shape") and hasattr(A, "__getitem__"):
        return A
    raise InputError(f"method 'cholesky' needs a Gram array; got {type(A).__name__}")


def solve(A: Any, Y: Any, *, ridges: Any = 0.0, method: str = "cg", rtol: float = 1e-6, atol: float = 0.0,
          maxiter: Optional[int] = None, preconditioner: Optional[str] = "nystrom", rank: int = 500,
          seed: Any = 0, ridge_path: str = "auto", checkpoint: Any = None, checkpoint_every: int = 10,
          group: Any = None, tile: Optional[int] = None, client: Any = None, num_workers: Optional[int] = None,
          singular_rtol: float = 1e-3, warn: bool = True, progress: Optional[SolveProgressFn] = None,
          progress_every: float = 5.0) -> SolveResult:
    """Solve ``(K + l I) alpha_l = Y`` for every absolute ridge ``l``; ``alpha`` is
    ``(s,) + Y.shape`` (one solution per ridge, each shaped like ``Y``).

    ``method="cg"``: :func:`~ntkscale.solvers.cg.cg` with a ``preconditioner``
    (``nystrom`` | ``pivoted_cholesky`` | ``none``) of rank ``rank`` built once
    and re-targeted to each ridge; ``checkpoint`` makes it resumable.
    ``method="cholesky"``: :class:`~ntkscale.solvers.cholesky.TiledCholesky` in
    ``group`` (a Zarr group; default in memory); with several ridges one factor,
    of the smallest ridge, and CG preconditioned with it for the others
    (:mod:`~ntkscale.solvers.shared`; ``ridge_path="per_ridge"``: a factor per ridge).
    ``method="auto"``: :func:`~ntkscale.solvers.choose.resolve_method` picks one of
    them by the measured rule; ``result.method`` is the one that ran and
    ``result.method_reason`` says why.
    ``progress`` receives a :class:`SolveProgress` every ``progress_every``
    seconds and at the end of each CG run or factorisation.
    """
    t0 = time.perf_counter()
    if method not in METHODS:
        raise InputError(f"solver method must be one of {', '.join(METHODS)}; got {method!r}")
    rid = check_ridges(ridges)                      # before any work
    op = as_operator(A)
    n = op.shape[0]
    if op.shape[0] != op.shape[1]:
        raise InputError(f"the train Gram must be square; got {op.shape}")
    y, vector = check_rhs(Y, n)
    base = float(getattr(op, "ridge", 0.0))
    total = rid + base
    choice = resolve_method(method, op, len(rid), group)
    method = choice.method
    result = SolveResult(alpha=np.empty(0), ridges=total, method=method, method_reason=choice.reason)
    if method == "cg":
        M = None
        if preconditioner not in (None, "none"):
            tb = time.perf_counter()
            M = build_preconditioner(preconditioner, op, rank, shift=float(total.min()), seed=seed)
            result.preconditioner = {"kind": preconditioner, "rank": M.rank,
                                     "seconds": round(time.perf_counter() - tb, 3)}
        with warnings.catch_warnings():
            if not warn:
                warnings.simplefilter("ignore", NumericalWarning)
            x, info = cg(op, y, rtol=rtol, atol=atol, maxiter=maxiter, M=M, ridges=rid, ridge_path=ridge_path,
                         checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                         progress=None if progress is None else _cg_reporter(progress),
                         progress_every=progress_every)
        result.alpha, result.info = x, info
        if int(info) and np.min(total) == 0:
            raise NotPSDError(
                f"ridge 0: CG did not converge (relative residual {float(np.nanmax(info.residual)):.3g} after "
                f"{info.iterations} iterations); the Gram is singular or too ill-conditioned to solve without a "
                "ridge: use a ridge, e.g. 1e-6 relative to the mean diagonal")
    else:
        arr = _array_of(op)
        if group is None:
            import zarr  # noqa: PLC0415 - deferred: 0.6 s, and `import ntkscale` loads the solvers

            group = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
        client = client if client is not None else getattr(op, "client", None)
        factors: List[TiledCholesky] = []

        def factor(r: float) -> TiledCholesky:
            f = TiledCholesky(arr, group, ridge=float(r), tile=tile, client=client, num_workers=num_workers,
                              name=f"cholesky-{float(r):.6g}", progress_every=progress_every,
                              progress=None if progress is None else _tile_reporter(progress, float(r)))
            with warnings.catch_warnings():
                if not warn:
                    warnings.simplefilter("ignore", NumericalWarning)
                f.factor()
            factors.append(f)
            return f

        if ridge_path == "per_ridge" or len(total) == 1:
            result.alpha = np.stack([factor(r).solve(y) for r in total])
            result.jitter = [f.jitter for f in factors]
        else:
            if ridge_path == "multishift":
                raise InputError("ridge_path 'multishift' cannot use the Cholesky factor as preconditioner; with "
                                 "method 'cholesky' use 'auto' (one shared factor) or 'per_ridge'")
            with warnings.catch_warnings():
                if not warn:
                    warnings.simplefilter("ignore", NumericalWarning)
                result.alpha, f0, result.info = shared_factor_solve(
                    op, y, total, factor, rtol=rtol, maxiter=maxiter,
                    ridge_path=ridge_path,
                    progress=None if progress is None else _cg_reporter(progress), progress_every=progress_every)
            result.jitter = [f0.jitter if r == total.min() else 0.0 for r in total]
        result.tiles_computed = sum(f.tiles_computed for f in factors)
    if np.min(total) == 0:
        _check_singular(op, y, result, singular_rtol)
    if vector:  # shaped like Y, as cg() and scipy.linalg.solve return it
        result.alpha = result.alpha[..., 0]
    result.seconds = time.perf_counter() - t0
    return result


def _cg_reporter(progress: SolveProgressFn) -> Callable[[int, float, float], None]:
    return lambda it, resid, sec: progress(SolveProgress("cg", sec, iteration=it, residual=resid))


def _tile_reporter(progress: SolveProgressFn, ridge: float) -> Callable[[int, int, float], None]:
    return lambda done, total, sec: progress(SolveProgress("cholesky", sec, tiles_done=done, tiles_total=total,
                                                           ridge=ridge))


def _check_singular(op: Any, y: np.ndarray, result: SolveResult, singular_rtol: float) -> None:
    for j in np.nonzero(result.ridges == 0)[0]:
        x = result.alpha[j]
        resid = np.linalg.norm(np.asarray(op.with_ridge(0.0).matmat(x) if hasattr(op, "with_ridge")
                                          else op.matmat(x)) - y) / max(np.linalg.norm(y), 1e-300)
        if not np.isfinite(resid) or resid > singular_rtol:
            jit = f" even with jitter {result.jitter[j]:.3g} added" if result.jitter and result.jitter[j] else ""
            raise NotPSDError(
                f"ridge 0: the Gram is singular{jit}; the solution has relative residual {resid:.3g} "
                f"(> {singular_rtol:g}). Use a ridge, e.g. 1e-6 relative to the mean diagonal "
                "(solver.ridge: 1e-6)")
