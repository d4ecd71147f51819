"""Predictions ``K(test, train) @ alpha``, posterior variances, metrics.

The cross Gram is read by row blocks (a Zarr ``m x n`` array, through the
Dask workers when a client is given) or recomputed on the fly from
``kernel_fn`` and the inputs, so a new test set can be predicted against an
existing store without storing its cross Gram.

Posterior variances follow Lee et al. 2019, "Wide neural networks of any
depth evolve as linear models under gradient descent" (NeurIPS), Sec. 2.3-2.4:

* NNGP (exact Bayesian inference, their Eq. (13) covariance; also Rasmussen &
  Williams 2006, Eq. 2.26): ``var(x) = K(x,x) - K(x,X) (K + l I)^{-1} K(X,x)``.
* NTK-GP, infinite-width network trained to convergence (their Eq. (16) at
  ``t = inf``, mean ``Theta(x,X) Theta^{-1} Y``)::

      var(x) = K(x,x) + Theta(x,X) Theta^{-1} K Theta^{-1} Theta(X,x)
               - 2 Theta(x,X) Theta^{-1} K(X,x)

  with ``K`` the NNGP and ``Theta`` the NTK (train Gram ``+ l I``).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from ..errors import InputError
from ..solvers.operator import GramOperator, as_operator


def cross_operator(k_cross: Any = None, *, kernel_fn: Any = None, x_test: Any = None, x_train: Any = None,
                   get: str = "ntk", client: Any = None, block_rows: Optional[int] = None) -> GramOperator:
    """``K(test, train)`` as an ``m x n`` operator: from an array (NumPy or Zarr)
    or, with ``kernel_fn``/``x_test``/``x_train``, recomputed block by block."""
    if k_cross is not None:
        if isinstance(k_cross, GramOperator):
            return k_cross
        if type(k_cross).__module__.startswith("zarr"):
            return GramOperator.from_zarr(k_cross, symmetric=False, client=client, block_rows=block_rows)
        return GramOperator.from_array(np.asarray(k_cross), symmetric=False, client=client, block_rows=block_rows)
    if kernel_fn is None or x_test is None or x_train is None:
        raise InputError("predict needs the cross Gram K(test, train), or kernel_fn with x_test and x_train")
    return GramOperator.from_kernel(kernel_fn, x_test, x_train, get=get, symmetric=False, client=client,
                                    block_rows=block_rows)


def predict(k_cross: Any, alpha: np.ndarray, *, client: Any = None, block_rows: Optional[int] = None,
            **kw: Any) -> np.ndarray:
    """``K(test, train) @ alpha`` by row blocks (one sweep for every ridge).

    ``alpha`` is ``(n,)``, ``(n, k)`` or ``(s, n, k)`` (one solution per ridge);
    the result has the matching ``(m,)``, ``(m, k)`` or ``(s, m, k)`` shape.
    ``k_cross`` may be None when ``kernel_fn``, ``x_test`` and ``x_train`` are
    given (computed on the fly).
    """
    op = cross_operator(k_cross, client=client, block_rows=block_rows, **kw)
    a = np.asarray(alpha)
    n = op.shape[1]
    if a.shape[-2 if a.ndim > 1 else 0] != n:
        raise InputError(f"alpha has shape {a.shape} but the cross Gram is {op.shape[0]}x{n}; they must share n")
    if a.ndim == 1:
        return op.matmat(a[:, None])[:, 0]
    if a.ndim == 2:
        return op.matmat(a)
    s, _, k = a.shape
    out = op.matmat(np.moveaxis(a, 0, 1).reshape(n, s * k))
    return np.moveaxis(out.reshape(op.shape[0], s, k), 1, 0)


def _blocks(m: int, block: int):
    for i0 in range(0, m, block):
        yield i0, min(m, i0 + block)


def nngp_posterior_variance(k_test_diag: np.ndarray, k_cross: Any, solve: Callable[[np.ndarray], np.ndarray], *,
                            block: int = 512) -> np.ndarray:
    """NNGP posterior variance ``K(x,x) - K(x,X) (K + l I)^{-1} K(X,x)`` (Lee et al. 2019;
    Rasmussen & Williams 2006, Eq. 2.26) for every test point.

    ``k_test_diag``: ``K(x,x)`` (the store's test diagonal); ``k_cross``: NNGP
    ``K(test, train)`` (array or operator); ``solve(B)``: ``(K + l I)^{-1} B`` with
    the NNGP train Gram (a Cholesky factor's ``solve``, or CG). Test points are
    processed ``block`` at a time (``block`` right-hand sides per solve).
    """
    op = cross_operator(k_cross)
    d = np.asarray(k_test_diag, dtype=np.float64)
    if d.shape != (op.shape[0],):
        raise InputError(f"the test diagonal has shape {d.shape}; expected ({op.shape[0]},)")
    out = np.empty_like(d)
    for i0, i1 in _blocks(op.shape[0], block):
        kb = np.asarray(op.row_panel(i0, i1), dtype=np.float64)  # (b, n)
        v = np.asarray(solve(kb.T))                               # (n, b)
        out[i0:i1] = d[i0:i1] - np.einsum("ij,ji->i", kb, v)
    return out


def ntk_posterior_variance(nngp_test_diag: np.ndarray, nngp_cross: Any, ntk_cross: Any, nngp_train: Any,
                           ntk_solve: Callable[[np.ndarray], np.ndarray], *, block: int = 512) -> np.ndarray:
    """NTK-GP variance at ``t = inf`` (Lee et al. 2019, Eq. (16))::

        K(x,x) + Theta(x,X) Theta^{-1} K Theta^{-1} Theta(X,x) - 2 Theta(x,X) Theta^{-1} K(X,x)

    ``nngp_train`` is the NNGP train Gram ``K`` (array or operator, no ridge),
    ``ntk_solve(B)`` applies ``(Theta + l I)^{-1}``. Per block of ``b`` test
    points: one NTK solve with ``b`` right-hand sides and one product with ``K``.
    """
    kx, tx = cross_operator(nngp_cross), cross_operator(ntk_cross)
    kt = as_operator(nngp_train)
    d = np.asarray(nngp_test_diag, dtype=np.float64)
    if kx.shape != tx.shape or d.shape != (kx.shape[0],) or kt.shape != (kx.shape[1], kx.shape[1]):
        raise InputError(f"shapes disagree: NNGP cross {kx.shape}, NTK cross {tx.shape}, NNGP train {kt.shape}, "
                         f"test diagonal {d.shape}")
    out = np.empty_like(d)
    for i0, i1 in _blocks(kx.shape[0], block):
        tb = np.asarray(tx.row_panel(i0, i1), dtype=np.float64)   # Theta(x, X)      (b, n)
        kb = np.asarray(kx.row_panel(i0, i1), dtype=np.float64)   # K(x, X)          (b, n)
        a = np.asarray(ntk_solve(tb.T))                            # Theta^{-1} Theta(X, x)   (n, b)
        ka = np.asarray(kt.matmat(a))                              # K Theta^{-1} Theta(X, x)
        out[i0:i1] = d[i0:i1] + np.einsum("ij,ij->j", a, ka) - 2.0 * np.einsum("ij,ji->i", kb, a)
    return out


def evaluate(pred: np.ndarray, y: Any, encoder: Any, prefix: str = "test_") -> dict:
    """Metrics of raw predictions against labels with a fitted
    :class:`~ntkscale.targets.TargetEncoder`: ``{prefix}accuracy`` or
    ``{prefix}mse`` and ``{prefix}r2``."""
    return encoder.metrics(pred, y, prefix=prefix)
