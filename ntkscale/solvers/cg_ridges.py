"""CG variants for several ridges that do more than stack columns: multi-shift and sequential.

:func:`multishift_cg` solves every ridge over the Krylov space of the smallest
one (one product per iteration for all ridges, no preconditioner);
:func:`sequential_cg` runs preconditioned CG one ridge at a time, largest
first, each warm-started from the previous solution. :func:`~ntkscale.solvers.cg.cg`
picks between them and the batched variant (module docstring there).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .cg_core import CheckpointSaver, as_preconditioner, block_pcg, check_curvature

#: ``(X (s, n, k), iterations per column (s, k), relative residual (s, k), history, iterations done)``
RidgesResult = Tuple[np.ndarray, np.ndarray, np.ndarray, Any, int]


def multishift_cg(op: Any, b: np.ndarray, sigmas: np.ndarray, tol: np.ndarray, maxiter: int, callback: Any,
                  ckpt: CheckpointSaver, resume: Optional[Dict[str, Any]], ridges: np.ndarray) -> RidgesResult:
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
        check_curvature(pq, pp, scale, eps, it, ridges)
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


def sequential_cg(op: Any, b: np.ndarray, xinit: np.ndarray, rid: np.ndarray, base_ridge: float, M: Any,
                  tol: np.ndarray, maxiter: int, callback: Any, ckpt: CheckpointSaver,
                  resume: Optional[Dict[str, Any]], warm_given: bool, all_ridges: np.ndarray) -> RidgesResult:
    """Preconditioned CG one ridge at a time, largest ridge first, each warm-started
    from the previous ridge's solution unless ``warm_given`` (an ``x0`` was passed);
    the preconditioner is re-targeted to each ridge (``M.with_shift``). ``xinit`` is
    ``(s, n, k)``, ``tol`` ``(k,)``; returns ``(X (s,n,k), iters (s,k), residual (s,k),
    history (T+1,s,k), iterations)``. A stage cut short resumes from its last iterate."""
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
        groups = [(np.arange(k), as_preconditioner(M, base_ridge + rid[j]))]
        stage_hist_start = len(history)

        def extra(pos=pos, total=total):
            return {"stage": pos, "it_total": total, "XS": xs, "iters_all": iters, "res_all": res,
                    "history_all": np.array(history[:stage_hist_start])}
        inner_resume = inner if (inner is not None and pos == start and "X" in inner) else None
        x, it_cols, rj, hist, done = block_pcg(op, b, x, np.full(k, rid[j]), groups, tol, maxiter,
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


class Shifted:
    """``A + sigma I`` for operators without ``with_ridge``."""

    def __init__(self, op: Any, sigma: float):
        self.op, self.sigma, self.shape, self.dtype = op, float(sigma), op.shape, op.dtype

    def matmat(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.op.matmat(x)) + self.sigma * x

