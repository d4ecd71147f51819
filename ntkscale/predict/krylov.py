"""Training dynamics at scale: ``f(t) = K_* g_t(A) b`` for many times from one Lanczos run.

For an infinitely wide network trained by gradient descent on the MSE from zero
initial outputs, the test outputs at time ``t`` are (Lee et al. 2019, "Wide Neural
Networks of Any Depth Evolve as Linear Models Under Gradient Descent", NeurIPS,
Eqs. 9-11; Jacot et al. 2018; neural-tangents' ``predict.gradient_descent_mse``)::

    f_test(t) = K_* g_t(A) (Y - f_train(0)),   g_t(λ) = (1 - exp(-a λ)) / λ,   a = η t / N

with ``A = K + diag_reg I`` the regularised train Gram, ``η`` the learning rate and
``N = Y.size``; ``g_∞(λ) = 1/λ`` is kernel ridge regression. ``A`` is only ever
applied to blocks of vectors (:class:`~ntkscale.solvers.operator.GramOperator`), so
the ``n x n`` Gram is never formed in one process.

One Lanczos run per target column (all columns advance together: one sweep of the
Gram per step, ``k`` columns wide) builds an orthonormal basis ``V_m`` of the Krylov
space ``span{b, A b, ..., A^{m-1} b}`` and the tridiagonal ``T_m = V_m^T A V_m``; every
time is then read off the same basis (Gallopoulos & Saad 1992, "Efficient solution of
parabolic equations by Krylov approximation methods"; Saad 1992, "Analysis of some
Krylov subspace approximations to the matrix exponential operator")::

    g_t(A) b ≈ ||b|| V_m g_t(T_m) e_1

The basis is kept orthogonal by full re-orthogonalisation (classical Gram-Schmidt,
twice: Giraud et al. 2005), which the resume also relies on: a stored basis is
extended where it stopped. The training loss needs no extra product:
``f_train(t) - Y = -exp(-a A) Y`` and ``||exp(-a A) b|| ≈ ||b|| ||exp(-a T_m) e_1||``.

**Error estimate.** Every ``check_every`` steps the approximations at ``m`` and
``m - d`` steps are compared; the run stops when, at every time, the change of the
*training outputs* ``A (u_m - u_{m-d})`` relative to ``A u_m`` is below ``rtol``
(computed from ``T_m`` alone; for a geometric convergence this change bounds the
error of ``u_m`` from above). The reported a-posteriori estimate is sharper: the
changes over the last two windows of ``d`` steps, carried to the test outputs, give
the contraction rate and a geometric tail (:func:`error_estimate`);
benchmarks/bench_dynamics.py and tests/predict/test_krylov.py check it is within 10x
of the true error against the dense answer.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol, Sequence, Tuple

import numpy as np
import scipy.linalg

from ..errors import InputError, NotPSDError


# ------------------------------------------------------------------ times
def parse_times(text: Any) -> np.ndarray:
    """Training times from ``"1,10,100,inf"`` (or a sequence of numbers) as a float array;
    empty, unparsable, NaN or negative times are a one-line :class:`InputError`."""
    if isinstance(text, str):
        parts = [p.strip() for p in text.split(",")]
        if not text.strip() or any(p == "" for p in parts):
            raise InputError(f"--time {text!r}: give comma-separated training times >= 0, e.g. --time 1,10,100,inf")
        values = []
        for p in parts:
            try:
                values.append(float(p))
            except ValueError:
                raise InputError(f"--time: {p!r} is not a number; give comma-separated training times >= 0 "
                                 "(inf allowed), e.g. --time 1,10,100,inf") from None
    else:
        values = [float(v) for v in np.atleast_1d(np.asarray(text, dtype=np.float64)).ravel()]
        if not values:
            raise InputError("no training times given; pass at least one time >= 0 (inf allowed)")
    arr = np.asarray(values, dtype=np.float64)
    bad = [v for v in values if math.isnan(v) or v < 0]
    if bad:
        raise InputError(f"training times must be >= 0 (inf allowed); got {', '.join(map(str, bad))}")
    return arr


def flow_scales(times: np.ndarray, learning_rate: float, size: int) -> np.ndarray:
    """``a = η t / N`` for each time (neural-tangents' convention: ``exp(-η t K / N)``)."""
    if not (isinstance(learning_rate, (int, float)) and math.isfinite(learning_rate) and learning_rate > 0):
        raise InputError(f"learning_rate must be a finite number > 0; got {learning_rate!r}")
    return np.asarray(times, dtype=np.float64) * float(learning_rate) / float(size)


def g_flow(theta: np.ndarray, a: float) -> np.ndarray:
    """``g_t(θ) = (1 - exp(-a θ)) / θ`` (``1/θ`` at ``a = ∞``), with neural-tangents'
    handling of round-off: ``θ < 0`` is clipped to 0 inside the exponential and
    the limit ``a`` is taken at ``θ = 0``."""
    if math.isinf(a):
        if np.any(theta <= 0):
            raise NotPSDError(f"the regularised train Gram has a Ritz value {float(theta.min()):.3g} <= 0, so "
                              "t = inf (kernel regression) is undefined; set a ridge (solver.ridge, e.g. 1e-6)")
        return 1.0 / theta
    lam = np.abs(theta)
    num = -np.expm1(-a * np.maximum(theta, 0.0))
    safe = np.where(lam == 0, 1.0, lam)
    return np.where(lam == 0, a, num / safe)


def exp_flow(theta: np.ndarray, a: float) -> np.ndarray:
    """``exp(-a max(θ, 0))`` (0 at ``a = ∞``)."""
    if math.isinf(a):
        return np.zeros_like(theta)
    return np.exp(-a * np.maximum(theta, 0.0))


# ------------------------------------------------------------------ the basis and its record
class LanczosRecord(Protocol):
    """Where a Lanczos run keeps its basis so a killed run resumes (see :class:`ZarrLanczos`)."""

    def load(self) -> Optional[Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]: ...

    def append(self, step: int, v: np.ndarray, alpha: np.ndarray, beta: np.ndarray, active: np.ndarray) -> None: ...


class ZarrLanczos:
    """The basis ``V`` (one chunk per vector: ``(1, n, k)``), the tridiagonals and the
    columns still running, in a Zarr group (the store's ``solver/lanczos_<kind>``).

    ``identity`` names the problem (Gram, ridge, right-hand sides); a group holding
    another problem is started afresh. A step is recorded by writing its vector
    first and the step count (with ``alpha``/``beta``) last, so a kill between the
    two leaves the previous step intact.
    """

    def __init__(self, group: Any, identity: str, shape: Tuple[int, int], dtype: Any = np.float64):
        self.group, self.identity, self.shape = group, identity, tuple(shape)
        self.dtype = np.dtype(dtype)
        attrs = dict(group.attrs)
        if attrs.get("identity") != identity or "basis" not in group:
            n, k = self.shape
            group.create_array("basis", shape=(64, n, k), dtype=self.dtype, chunks=(1, n, k),
                               compressors=None, overwrite=True)
            group.attrs.put({"identity": identity, "steps": -1, "alpha": [], "beta": [], "active": []})
        self.basis = group["basis"]

    def load(self) -> Optional[Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        attrs = dict(self.group.attrs)
        steps = int(attrs.get("steps", -1))
        if steps < 0:
            return None
        v = np.asarray(self.basis[: steps + 1])
        alpha = np.asarray(attrs["alpha"], dtype=np.float64).reshape(steps, -1)
        beta = np.asarray(attrs["beta"], dtype=np.float64).reshape(steps, -1)
        active = np.asarray(attrs["active"], dtype=bool)
        return v, alpha, beta, active

    def append(self, step: int, v: np.ndarray, alpha: np.ndarray, beta: np.ndarray, active: np.ndarray) -> None:
        if step >= self.basis.shape[0]:
            self.basis.resize((max(2 * self.basis.shape[0], step + 1),) + self.shape)
        self.basis[step] = v
        # one write of the group's metadata (``attrs.update`` writes once per key)
        self.group.attrs.put({"identity": self.identity, "steps": int(step),
                              "alpha": np.asarray(alpha).ravel().tolist(), "beta": np.asarray(beta).ravel().tolist(),
                              "active": np.asarray(active).tolist()})


def problem_identity(*parts: Any) -> str:
    """A hash of what a Lanczos basis depends on (strings, numbers, arrays)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(np.ascontiguousarray(p).tobytes() if isinstance(p, np.ndarray) else repr(p).encode())
        h.update(b"|")
    return h.hexdigest()


# ------------------------------------------------------------------ the run
@dataclass
class DynamicsResult:
    """``u[t] = g_t(A) b`` (``(T, n, k)``) for every time, ``u_prev`` (``u_prev2``) the same
    ``d`` (``2 d``) steps earlier (for :func:`error_estimate`), ``train_residual[t, c] = ||exp(-a_t A) b_c||``, ``change[t]`` the relative
    change of the training outputs between the two, ``steps`` Lanczos steps,
    ``resumed_from`` the steps found in the record, ``products`` Gram sweeps done here."""

    u: np.ndarray
    u_prev: np.ndarray
    u_prev2: np.ndarray
    train_residual: np.ndarray
    change: np.ndarray
    steps: int
    resumed_from: int
    products: int
    converged: bool
    seconds: float


def eigh_tridiagonal(d: np.ndarray, e: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Eigenpairs of the symmetric tridiagonal with diagonal ``d`` and off-diagonal ``e``."""
    if len(d) == 1:
        return d.copy(), np.ones((1, 1))
    return scipy.linalg.eigh_tridiagonal(d, e)


def coefficients(alpha: np.ndarray, beta: np.ndarray, steps: np.ndarray, a_values: Sequence[float],
                 bnorm: np.ndarray, m: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """``y[t, :m_c, c] = ||b_c|| g_t(T^c) e_1`` with ``T^c`` column ``c``'s tridiagonal of
    ``m_c = min(m, steps[c])`` steps, and ``||b_c|| ||exp(-a_t T^c) e_1||`` (the norm of
    the training residual ``exp(-a A) b_c``)."""
    k = alpha.shape[1]
    m = int(np.max(steps)) if m is None else m
    y = np.zeros((len(a_values), max(m, 1), k))
    res = np.zeros((len(a_values), k))
    for c in range(k):
        mc = int(min(m, steps[c]))
        if mc == 0 or bnorm[c] == 0:
            continue
        th, s = eigh_tridiagonal(alpha[:mc, c], beta[: mc - 1, c])
        for i, a in enumerate(a_values):
            y[i, :mc, c] = s @ (g_flow(th, a) * s[0]) * bnorm[c]
            res[i, c] = bnorm[c] * np.linalg.norm(exp_flow(th, a) * s[0])
    return y, res


def train_output_norms(alpha: np.ndarray, beta: np.ndarray, steps: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``||A V x||`` per time over all columns, without a product: ``A V_m x = V_m T_m x +
    β_m x_m v_{m+1}`` and ``V`` is orthonormal (``x``: ``(T, m, k)`` coefficients)."""
    out = np.zeros(x.shape[0])
    for c in range(x.shape[2]):
        mc = int(steps[c])
        if mc == 0:
            continue
        xc = x[:, :mc, c]
        tx = alpha[:mc, c] * xc
        tx[:, :-1] += beta[: mc - 1, c] * xc[:, 1:]
        tx[:, 1:] += beta[: mc - 1, c] * xc[:, :-1]
        out += np.sum(tx ** 2, axis=1) + (beta[mc - 1, c] * xc[:, -1]) ** 2
    return np.sqrt(out)


def relative_change(alpha: np.ndarray, beta: np.ndarray, steps: np.ndarray, a_values: Sequence[float],
                    bnorm: np.ndarray, d: int, active: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(y_m, y_{m-d}, change)``: the coefficients now and ``d`` steps ago, and per time the
    change of the training outputs ``||A V (y_m - y_{m-d})|| / ||A V y_m||``. A column whose
    Krylov space is exhausted (not ``active``) is exact: it does not change."""
    m = int(np.max(steps))
    y, _ = coefficients(alpha, beta, steps, a_values, bnorm, m)
    y_prev, _ = coefficients(alpha, beta, np.where(active, np.maximum(steps - d, 0), steps), a_values, bnorm, m)
    num = train_output_norms(alpha, beta, steps, y - y_prev)
    den = train_output_norms(alpha, beta, steps, y)
    return y, y_prev, np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def error_estimate(f: np.ndarray, f_prev: np.ndarray, f_prev2: np.ndarray, max_ratio: float = 0.9) -> np.ndarray:
    """A-posteriori relative error of ``f`` per time (leading axis) from the approximations
    ``d`` and ``2 d`` steps earlier: the changes ``δ1 = ||f - f_prev||`` and
    ``δ2 = ||f_prev - f_prev2||`` give the contraction ``r = δ1 / δ2`` over ``d`` steps, and
    a geometric tail leaves ``δ1 r / (1 - r)`` (``r`` capped at ``max_ratio``; Aitken's
    estimate, as used for CG error estimates by Golub & Meurant 1997). Divided by ``||f||``."""
    T_ = f.shape[0]
    d1 = np.linalg.norm((f - f_prev).reshape(T_, -1), axis=1)
    d2 = np.linalg.norm((f_prev - f_prev2).reshape(T_, -1), axis=1)
    r = np.minimum(np.where(d2 > 0, d1 / np.where(d2 > 0, d2, 1.0), 0.0), max_ratio)
    scale = np.linalg.norm(f.reshape(T_, -1), axis=1)
    est = d1 * r / (1.0 - r)
    return np.where(scale > 0, est / np.where(scale > 0, scale, 1.0), 0.0)


def combine(basis: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``u[t] = V y[t]`` for every time: ``(T, n, k)`` from the basis ``(k, m+1, n)``."""
    m = y.shape[1]
    out = np.empty((y.shape[0], basis.shape[2], basis.shape[0]))
    for c in range(basis.shape[0]):
        out[:, :, c] = y[:, :, c] @ basis[c, :m]
    return out


def lanczos_dynamics(matmat: Callable[[np.ndarray], np.ndarray], B: np.ndarray, a_values: Sequence[float], *,
                     rtol: float = 1e-6, maxiter: Optional[int] = None, check_every: int = 5,
                     record: Optional[LanczosRecord] = None,
                     progress: Optional[Callable[[int, float, float], None]] = None,
                     progress_every: float = 5.0) -> DynamicsResult:
    """``g_t(A) B`` for every ``a`` in ``a_values`` (``g_t(λ) = (1 - e^{-aλ})/λ``, ``a = ∞``
    allowed) by one batched Lanczos run with full re-orthogonalisation.

    ``matmat(X)`` applies ``A = K + diag_reg I`` to an ``(n, j)`` block (one sweep of the
    Gram). The run stops when the training outputs move by less than ``rtol``
    (relative, at every time) over ``check_every`` steps, when a column's Krylov space
    is exhausted (it is then exact), or after ``maxiter`` steps (default ``n``).
    ``record`` (e.g. :class:`ZarrLanczos`) keeps the basis: a rerun resumes from it.
    ``progress(step, change, seconds)`` is called every ``progress_every`` seconds.
    """
    t0 = time.perf_counter()
    B = np.asarray(B, dtype=np.float64)
    if B.ndim != 2 or not np.all(np.isfinite(B)):
        raise InputError(f"the right-hand sides must be a finite (n, k) array; got shape {B.shape}")
    n, k = B.shape
    maxiter = n if maxiter is None else max(1, min(int(maxiter), n))
    d = max(1, int(check_every))
    a_values = [float(a) for a in a_values]
    bnorm = np.linalg.norm(B, axis=0)
    state = record.load() if record is not None else None
    V = np.zeros((k, min(maxiter, 64) + 1, n))          # V[c, j]: column c's j-th Lanczos vector
    if state is None:
        V[:, 0] = (B / np.where(bnorm > 0, bnorm, 1.0)).T
        alpha, beta = np.zeros((0, k)), np.zeros((0, k))
        active = bnorm > 0
        if record is not None:
            record.append(0, V[:, 0].T, alpha, beta, active)
        resumed = 0
    else:
        v0, alpha, beta, active = state                   # v0: (steps+1, n, k)
        if len(v0) > V.shape[1]:
            V = np.zeros((k, len(v0) + 64, n))
        V[:, : len(v0)] = np.moveaxis(v0, 2, 0)
        resumed = len(alpha)
    steps = np.array([_steps_of(beta, active, c) for c in range(k)])
    j = len(alpha)
    products, last_say, change = 0, time.perf_counter(), np.full(len(a_values), np.inf)
    scale = float(np.max(np.abs(alpha))) if alpha.size else 0.0
    if j >= d:   # a resumed basis may already be enough for these times
        _, _, change = relative_change(alpha, beta, steps, a_values, bnorm, d, active)
    while np.any(active) and j < maxiter and not (j >= d and np.all(change <= rtol)):
        if j + 1 >= V.shape[1]:
            V = np.concatenate([V, np.zeros((k, V.shape[1], n))], axis=1)
        cols = np.nonzero(active)[0]
        w = np.asarray(matmat(np.ascontiguousarray(V[cols, j].T)), dtype=np.float64).T.copy()   # (|cols|, n)
        products += 1
        a_j, b_j = np.zeros(len(cols)), np.zeros(len(cols))
        for i, c in enumerate(cols):
            wc = w[i]
            if j > 0:
                wc -= beta[j - 1, c] * V[c, j - 1]
            a_j[i] = V[c, j] @ wc
            wc -= a_j[i] * V[c, j]
            basis = V[c, : j + 1]
            for _ in range(2):   # full re-orthogonalisation: classical Gram-Schmidt, twice
                wc -= basis.T @ (basis @ wc)
            b_j[i] = np.linalg.norm(wc)
        scale = max(scale, float(np.max(np.abs(a_j))))
        alpha = np.vstack([alpha, np.zeros((1, k))])
        beta = np.vstack([beta, np.zeros((1, k))])
        alpha[j, cols] = a_j
        done = b_j <= 1e-12 * max(scale, 1e-300)        # invariant subspace: exact for this column
        for i, c in enumerate(cols):
            if not done[i]:
                beta[j, c] = b_j[i]
                V[c, j + 1] = w[i] / b_j[i]
        active[cols[done]] = False
        j += 1
        steps[cols] += 1
        if record is not None:
            record.append(j, V[:, j].T, alpha, beta, active)
        if j % d == 0 or not np.any(active) or j >= maxiter:
            _, _, change = relative_change(alpha, beta, steps, a_values, bnorm, d, active)
            if j >= d and np.all(change <= rtol):
                break
        if progress is not None and time.perf_counter() - last_say >= progress_every:
            progress(j, float(np.max(change)), time.perf_counter() - t0)
            last_say = time.perf_counter()
    y, y_prev, change = relative_change(alpha, beta, steps, a_values, bnorm, d, active)
    back = np.where(active, np.maximum(steps - 2 * d, 0), steps)
    y_prev2, _ = coefficients(alpha, beta, back, a_values, bnorm, y.shape[1])
    converged = bool(not np.any(active) or np.all(change <= rtol))
    _, res = coefficients(alpha, beta, steps, a_values, bnorm)
    return DynamicsResult(u=combine(V, y), u_prev=combine(V, y_prev), u_prev2=combine(V, y_prev2),
                          train_residual=res, change=change,
                          steps=int(j), resumed_from=int(resumed), products=products, converged=converged,
                          seconds=time.perf_counter() - t0)


def _steps_of(beta: np.ndarray, active: np.ndarray, c: int) -> int:
    """Steps column ``c`` has taken: all of them while active, else up to its breakdown."""
    if active[c] or len(beta) == 0:
        return len(beta)
    zero = np.nonzero(beta[:, c] == 0)[0]
    return int(zero[0]) + 1 if zero.size else len(beta)
