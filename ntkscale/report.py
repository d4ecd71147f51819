"""PNG plots of a solve (matplotlib, Agg backend): what people look at first.

* :func:`plot_cg_residuals` - relative residual per CG iteration, one curve
  per ridge (median over right-hand sides, band from min to max);
* :func:`plot_spectrum` - the train Gram's eigenvalue estimate, from the
  Nyström sketch (Frangella, Tropp & Udell 2021) or from ``eigvalsh`` of a
  random principal submatrix scaled by ``n / m`` (the sample spectrum of a
  kernel matrix approximates the operator's; Williams & Seeger 2001);
* :func:`plot_metric_vs_ridge` - validation and test metrics against the ridge
  (log axis, one panel per metric), the chosen ridge marked;
* :func:`plot_dynamics` - test metric and training loss against training time (log
  axis) for each kernel (NNGP: only the readout trained; NTK: every layer), with
  ``t = ∞`` (kernel regression) marked (Lee et al. 2019, Fig. 1-style; the
  predictions come from ``ntkscale predict CONFIG --time ...``).

:func:`write_report` writes whichever of them it has data for and returns
the paths, with the reason for each plot it left out; ``ntkscale report STORE`` maps
the store's solver records onto it.
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


#: what a ``metrics`` row of :func:`plot_metric_vs_ridge` may plot: validation and test metrics
METRIC_PREFIXES = ("val_", "test_")


def metric_keys(metrics: Sequence[Dict[str, Any]]) -> List[str]:
    """The metric columns of per-ridge rows (``val_*``/``test_*`` numbers present in every row);
    ``ridge`` and ``ridge_absolute`` are the x axis, never a metric."""
    if not metrics:
        return []
    return [k for k in metrics[0] if k.startswith(METRIC_PREFIXES)
            and all(isinstance(m.get(k), (int, float)) and not isinstance(m.get(k), bool) for m in metrics)]


def plot_metric_vs_ridge(ridges: Sequence[float], metrics: Sequence[Dict[str, float]], path: str, *,
                         chosen: Optional[int] = None, relative: Optional[Sequence[float]] = None,
                         title: str = "metric vs ridge") -> str:
    """Save :func:`metric_vs_ridge_figure` as a PNG at ``path``."""
    return _save(metric_vs_ridge_figure(ridges, metrics, chosen=chosen, relative=relative, title=title), path)


def metric_vs_ridge_figure(ridges: Sequence[float], metrics: Sequence[Dict[str, float]], *,
                           chosen: Optional[int] = None, relative: Optional[Sequence[float]] = None,
                           title: str = "metric vs ridge") -> Any:
    """Validation and test metrics against the ridge, on a log ridge axis: one panel per
    metric (accuracy, mse, r2: each on its own scale), validation and test as two curves.
    ``metrics``: one dict per ridge (``ridge``/``ridge_absolute`` entries are ignored);
    ``relative`` ridges, when given, are the x axis. Needs two or more ridges."""
    keys = metric_keys(metrics)
    x = np.asarray(relative if relative is not None else ridges, dtype=np.float64)
    if len(metrics) < 2 or len(x) != len(metrics):
        raise ValueError(f"a metric-vs-ridge plot needs two or more ridges with one metrics row each; got "
                         f"{len(x)} ridges and {len(metrics)} rows")
    if not keys:
        raise ValueError(f"no val_*/test_* metrics in the rows (keys: {sorted(metrics[0])})")
    plt = _plt()
    names = list(dict.fromkeys(k.split("_", 1)[1] for k in keys))
    fig, axes = plt.subplots(len(names), 1, figsize=(6.4, 2.2 + 2.0 * len(names)), dpi=110, sharex=True,
                             squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        for prefix, style in (("val_", "s--"), ("test_", "o-")):
            if prefix + name in keys:
                ax.plot(x, [m[prefix + name] for m in metrics], style, label=prefix.rstrip("_"))
        if chosen is not None and 0 <= chosen < len(x):
            ax.axvline(x[chosen], color="k", linestyle=":", linewidth=1, label=f"chosen {x[chosen]:.3g}")
        ax.set_ylabel(name)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes[-1, 0]
    if np.all(x > 0):
        ax.set_xscale("log")
    else:  # a zero ridge: linear near 0, logarithmic beyond the smallest positive ridge
        positive = x[x > 0]
        ax.set_xscale("symlog", linthresh=float(positive.min()) if positive.size else 1.0)
    ax.set_xlabel("ridge" + (" (relative to the mean train diagonal)" if relative is not None else ""))
    axes[0, 0].set_title(title)
    return fig


#: kernel -> line colour of the dynamics plot
KIND_COLOURS = {"nngp": "tab:blue", "ntk": "tab:orange"}


def _times(values: Sequence[Any]) -> np.ndarray:
    return np.asarray([float(v) for v in values], dtype=np.float64)


def plot_dynamics(dynamics: Dict[str, Dict[str, Any]], path: str, *, title: str = "training dynamics") -> str:
    """Save :func:`dynamics_figure` as a PNG at ``path``."""
    return _save(dynamics_figure(dynamics, title=title), path)


def dynamics_figure(dynamics: Dict[str, Dict[str, Any]], *, title: str = "training dynamics") -> Any:
    """Test metric (accuracy, or MSE) and training loss ``||f_train(t) - Y||² / (2N)`` against
    the training time ``t`` on a log axis, one curve per kernel (``{kind: metrics}`` with
    ``times`` (``"inf"`` allowed), ``train_loss`` and ``test_accuracy`` or ``test_mse`` lists,
    as :func:`ntkscale.stages.dynamics.predict_times` records them). ``t = ∞`` sits past the
    largest finite time (marked "∞"), with a dashed line at its value; ``t = 0`` is left out
    of the log axis."""
    kinds = [k for k, m in dynamics.items() if m.get("times")]
    if not kinds:
        raise ValueError("no training dynamics to plot (run `ntkscale predict CONFIG --time ...`)")
    finite = np.concatenate([_times(dynamics[k]["times"]) for k in kinds])
    finite = finite[np.isfinite(finite) & (finite > 0)]
    if finite.size == 0:
        raise ValueError("the dynamics hold no positive finite time to put on a log axis")
    x_inf = float(finite.max()) * 10.0
    metric = next((name for name in ("test_accuracy", "test_mse") if all(name in dynamics[k] for k in kinds)), None)
    panels = ([metric] if metric else []) + ["train_loss"]
    plt = _plt()
    fig, axes = plt.subplots(len(panels), 1, figsize=(6.4, 2.4 + 2.2 * len(panels)), dpi=110, sharex=True,
                             squeeze=False)
    for ax, name in zip(axes[:, 0], panels):
        for kind in kinds:
            m = dynamics[kind]
            t = _times(m["times"])
            v = np.asarray(m[name], dtype=np.float64)
            colour = KIND_COLOURS.get(kind)
            lr = m.get("learning_rate")
            show = np.isfinite(t) & (t > 0)
            order = np.argsort(t[show])
            ax.plot(t[show][order], v[show][order], "o-", markersize=3, color=colour,
                    label=f"{kind.upper()}" + (f" (lr {lr:g})" if lr is not None else ""))
            at_inf = np.isinf(t)
            if np.any(at_inf):
                ax.plot([x_inf], [v[at_inf][0]], "*", markersize=10, color=colour)
                ax.axhline(v[at_inf][0], color=colour, linestyle="--", linewidth=0.8, alpha=0.6)
        ax.axvline(x_inf / 3.0, color="k", linestyle=":", linewidth=0.8)
        ax.set_xscale("log")
        if name == "train_loss":
            positive = np.concatenate([np.asarray(dynamics[k][name], dtype=np.float64) for k in kinds])
            if np.any(positive > 0):
                ax.set_yscale("symlog", linthresh=float(positive[positive > 0].min()))
                ax.set_ylim(bottom=0.0)     # t = ∞ fits the training set: loss 0
        ax.set_ylabel({"test_accuracy": "test accuracy", "test_mse": "test MSE",
                       "train_loss": "training loss"}[name])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes[-1, 0]
    ticks = [t for t in ax.get_xticks() if finite.min() / 10 <= t <= finite.max() * 1.01]
    ax.set_xticks(ticks + [x_inf])
    ax.set_xticklabels([f"$10^{{{int(round(np.log10(t)))}}}$" for t in ticks] + ["∞"])
    ax.set_xlim(finite.min() / 2, x_inf * 2)
    ax.set_xlabel("training time t (gradient steps of size lr; flow exp(-lr t K / N))")
    axes[0, 0].set_title(title)
    return fig


class Report(List[str]):
    """The PNG paths :func:`write_report` wrote (a list), and ``skipped``: ``{file name: why
    it was not written}``."""

    def __init__(self, paths: Sequence[str] = (), skipped: Optional[Dict[str, str]] = None):
        super().__init__(paths)
        self.skipped: Dict[str, str] = dict(skipped or {})


def write_report(outdir: str, *, history: Optional[np.ndarray] = None, ridges: Optional[Sequence[float]] = None,
                 rtol: Optional[float] = None, eigenvalues: Optional[np.ndarray] = None,
                 ridge_metrics: Optional[Sequence[Dict[str, float]]] = None, chosen: Optional[int] = None,
                 relative_ridges: Optional[Sequence[float]] = None, method: Optional[str] = None,
                 dynamics: Optional[Dict[str, Dict[str, Any]]] = None) -> Report:
    """Write ``cg_residuals.png``, ``spectrum.png``, ``metric_vs_ridge.png`` and ``dynamics.png``
    into ``outdir``, each when there is data for it; returns their paths, with the reason for
    each plot left out in ``.skipped`` (``method``: the solver, to say why there are no CG
    residuals; ``dynamics``: ``{kind: metrics}`` of :func:`plot_dynamics`)."""
    os.makedirs(outdir, exist_ok=True)
    out = Report()
    if history is not None and np.size(history):
        out.append(plot_cg_residuals(history, os.path.join(outdir, "cg_residuals.png"), ridges=ridges, rtol=rtol))
    elif method is not None and method != "cg":
        out.skipped["cg_residuals.png"] = (f"the {method} solver is direct: it has no iterations and no "
                                           "residuals to plot (solver.method: cg records them)")
    else:
        out.skipped["cg_residuals.png"] = "the solve recorded no CG residual history"
    if eigenvalues is not None and np.size(eigenvalues):
        out.append(plot_spectrum(eigenvalues, os.path.join(outdir, "spectrum.png"), ridges=ridges))
    else:
        out.skipped["spectrum.png"] = "no eigenvalue estimate was given"
    rows = list(ridge_metrics or [])
    if len(rows) >= 2 and metric_keys(rows):
        out.append(plot_metric_vs_ridge(ridges if ridges is not None else range(len(rows)), rows,
                                        os.path.join(outdir, "metric_vs_ridge.png"), chosen=chosen,
                                        relative=relative_ridges))
    elif len(rows) == 1:
        x = (relative_ridges or ridges or [float("nan")])[0]
        values = ", ".join(f"{k} {rows[0][k]:.4g}" for k in metric_keys(rows))
        out.skipped["metric_vs_ridge.png"] = (f"one ridge ({x:.3g}{': ' + values if values else ''}): nothing to "
                                              "plot against; give solver.ridge a list to compare ridges")
    else:
        out.skipped["metric_vs_ridge.png"] = "no test or validation metrics yet (run `ntkscale predict CONFIG`)"
    if dynamics:
        out.append(plot_dynamics(dynamics, os.path.join(outdir, "dynamics.png")))
    else:
        out.skipped["dynamics.png"] = ("no training dynamics yet (run `ntkscale predict CONFIG --time "
                                       "1,10,100,1000,inf`)")
    return out


def _save(fig: Any, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, format="png")
    _plt().close(fig)
    return path
