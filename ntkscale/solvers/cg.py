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
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError, NotPSDError, NumericalWarning
from .operator import as_operator
from .validate import check_ridges, check_rhs

#: Ridge-path variant used by ``ridge_path="auto"`` when a preconditioner is given.
DEFAULT_RIDGE_PATH = "batched"
RIDGE_PATHS = ("auto", "multishift", "sequential", "batched")


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


# --------------------------------------------------------------------------- helpers
def _preconditioner(M: Any, shift: Optional[float]) -> Optional[Callable[[np.ndarray], np.ndarray]]:
    """Normalise ``M`` to ``R -> M^{-1} R`` (an object with ``solve``, SciPy's
    ``matmat`` convention where ``M`` approximates ``A^{-1}``, or a callable)."""
    if M is None:
        return None
    if shift is not None and hasattr(M, "with_shift"):
        M = M.with_shift(shift)
    if hasattr(M, "solve"):
        return M.solve
    if hasattr(M, "matmat"):
        return lambda r: np.asarray(M.matmat(r))
    if callable(M):
        return M
    raise InputError(f"M must have solve(R), matmat(R) or be callable; got {type(M).__name__}")


def _fingerprint(op: Any, b: np.ndarray, shifts: np.ndarray, variant: str, rtol: float, atol: float) -> str:
    h = hashlib.sha1()
    h.update(repr((op.shape, str(op.dtype), float(getattr(op, "ridge", 0.0)), variant, rtol, atol)).encode())
    h.update(np.ascontiguousarray(shifts, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(b).tobytes())
    return h.hexdigest()


def _breakdown(pq: np.ndarray, pp: np.ndarray, scale: float, eps: float, it: int, ridges: np.ndarray) -> None:
    """``p^T A p <= eps * scale * |p|^2``: no positive curvature left (rounding level)."""
    bad = pq <= eps * scale * pp * 10
    if np.any(bad):
        worst = float(np.min(pq / np.maximum(pp, np.finfo(float).tiny)))
        hint = ("with ridge 0 the Gram is singular (duplicate or linearly dependent inputs); use a ridge, "
                "e.g. ridge=1e-6 relative to the mean diagonal" if np.min(ridges) == 0 else
                "use a larger ridge, e.g. 1e-4 relative to the mean diagonal, or float64")
        raise NotPSDError(
            f"CG broke down at iteration {it}: p^T (K + ridge I) p / |p|^2 = {worst:.3g} <= "
            f"{10 * eps * scale:.3g} (rounding level of the matrix scale {scale:.3g}) on "
            f"{int(bad.sum())} column(s); the matrix is not numerically positive definite; {hint}")


class _Ckpt:
    """Saves the solver state every ``every`` iterations (None: never)."""

    def __init__(self, checkpoint: Any, every: int, fingerprint: str):
        self.checkpoint, self.every, self.fingerprint = checkpoint, max(1, int(every)), fingerprint

    def load(self) -> Optional[Dict[str, Any]]:
        if self.checkpoint is None:
            return None
        state = self.checkpoint.load()
        if not state or state.get("fingerprint") != self.fingerprint:
            if state:
                warnings.warn("ignoring a CG checkpoint of a different problem (matrix, right-hand sides, "
                              "ridges or tolerances changed); starting from scratch", NumericalWarning, stacklevel=4)
            return None
        return state

    def maybe_save(self, it: int, state_fn: Callable[[], Dict[str, Any]], force: bool = False) -> None:
        if self.checkpoint is not None and (force or it % self.every == 0):
            state = state_fn()
            state["fingerprint"] = self.fingerprint
            self.checkpoint.save(state)


# --------------------------------------------------------------------------- core PCG
def _pcg(op: Any, b: np.ndarray, x: np.ndarray, shifts: np.ndarray, groups: Any,
         tol: np.ndarray, maxiter: int, callback: Any, ckpt: _Ckpt, resume: Optional[Dict[str, Any]],
         extra: Callable[[], Dict[str, Any]], it0: int, ridges_for_msg: np.ndarray):
    """Independent preconditioned CG on the columns of ``b``; column ``c``
    solves ``(op + shifts[c] I) x = b``, preconditioned by its group's apply
    (``groups``: ``[(columns, apply)]``, or one callable ``(r, cols) -> z`` for all).
    Returns ``(x, iters, residual, history list, iterations done)``."""
    n, c = b.shape
    eps = float(np.finfo(b.dtype).eps)

    def prec(r: np.ndarray, cols: np.ndarray) -> np.ndarray:
        if callable(groups):  # one fused application for every column (and shift)
            return groups(r, cols)
        z = np.empty_like(r)
        for idx, apply in groups:
            sel = np.isin(cols, idx)
            if not np.any(sel):
                continue
            z[:, sel] = r[:, sel] if apply is None else apply(r[:, sel])
        return z

    def amul(p: np.ndarray, cols: np.ndarray) -> np.ndarray:
        q = np.asarray(op.matmat(p), dtype=b.dtype)
        return q + p * shifts[cols] if np.any(shifts[cols]) else q

    bnorm = np.linalg.norm(b, axis=0)
    rel = np.where(bnorm > 0, bnorm, 1.0)
    if resume is not None:
        x, r, p, rz = resume["X"], resume["R"], resume["P"], resume["rz"]
        iters, it, scale = resume["iters"], int(resume["it"]), float(resume["scale"])
        history = list(resume["history"])
        rnorm = np.array(resume["rnorm"], dtype=np.float64)
    else:
        cols = np.arange(c)
        r = b - amul(x, cols) if np.any(x) else b.copy()
        z = prec(r, cols)
        p = z.copy()
        rz = np.einsum("ij,ij->j", r, z)
        iters = np.zeros(c, dtype=np.int64)
        it, scale = 0, 0.0
        history = [np.linalg.norm(r, axis=0) / rel]
        rnorm = history[-1] * rel
    active = rnorm > tol
    while np.any(active) and it < maxiter:
        cols = np.nonzero(active)[0]
        pa = p[:, cols]
        q = amul(pa, cols)
        pq = np.einsum("ij,ij->j", pa, q)
        pp = np.einsum("ij,ij->j", pa, pa)
        if scale == 0.0:
            scale = float(np.max(pq / np.maximum(pp, np.finfo(float).tiny)))
        _breakdown(pq, pp, scale, eps, it0 + it, ridges_for_msg)
        alpha = rz[cols] / pq
        x[:, cols] += pa * alpha
        r[:, cols] -= q * alpha
        rn = np.linalg.norm(r[:, cols], axis=0)
        rnorm[cols] = rn
        iters[cols] += 1
        it += 1
        done = rn <= tol[cols]
        live = cols[~done]
        if live.size:
            z = prec(r[:, live], live)
            rz_new = np.einsum("ij,ij->j", r[:, live], z)
            beta = rz_new / rz[live]
            p[:, live] = z + p[:, live] * beta
            rz[live] = rz_new
        active[cols[done]] = False
        h = np.full(c, np.nan)
        h[cols] = rn / rel[cols]
        history.append(h)
        if callback is not None:
            callback(x)
        ckpt.maybe_save(it0 + it, lambda: {
            **extra(), "X": x, "R": r, "P": p, "rz": rz, "iters": iters, "it": it, "scale": scale,
            "rnorm": rnorm, "history": np.array(history)})
    ckpt.maybe_save(it0 + it, lambda: {
        **extra(), "X": x, "R": r, "P": p, "rz": rz, "iters": iters, "it": it, "scale": scale,
        "rnorm": rnorm, "history": np.array(history)}, force=True)
    return x, iters, rnorm / rel, history, it


# --------------------------------------------------------------------------- multi-shift CG
def _multishift(op: Any, b: np.ndarray, sigmas: np.ndarray, tol: np.ndarray, maxiter: int, callback: Any,
                ckpt: _Ckpt, resume: Optional[Dict[str, Any]], ridges: np.ndarray):
    """Shifted CG (Jegerlehner 1996; van den Eshof & Sleijpen 2004, Alg. 1):
    solves ``(op + sigmas[j] I) X_j = b`` for ``sigmas >= 0`` with the
    Krylov space of ``op``; the shifted residuals are ``zeta_j r`` (collinear),
    so each shifted system needs only vector updates. ``sigmas[0]`` must be 0.
    ``tol`` has shape ``(s, k)``; returns ``(X (s,n,k), iters (s,k), residual (s,k), history, iterations)``."""
    n, k = b.shape
    s = len(sigmas)
    eps = float(np.finfo(b.dtype).eps)
    bnorm = np.linalg.norm(b, axis=0)
    rel = np.where(bnorm > 0, bnorm, 1.0)
    sig = sigmas[:, None]  # (s, 1)
    if resume is not None:
        xs, ps, r, p = resume["XS"], resume["PS"], resume["R"], resume["P"]
        zeta, zeta_prev = resume["zeta"], resume["zeta_prev"]
        alpha_prev, beta_prev, rr = resume["alpha_prev"], resume["beta_prev"], resume["rr"]
        iters, it, scale = resume["iters"], int(resume["it"]), float(resume["scale"])
        history = list(resume["history"])
        res = np.array(resume["res"], dtype=np.float64)
    else:
        xs = np.zeros((s, n, k), dtype=b.dtype)
        ps = np.repeat(b[None], s, axis=0)
        r, p = b.copy(), b.copy()
        zeta = np.ones((s, k))
        zeta_prev = np.ones((s, k))
        alpha_prev = np.ones(k)
        beta_prev = np.zeros(k)
        rr = np.einsum("ij,ij->j", r, r)
        iters = np.zeros((s, k), dtype=np.int64)
        it, scale = 0, 0.0
        history = [np.repeat((np.sqrt(rr) / rel)[None], s, axis=0)]
        res = history[-1] * rel[None]
    active = res > tol  # (s, k)
    while np.any(active) and it < maxiter:
        cols = np.nonzero(np.any(active, axis=0))[0]
        pa = p[:, cols]
        q = np.asarray(op.matmat(pa), dtype=b.dtype)
        pq = np.einsum("ij,ij->j", pa, q)
        pp = np.einsum("ij,ij->j", pa, pa)
        if scale == 0.0:
            scale = float(np.max(pq / np.maximum(pp, np.finfo(float).tiny)))
        _breakdown(pq, pp, scale, eps, it, ridges)
        alpha = rr[cols] / pq
        zc, zp = zeta[:, cols], zeta_prev[:, cols]
        ap, bp = alpha_prev[cols], beta_prev[cols]
        upd = active[:, cols]
        with np.errstate(divide="ignore", invalid="ignore"):
            denom = alpha * bp * (zp - zc) + zp * ap * (1.0 + sig * alpha)
            zn = np.where(upd, zc * zp * ap / denom, zc)
            ratio = np.where(upd, zn / zc, 1.0)
        alpha_s = np.where(upd, alpha * ratio, 0.0)  # (s, |cols|); frozen shifts do not move
        # all shifts at once; plain slices (no fancy-index copies) while every column is live
        sl = slice(None) if len(cols) == k else cols
        xs[:, :, sl] += ps[:, :, sl] * alpha_s[:, None, :]
        r[:, cols] -= q * alpha
        rr_new = np.einsum("ij,ij->j", r[:, cols], r[:, cols])
        beta = rr_new / rr[cols]
        beta_s = beta * ratio ** 2
        ps[:, :, sl] = r[None, :, sl] * zn[:, None, :] + ps[:, :, sl] * beta_s[:, None, :]
        p[:, cols] = r[:, cols] + p[:, cols] * beta
        zeta_prev[:, cols], zeta[:, cols] = zc, zn
        alpha_prev[cols], beta_prev[cols], rr[cols] = alpha, beta, rr_new
        it += 1
        iters[:, cols] += upd
        h = np.full((s, k), np.nan)
        h[:, cols] = np.where(upd, np.abs(zn) * np.sqrt(rr_new) / rel[cols], np.nan)
        res[:, cols] = np.where(upd, h[:, cols] * rel[cols], res[:, cols])
        active &= res > tol
        history.append(h)
        if callback is not None:
            callback(xs)
        ckpt.maybe_save(it, lambda: {
            "XS": xs, "PS": ps, "R": r, "P": p, "zeta": zeta, "zeta_prev": zeta_prev, "alpha_prev": alpha_prev,
            "beta_prev": beta_prev, "rr": rr, "iters": iters, "it": it, "scale": scale, "res": res,
            "history": np.array(history)})
    ckpt.maybe_save(it, lambda: {
        "XS": xs, "PS": ps, "R": r, "P": p, "zeta": zeta, "zeta_prev": zeta_prev, "alpha_prev": alpha_prev,
        "beta_prev": beta_prev, "rr": rr, "iters": iters, "it": it, "scale": scale, "res": res,
        "history": np.array(history)}, force=True)
    return xs, iters, res / rel[None], history, it


# --------------------------------------------------------------------------- public API
def cg(A: Any, B: Any, x0: Any = None, *, rtol: float = 1e-6, atol: float = 0.0, maxiter: Optional[int] = None,
       M: Any = None, callback: Optional[Callable[[np.ndarray], None]] = None, checkpoint: Any = None,
       checkpoint_every: int = 10, ridges: Optional[Sequence[float]] = None, ridge_path: str = "auto",
       warn: bool = True) -> Tuple[np.ndarray, CGInfo]:
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
    ckpt = _Ckpt(checkpoint, checkpoint_every, _fingerprint(op, b, rid, variant, rtol, atol))
    resume = ckpt.load()
    resumed_from = None if resume is None else int(resume.get("it_total", 0)) + int(resume.get("it", 0))
    bnorm = np.linalg.norm(b, axis=0)
    tol = np.maximum(rtol * bnorm, atol)  # (k,)
    all_ridges = rid + base_ridge

    if variant == "multishift":
        order = np.argsort(rid, kind="stable")
        sig = rid[order] - rid[order[0]]
        shifted = op.with_ridge(base_ridge + rid[order[0]]) if hasattr(op, "with_ridge") else _Shift(op, rid[order[0]])
        xs, iters, res, hist, total = _multishift(shifted, b, sig, np.repeat(tol[None], s, axis=0), maxiter,
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
            groups = [(np.arange(j * k, (j + 1) * k), _preconditioner(M, base_ridge + rid[j])) for j in range(s)]
        x = np.concatenate(list(xinit), axis=1) if s > 1 else xinit[0].copy()
        xcat, it_cols, rescat, hist, total = _pcg(
            op, np.tile(b, (1, s)), x, cols_shift, groups, np.tile(tol, s), maxiter, callback, ckpt, resume,
            dict, 0, all_ridges)
        xs = np.stack([xcat[:, j * k:(j + 1) * k] for j in range(s)])
        iters, res = it_cols.reshape(s, k), rescat.reshape(s, k)
        history = np.array(hist).reshape(len(hist), s, k)
    else:  # sequential, largest ridge first, warm starts
        xs, iters, res, history, total = _sequential(op, b, xinit, rid, base_ridge, M, tol, maxiter, callback,
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


class _Shift:
    """``A + sigma I`` for operators without ``with_ridge``."""

    def __init__(self, op: Any, sigma: float):
        self.op, self.sigma, self.shape, self.dtype = op, float(sigma), op.shape, op.dtype

    def matmat(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.op.matmat(x)) + self.sigma * x


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


def _sequential(op, b, xinit, rid, base_ridge, M, tol, maxiter, callback, ckpt, resume, warm_given, all_ridges):
    s, k = len(rid), b.shape[1]
    order = np.argsort(-rid, kind="stable")  # largest ridge first: easiest, then warm starts
    xs = xinit.copy()
    iters = np.zeros((s, k), dtype=np.int64)
    res = np.full((s, k), np.nan)
    history: List[np.ndarray] = [np.full((s, k), np.nan)]
    start, total, inner = 0, 0, None
    if resume is not None:
        start, total = int(resume["stage"]), int(resume["it_total"])
        xs, iters, res = resume["XS"], resume["iters_all"], resume["res_all"]
        history = list(resume["history_all"])
        inner = resume
        # A stage that ran out of iterations is not done: resume from the first
        # unconverged ridge (CG restarts from its last iterate).
        rel = np.where(np.linalg.norm(b, axis=0) > 0, np.linalg.norm(b, axis=0), 1.0)
        for pos in range(min(start, s)):
            if not np.all(res[order[pos]] * rel <= tol):
                start, inner = pos, None
                break
    for pos in range(start, s):
        j = order[pos]
        x = xs[j].copy()
        if pos > 0 and not warm_given and iters[j].sum() == 0:
            x = xs[order[pos - 1]].copy()
        groups = [(np.arange(k), _preconditioner(M, base_ridge + rid[j]))]
        stage_hist_start = len(history)

        def extra(pos=pos, total=total):
            return {"stage": pos, "it_total": total, "XS": xs, "iters_all": iters, "res_all": res,
                    "history_all": np.array(history[:stage_hist_start])}
        inner_resume = inner if (inner is not None and pos == start and "X" in inner) else None
        x, it_cols, rj, hist, done = _pcg(op, b, x, np.full(k, rid[j]), groups, tol, maxiter,
                                          callback, ckpt, inner_resume, extra, total, all_ridges)
        xs[j], iters[j], res[j] = x, it_cols, rj
        history[-1][j] = hist[0]  # this ridge's curve starts where the previous stage ended
        for h in hist[1:]:
            row = np.full((s, k), np.nan)
            row[j] = h
            history.append(row)
        total += done
        ckpt.maybe_save(total, lambda: {"stage": pos + 1, "it_total": total, "XS": xs, "iters_all": iters,
                                        "res_all": res, "history_all": np.array(history)}, force=True)
    return xs, iters, res, np.array(history), total
