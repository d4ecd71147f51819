"""The iteration every CG variant runs: independent preconditioned CG on many columns.

:func:`block_pcg` advances the columns of ``B`` as independent CG runs
(Hestenes & Stiefel 1952) that share one ``A @ P`` per iteration; a column
whose residual meets its tolerance is frozen and leaves the product. Each
column may carry its own shift and preconditioner, which is how
:func:`~ntkscale.solvers.cg.cg` solves several ridges in one sweep. The
helpers here normalise a preconditioner, detect a loss of positive curvature
(a typed :class:`~ntkscale.errors.NotPSDError`) and save resumable state.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from ..errors import InputError, NotPSDError, NumericalWarning

#: ``(X (n, c), iterations per column (c,), relative residual (c,), history rows, iterations done)``
PCGResult = Tuple[np.ndarray, np.ndarray, np.ndarray, List[np.ndarray], int]


def as_preconditioner(M: Any, shift: Optional[float]) -> Optional[Callable[[np.ndarray], np.ndarray]]:
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


def check_curvature(pq: np.ndarray, pp: np.ndarray, scale: float, eps: float, it: int, ridges: np.ndarray) -> None:
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


class CheckpointSaver:
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


def block_pcg(op: Any, b: np.ndarray, x: np.ndarray, shifts: np.ndarray, groups: Any,
              tol: np.ndarray, maxiter: int, callback: Any, ckpt: CheckpointSaver, resume: Optional[Dict[str, Any]],
              extra: Callable[[], Dict[str, Any]], it0: int, ridges_for_msg: np.ndarray) -> PCGResult:
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
    checks, last_worst = 0, float("inf")
    # a checkpoint saved after a passed check needs no product to be returned again
    verified = bool(resume is not None and resume.get("verified", False)) and not np.any(active)
    st = _State(x, r, p, rz, rnorm, iters, active, history, it, scale)
    while not verified:
        it = st.it = _iterate(st, amul, prec, tol, maxiter, rel, eps, it0, ridges_for_msg, callback, ckpt, extra)
        scale = st.scale
        if it >= maxiter:
            break
        # The recurrence's residual drifts from b - A x in finite precision (Greenbaum 1997,
        # ch. 7): check the true one with one more product and go on where it is above tol.
        cols = np.arange(c)
        r_true = b - amul(x, cols)
        rnorm[:] = np.linalg.norm(r_true, axis=0)
        bad = np.nonzero(rnorm > tol)[0]
        if bad.size == 0:
            verified = True
            break
        worst = float(np.max(rnorm[bad] / tol[bad]))
        if checks == TRUE_RESIDUAL_CHECKS or worst > 0.5 * last_worst:
            break      # stagnant: tol is below the attainable accuracy; the true residual is reported
        checks, last_worst = checks + 1, worst
        r[:, bad] = r_true[:, bad]
        z = prec(r[:, bad], bad)
        p[:, bad] = z
        rz[bad] = np.einsum("ij,ij->j", r[:, bad], z)
        active[bad] = True
    ckpt.maybe_save(it0 + it, lambda: {
        **extra(), "X": x, "R": r, "P": p, "rz": rz, "iters": iters, "it": it, "scale": scale,
        "rnorm": rnorm, "history": np.array(history), "verified": verified}, force=True)
    return x, iters, rnorm / rel, history, it


#: How many times CG resumes from the true residual after the recurrence met tol but b - A x
#: did not; then it stops and reports the true residual (each check costs a product).
TRUE_RESIDUAL_CHECKS = 3


class _State:
    """The iterate of :func:`block_pcg` (arrays updated in place; ``scale`` set once)."""

    def __init__(self, x, r, p, rz, rnorm, iters, active, history, it, scale):
        self.x, self.r, self.p, self.rz, self.rnorm, self.iters = x, r, p, rz, rnorm, iters
        self.active, self.history, self.it, self.scale = active, history, it, scale


def _iterate(st: _State, amul: Callable, prec: Callable, tol: np.ndarray, maxiter: int, rel: np.ndarray,
             eps: float, it0: int, ridges_for_msg: np.ndarray, callback: Any, ckpt: CheckpointSaver,
             extra: Callable[[], Dict[str, Any]]) -> int:
    """CG steps on the active columns until each meets ``tol`` (by the recurrence) or
    ``maxiter``; returns the iteration count."""
    x, r, p, rz, rnorm, iters, active, history = st.x, st.r, st.p, st.rz, st.rnorm, st.iters, st.active, st.history
    it, scale, c = st.it, st.scale, x.shape[1]
    while np.any(active) and it < maxiter:
        cols = np.nonzero(active)[0]
        pa = p[:, cols]
        q = amul(pa, cols)
        pq = np.einsum("ij,ij->j", pa, q)
        pp = np.einsum("ij,ij->j", pa, pa)
        if scale == 0.0:
            scale = float(np.max(pq / np.maximum(pp, np.finfo(float).tiny)))
        check_curvature(pq, pp, scale, eps, it0 + it, ridges_for_msg)
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
    st.scale = scale
    return it

