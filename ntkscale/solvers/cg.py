"""Block preconditioned conjugate gradients: many right-hand sides, many ridges.

``cg(A, B)`` has SciPy's shape (``scipy.sparse.linalg.cg``): ``A`` needs only
``matmat`` (or ``matvec``), convergence is ``||r|| <= max(rtol ||b||, atol)``
per column, and it returns ``(X, info)`` with ``info == 0`` on success and
``info > 0`` (the iterations done) when some column did not converge, which
also warns (:class:`~ntkscale.errors.NumericalWarning`) with the residual
reached.

Columns are independent CG runs (Hestenes & Stiefel 1952) that share one
``A @ P`` per iteration; a converged column is frozen and leaves the product.
This is not O'Leary's (1980) block CG, which would couple the columns.

Several ridges (``ridges=[l_1, ..., l_s]``: solve ``(A + l_j I) X_j = B``)
are solved by one of three variants (``ridge_path``):

``"multishift"``
    Shifted CG over the Krylov space of the smallest ridge (Jegerlehner 1996,
    hep-lat/9612014; Frommer 2003): one product per iteration for all ridges,
    but no preconditioner (a preconditioner would break the shift invariance
    of the Krylov space).
``"sequential"``
    Preconditioned CG one ridge at a time, from the largest ridge down, each
    warm-started from the previous solution; the preconditioner is rebuilt
    for each shift from one sketch (``M.with_shift``), which costs no products.
``"batched"``
    The ``s`` preconditioned systems iterate together as ``s*k`` columns of one
    product (one sweep over the Gram per iteration, ``s`` times the columns).

``"auto"`` picks ``batched`` with a preconditioner and ``multishift``
without one. Measured on the MNIST NTK (benchmarks/bench_cg.py: n = 4000,
10 classes, 8 ridges 1e-6..1e-1 x mean diagonal, Nyström rank 500, rtol 1e-6,
best of 3 on a shared 2-core machine, load 5-8):

=================  ========  =================  ==================
8 ridges           products  stored Gram (Zarr)  in-memory Gram
=================  ========  =================  ==================
one ridge, plain      217         30.4 s             7.9 s
one ridge, Nyström     39          7.2 s             2.8 s
multishift            217   36.2 s (1.19x)     12.4 s (1.58x)
sequential            177   32.3 s (4.5x)      17.4 s (6.3x)
batched                39    9.2 s (1.28x)     10.2 s (3.7x)
=================  ========  =================  ==================

(ratios against one ridge with the same method). Batched is the fastest in
absolute time in both settings: it needs the sweeps of one preconditioned
solve. When a sweep is bound by reading (stored) or recomputing (streamed) the
Gram it costs about the same for 80 columns as for 10 (1.29x measured), so 8
ridges cost ~1.3x one; in memory a sweep is a GEMM whose cost grows with the
columns (2.3x for 80 vs 10), so batched costs ~3-4x one preconditioned ridge
there, and multi-shift CG is the variant that keeps 8 ridges within ~1-1.6x of
one (plain) ridge. Sequential warm starts save little: the smallest ridge still
needs almost a full solve.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from ..choices import RIDGE_PATHS
from ..errors import InputError, NumericalWarning
from .cg_core import CheckpointSaver, as_preconditioner, block_pcg
from .cg_ridges import Shifted, multishift_cg, sequential_cg
from .operator import as_operator
from .validate import check_ridges, check_rhs

#: Ridge-path variant used by ``ridge_path="auto"`` when a preconditioner is given.
DEFAULT_RIDGE_PATH = "batched"


class CGInfo(int):
    """``int(info)`` is SciPy's code: 0 converged, > 0 iterations without
    convergence. Attributes give the details:

    ``iterations``  products (sweeps over the Gram) done in all
    ``column_iterations``  iterations per column, shape ``(s, k)``
    ``converged``  bool per column ``(s, k)``; ``residual`` relative residual reached
    ``history``  relative residual per iteration: ``(T+1, k)`` for one ridge, ``(T+1, s, k)``
                 with ``ridges``; NaN where a column was not iterating
    ``ridges``, ``variant``, ``seconds``, ``resumed_from`` (iteration, or None)
    """

    def __new__(cls, value: int, **attrs: Any) -> "CGInfo":
        obj = int.__new__(cls, value)
        obj.__dict__.update(attrs)
        return obj

    def summary(self) -> Dict[str, Any]:
        """JSON-friendly summary (for the store and ``--json``)."""
        return {
            "info": int(self), "variant": self.variant, "iterations": int(self.iterations),
            "converged": bool(np.all(self.converged)), "max_residual": float(np.nanmax(self.residual)),
            "ridges": [float(r) for r in self.ridges], "seconds": float(self.seconds),
            "resumed_from": self.resumed_from,
        }


def _fingerprint(op: Any, b: np.ndarray, shifts: np.ndarray, variant: str, rtol: float, atol: float) -> str:
    h = hashlib.sha1()
    h.update(repr((op.shape, str(op.dtype), float(getattr(op, "ridge", 0.0)), variant, rtol, atol)).encode())
    h.update(np.ascontiguousarray(shifts, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(b).tobytes())
    return h.hexdigest()


#: ``(iteration, largest relative residual, seconds) -> None``: a CG progress report.
ProgressFn = Callable[[int, float, float], None]


class _ReportingSaver(CheckpointSaver):
    """The checkpoint saver, which the CG loops call after every iteration, also
    reports progress on a timer: the largest relative residual of the columns still
    iterating (the last row of the residual history)."""

    def __init__(self, inner: CheckpointSaver, fn: ProgressFn, every: float, t0: float):
        super().__init__(inner.checkpoint, inner.every, inner.fingerprint)
        self.fn, self.interval, self.t0 = fn, every, t0
        self.last = time.perf_counter()
        self.reported = -1

    def maybe_save(self, it: int, state_fn: Callable[[], Dict[str, Any]], force: bool = False) -> None:
        super().maybe_save(it, state_fn, force)
        now = time.perf_counter()
        if it != self.reported and (force or now - self.last >= self.interval):
            self.last, self.reported = now, it
            row = np.asarray(state_fn()["history"][-1], dtype=np.float64)
            res = float(np.nanmax(row)) if np.any(np.isfinite(row)) else 0.0
            self.fn(int(it), res, now - self.t0)


def cg(A: Any, B: Any, x0: Any = None, *, rtol: float = 1e-6, atol: float = 0.0, maxiter: Optional[int] = None,
       M: Any = None, callback: Optional[Callable[[np.ndarray], None]] = None, checkpoint: Any = None,
       checkpoint_every: int = 10, ridges: Optional[Sequence[float]] = None, ridge_path: str = "auto",
       warn: bool = True, progress: Optional[ProgressFn] = None,
       progress_every: float = 5.0) -> Tuple[np.ndarray, CGInfo]:
    """Solve ``A X = B`` (or ``(A + l_j I) X_j = B`` for each ``l_j`` in ``ridges``) by CG.

    Parameters
    ----------
    A : GramOperator, LinearOperator, array or Zarr array; symmetric positive definite.
    B : ``(n,)`` or ``(n, k)`` right-hand sides; each column converges on its own.
    x0 : initial guess, shaped like ``B`` (or ``(s, n, k)`` with ridges; not with multishift).
    rtol, atol : stop a column when ``||r|| <= max(rtol ||b||, atol)`` (SciPy's rule).
    maxiter : iterations (products) at most; default ``10 n`` as in SciPy.
    M : preconditioner: an object with ``solve(R)`` (e.g. :class:`~ntkscale.solvers.nystrom.LowRankPreconditioner`;
        with ``with_shift(mu)`` it is re-targeted to each ridge), SciPy's ``matmat``
        convention (``M`` approximates ``A^{-1}``), or a callable ``R -> M^{-1} R``.
    callback : called with the current iterate after each iteration.
    checkpoint : an object with ``save(state)``/``load()`` (e.g. ``ZarrCheckpoint``); the
        state is saved every ``checkpoint_every`` iterations and a rerun of the same problem
        resumes from it.
    ridges : absolute shifts added to ``A``; the result then has a leading ridge axis.
    ridge_path : ``auto|multishift|sequential|batched`` (module docstring).
    progress : called as ``progress(iteration, relative residual, seconds)`` at most
        every ``progress_every`` seconds and once at the end; the residual is the largest over the
        columns (and ridges) still iterating.

    Returns
    -------
    X : shaped like ``B``, or ``(s,) + B.shape`` with ridges.
    info : :class:`CGInfo` (``0`` when every column converged).
    """
    t_start = time.perf_counter()
    op = as_operator(A)
    n = op.shape[0]
    if op.shape[0] != op.shape[1]:
        raise InputError(f"CG needs a square matrix; A is {op.shape[0]}x{op.shape[1]}")
    b, vector = check_rhs(B, n)
    multi = ridges is not None
    rid = check_ridges([0.0] if ridges is None else ridges, base=float(getattr(op, "ridge", 0.0)))
    s, k = len(rid), b.shape[1]
    dtype = np.result_type(op.dtype, b.dtype, np.float32)
    b = np.ascontiguousarray(b, dtype=dtype)
    if ridge_path not in RIDGE_PATHS:
        raise InputError(f"ridge_path must be one of {', '.join(RIDGE_PATHS)}; got {ridge_path!r}")
    if ridge_path == "per_ridge":
        raise InputError("ridge_path 'per_ridge' (one Cholesky factor per ridge) is for method 'cholesky'; "
                         "CG takes auto, multishift, sequential or batched")
    variant = ridge_path
    if s == 1:
        variant = "single"
    elif variant == "auto":
        variant = "multishift" if M is None else DEFAULT_RIDGE_PATH
    if variant == "multishift" and M is not None:
        raise InputError("multishift CG shares one Krylov space across ridges and cannot use a "
                         "preconditioner; pass M=None or ridge_path='batched'/'sequential'")
    maxiter = 10 * n if maxiter is None else int(maxiter)
    if maxiter < 0:
        raise InputError(f"maxiter must be >= 0; got {maxiter}")
    xinit = _initial(x0, n, k, s, dtype, vector, multi, variant)
    base_ridge = float(getattr(op, "ridge", 0.0))
    ckpt = CheckpointSaver(checkpoint, checkpoint_every, _fingerprint(op, b, rid, variant, rtol, atol))
    resume = ckpt.load()
    if progress is not None:
        ckpt = _ReportingSaver(ckpt, progress, progress_every, t_start)
    resumed_from = None if resume is None else int(resume.get("it_total", 0)) + int(resume.get("it", 0))
    bnorm = np.linalg.norm(b, axis=0)
    tol = np.maximum(rtol * bnorm, atol)  # (k,)
    all_ridges = rid + base_ridge

    if variant == "multishift":
        order = np.argsort(rid, kind="stable")
        sig = rid[order] - rid[order[0]]
        shifted = op.with_ridge(base_ridge + rid[order[0]]) if hasattr(op, "with_ridge") else Shifted(op, rid[order[0]])
        xs, iters, res, hist, total = multishift_cg(shifted, b, sig, np.repeat(tol[None], s, axis=0), maxiter,
                                                    callback, ckpt, resume, all_ridges)
        inv = np.argsort(order)
        xs, iters, res = xs[inv], iters[inv], res[inv]
        history = np.array(hist)[:, inv, :]
    elif variant in ("single", "batched"):
        cols_shift = np.repeat(rid, k)
        if hasattr(M, "solve_shifted"):
            col_mu = base_ridge + cols_shift
            groups = lambda r, cols: M.solve_shifted(r, col_mu[cols])  # noqa: E731
        else:
            groups = [(np.arange(j * k, (j + 1) * k), as_preconditioner(M, base_ridge + rid[j])) for j in range(s)]
        x = np.concatenate(list(xinit), axis=1) if s > 1 else xinit[0].copy()
        xcat, it_cols, rescat, hist, total = block_pcg(
            op, np.tile(b, (1, s)), x, cols_shift, groups, np.tile(tol, s), maxiter, callback, ckpt, resume,
            dict, 0, all_ridges)
        xs = np.stack([xcat[:, j * k:(j + 1) * k] for j in range(s)])
        iters, res = it_cols.reshape(s, k), rescat.reshape(s, k)
        history = np.array(hist).reshape(len(hist), s, k)
    else:  # sequential, largest ridge first, warm starts
        xs, iters, res, history, total = sequential_cg(op, b, xinit, rid, base_ridge, M, tol, maxiter, callback,
                                                       ckpt, resume, x0 is not None, all_ridges)
    converged = res * np.where(bnorm > 0, bnorm, 1.0)[None] <= tol[None]
    code = 0 if np.all(converged) else int(max(total, 1))
    info = CGInfo(code, iterations=total, column_iterations=iters, converged=converged, residual=res,
                  history=history if multi else history[:, 0, :], ridges=all_ridges, variant=variant,
                  seconds=time.perf_counter() - t_start, resumed_from=resumed_from)
    if code and warn:
        bad = ~converged
        where = f" at ridge(s) {', '.join(f'{r:.3g}' for r in all_ridges[np.any(bad, axis=1)])}" if multi else ""
        hint = "a larger ridge" if np.min(all_ridges) > 0 else "a ridge (the Gram may be singular; try 1e-6 relative)"
        warnings.warn(
            f"CG did not converge in {total} iterations: relative residual {float(np.max(res[bad])):.3g} > "
            f"rtol {rtol:g} on {int(bad.sum())} of {bad.size} column(s){where}; raise maxiter, use a "
            f"preconditioner (e.g. Nystrom rank 500) or {hint}", NumericalWarning, stacklevel=2)
    out = xs if multi else xs[0]
    if vector:
        out = out[..., 0]
    return out, info


def _initial(x0: Any, n: int, k: int, s: int, dtype: Any, vector: bool, multi: bool, variant: str) -> np.ndarray:
    if x0 is None:
        return np.zeros((s, n, k), dtype=dtype)
    if variant == "multishift":
        raise InputError("multishift CG starts from x0 = 0 (the shifted residuals must be collinear); "
                         "drop x0 or use ridge_path='sequential'/'batched'")
    x = np.asarray(x0, dtype=dtype)
    if vector:
        x = x[..., None]
    if x.ndim == 2:
        x = np.repeat(x[None], s, axis=0)
    if x.shape != (s, n, k):
        raise InputError(f"x0 has shape {np.shape(x0)}; expected {(n, k) if k > 1 or not vector else (n,)}"
                         f"{f' or {(s, n, k)}' if multi else ''}")
    if not np.all(np.isfinite(x)):
        raise InputError("x0 has non-finite values; pass a finite initial guess or None")
    return x.copy()

