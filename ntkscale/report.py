"""PNG plots of a solve (matplotlib, Agg backend): what people look at first.

* :func:`plot_cg_residuals` - relative residual per CG iteration, one curve
  per ridge (median over right-hand sides, band from min to max);
* :func:`plot_spectrum` - the train Gram's eigenvalue estimate, from the
  Nyström sketch (Frangella, Tropp & Udell 2021) or from ``eigvalsh`` of a
  random principal submatrix scaled by ``n / m`` (the sample spectrum of a
  kernel matrix approximates the operator's; Williams & Seeger 2001);
* :func:`plot_metric_vs_ridge` - validation and test metric for each ridge,
  the chosen ridge marked.

:func:`write_report` writes whichever of them it has data for and returns
the paths; ``ntkscale report STORE`` maps the store's solver records onto it.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .solvers.nystrom import nystrom_preconditioner


def _plt():
    import matplotlib  # noqa: PLC0415 (heavy; only the plots need it, and the backend is set before pyplot loads)

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def plot_cg_residuals(history: np.ndarray, path: str, *, ridges: Optional[Sequence[float]] = None,
                      rtol: Optional[float] = None, title: str = "CG convergence") -> str:
    """``history``: ``(T+1, k)`` or ``(T+1, s, k)`` relative residuals (``CGInfo.history``;
    NaN where a column was not iterating)."""
    plt = _plt()
    h = np.asarray(history, dtype=np.float64)
    if h.ndim == 2:
        h = h[:, None, :]
    if h.ndim != 3 or h.shape[0] == 0:
        raise ValueError(f"history must be (T+1, k) or (T+1, s, k); got shape {np.shape(history)}")
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    it = np.arange(h.shape[0])
    for j in range(h.shape[1]):
        block = h[:, j, :]
        ok = np.any(np.isfinite(block), axis=1)
        if not np.any(ok):
            continue
        with np.errstate(all="ignore"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                med = np.nanmedian(block[ok], axis=1)
                lo, hi = np.nanmin(block[ok], axis=1), np.nanmax(block[ok], axis=1)
        label = f"ridge {ridges[j]:.3g}" if ridges is not None else None
        line, = ax.semilogy(it[ok], np.maximum(med, 1e-300), label=label)
        if block.shape[1] > 1:
            ax.fill_between(it[ok], np.maximum(lo, 1e-300), np.maximum(hi, 1e-300), color=line.get_color(),
                            alpha=0.15, linewidth=0)
    if rtol:
        ax.axhline(rtol, color="k", linestyle=":", linewidth=1, label=f"rtol {rtol:g}")
    ax.set_xlabel("iteration (products with the Gram)")
    ax.set_ylabel("relative residual ||r|| / ||b||")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if ridges is not None or rtol:
        ax.legend(fontsize=8)
    return _save(fig, path)


def spectrum_estimate(A: Any, *, rank: int = 256, method: str = "nystrom", seed: Any = 0) -> np.ndarray:
    """Top eigenvalues of the Gram operator ``A`` (descending): from a rank-``rank``
    randomized Nyström sketch (one product) or ``eigvalsh`` of a random
    ``rank x rank`` principal submatrix times ``n / rank`` (``method="sample"``)."""
    n = A.shape[0]
    if method == "nystrom":
        return nystrom_preconditioner(A, min(rank, n), shift=0.0, seed=seed).eigenvalues
    if method == "sample":
        idx = np.sort(np.random.default_rng(seed).choice(n, size=min(rank, n), replace=False))
        base = A.with_ridge(0.0) if hasattr(A, "with_ridge") else A
        sub = np.asarray(base.rows(idx))[:, idx]
        return np.sort(np.linalg.eigvalsh((sub + sub.T) / 2))[::-1] * (n / len(idx))
    raise ValueError(f"method must be 'nystrom' or 'sample'; got {method!r}")


def plot_spectrum(eigenvalues: np.ndarray, path: str, *, ridges: Optional[Sequence[float]] = None,
                  title: str = "Gram spectrum estimate") -> str:
    plt = _plt()
    lam = np.sort(np.asarray(eigenvalues, dtype=np.float64))[::-1]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    pos = lam > 0
    ax.loglog(np.arange(1, lam.size + 1)[pos], lam[pos], marker=".", markersize=3, linewidth=1, label="eigenvalue")
    for r in ridges or ():
        if r > 0:
            ax.axhline(r, linestyle="--", linewidth=0.8, alpha=0.7, color="tab:red")
    if ridges:
        ax.plot([], [], linestyle="--", color="tab:red", label="ridge(s)")
    ax.set_xlabel("index")
    ax.set_ylabel("eigenvalue")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_metric_vs_ridge(ridges: Sequence[float], metrics: Sequence[Dict[str, float]], path: str, *,
                         chosen: Optional[int] = None, relative: Optional[Sequence[float]] = None,
                         title: str = "metric vs ridge") -> str:
    """``metrics``: one dict per ridge, e.g. ``{"val_accuracy": .., "test_accuracy": ..}``;
    every key common to all of them is drawn. ``relative`` ridges, when given, label the x axis."""
    plt = _plt()
    x = np.asarray(relative if relative is not None else ridges, dtype=np.float64)
    keys = [k for k in metrics[0] if all(k in m for m in metrics)] if metrics else []
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    xpos = np.where(x > 0, x, np.nan)
    if np.all(np.isnan(xpos)):
        xpos = np.arange(len(x), dtype=np.float64)
    for k in keys:
        ax.plot(xpos, [m[k] for m in metrics], marker="o", label=k)
    if np.any(np.isfinite(xpos)) and np.nanmin(xpos) > 0:
        ax.set_xscale("log")
    if chosen is not None and 0 <= chosen < len(x):
        ax.axvline(xpos[chosen], color="k", linestyle=":", linewidth=1, label="chosen (validation)")
    ax.set_xlabel("ridge" + (" (relative to mean diagonal)" if relative is not None else ""))
    ax.set_ylabel("metric")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def write_report(outdir: str, *, history: Optional[np.ndarray] = None, ridges: Optional[Sequence[float]] = None,
                 rtol: Optional[float] = None, eigenvalues: Optional[np.ndarray] = None,
                 ridge_metrics: Optional[Sequence[Dict[str, float]]] = None, chosen: Optional[int] = None,
                 relative_ridges: Optional[Sequence[float]] = None) -> List[str]:
    """Write ``cg_residuals.png``, ``spectrum.png`` and ``metric_vs_ridge.png``
    (whichever there is data for) into ``outdir``; returns their paths."""
    os.makedirs(outdir, exist_ok=True)
    paths = []
    if history is not None and np.size(history):
        paths.append(plot_cg_residuals(history, os.path.join(outdir, "cg_residuals.png"), ridges=ridges, rtol=rtol))
    if eigenvalues is not None and np.size(eigenvalues):
        paths.append(plot_spectrum(eigenvalues, os.path.join(outdir, "spectrum.png"), ridges=ridges))
    if ridge_metrics:
        paths.append(plot_metric_vs_ridge(ridges if ridges is not None else range(len(ridge_metrics)), ridge_metrics,
                                          os.path.join(outdir, "metric_vs_ridge.png"), chosen=chosen,
                                          relative=relative_ridges))
    return paths


def _save(fig: Any, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, format="png")
    _plt().close(fig)
    return path
