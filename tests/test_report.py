"""Report plots: PNG files from a real solve's history, spectrum and ridge metrics."""

from __future__ import annotations

import numpy as np
import pytest

from ntkscale.report import (metric_keys, metric_vs_ridge_figure, plot_cg_residuals, plot_metric_vs_ridge,
    plot_spectrum, spectrum_estimate, write_report)
from ntkscale.solvers import GramOperator, cg
from tests.support.solvers import spd

PNG = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == PNG


def test_write_report_from_a_multi_ridge_solve(tmp_path):
    k = spd(120, 30)
    ridges = [1e-3, 1e-2, 1e-1]
    _, info = cg(k, np.random.default_rng(0).standard_normal((120, 3)), ridges=ridges, rtol=1e-8)
    lam = spectrum_estimate(GramOperator.from_array(k), rank=40)
    metrics = [{"val_accuracy": 0.9, "test_accuracy": 0.88}, {"val_accuracy": 0.93, "test_accuracy": 0.91},
               {"val_accuracy": 0.85, "test_accuracy": 0.86}]
    paths = write_report(str(tmp_path / "report"), history=info.history, ridges=ridges, rtol=1e-8, eigenvalues=lam,
                         ridge_metrics=metrics, chosen=1, relative_ridges=[1e-4, 1e-3, 1e-2])
    assert [p.rsplit("/", 1)[1] for p in paths] == ["cg_residuals.png", "spectrum.png", "metric_vs_ridge.png"]
    assert all(_is_png(p) for p in paths)


def test_spectrum_estimates_agree_with_eigvalsh():
    k = spd(200, 8, floor=1e-3)
    top = np.sort(np.linalg.eigvalsh(k))[::-1][:8]
    np.testing.assert_allclose(spectrum_estimate(GramOperator.from_array(k), rank=30)[:8], top, rtol=1e-3)
    sample = spectrum_estimate(GramOperator.from_array(k), rank=100, method="sample")
    assert sample.shape == (100,) and 0.3 < sample[0] / top[0] < 3


def test_single_plots_and_bad_history(tmp_path):
    h = np.array([[1.0, 1.0], [0.1, np.nan], [0.01, np.nan]])
    assert _is_png(plot_cg_residuals(h, str(tmp_path / "a.png")))
    assert _is_png(plot_spectrum(np.array([3.0, 1.0, 0.0]), str(tmp_path / "b.png"), ridges=[0.1]))
    assert _is_png(plot_metric_vs_ridge([0.0, 1.0], [{"test_mse": 1.0}, {"test_mse": 0.5}], str(tmp_path / "c.png")))
    with pytest.raises(ValueError, match="history must be"):
        plot_cg_residuals(np.ones(3), str(tmp_path / "d.png"))


def test_solution_record_round_trip(tmp_path):
    import zarr

    from ntkscale.solvers import solve
    from ntkscale.store.records import load_solution, save_solution

    k = spd(60, 10)
    res = solve(k, np.ones((60, 2)), ridges=[1e-2, 1e-1], rank=10)
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="a").require_group("solver")
    save_solution(g, res, {"relative_ridges": [1e-2, 1e-1]})
    back = load_solution(zarr.open_group(str(tmp_path / "s.zarr"), mode="r")["solver"])
    np.testing.assert_array_equal(back["alpha"], res.alpha)
    assert back["history"].shape[1:] == (2, 2)
    assert back["attrs"]["solve"]["cg"]["converged"] and back["attrs"]["relative_ridges"] == [1e-2, 1e-1]
    paths = write_report(str(tmp_path / "r"), history=back["history"], ridges=back["attrs"]["solve"]["ridges"])
    assert _is_png(paths[0])


#: rows as ``ntkscale predict`` stores them: the ridge (relative and absolute) and the metrics
ROWS = [{"ridge": 1e-6, "ridge_absolute": 3e-7, "val_accuracy": 0.91, "test_accuracy": 0.90},
        {"ridge": 1e-4, "ridge_absolute": 3e-5, "val_accuracy": 0.93, "test_accuracy": 0.915},
        {"ridge": 1e-2, "ridge_absolute": 3e-3, "val_accuracy": 0.89, "test_accuracy": 0.88}]


def test_metric_vs_ridge_plots_metrics_not_ridges_on_a_log_axis():
    import matplotlib.pyplot as plt

    assert metric_keys(ROWS) == ["val_accuracy", "test_accuracy"]
    fig = metric_vs_ridge_figure([r["ridge_absolute"] for r in ROWS], ROWS, chosen=1,
                                 relative=[r["ridge"] for r in ROWS])
    try:
        (ax,) = fig.axes                                   # one metric (accuracy): one panel
        curves = {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("chosen")}
        assert set(curves) == {"val", "test"}
        np.testing.assert_array_equal(curves["test"].get_ydata(), [0.90, 0.915, 0.88])
        np.testing.assert_array_equal(curves["val"].get_xdata(), [1e-6, 1e-4, 1e-2])
        assert ax.get_xscale() == "log" and ax.get_ylabel() == "accuracy"
        lo, hi = ax.get_ylim()
        assert 0.85 < lo and hi < 0.95                     # the axis spans the metrics, not 0-1 with ridges
    finally:
        plt.close(fig)


def test_regression_metrics_get_one_panel_each():
    import matplotlib.pyplot as plt

    rows = [{"ridge": r, "ridge_absolute": r, "test_mse": m, "test_r2": q} for r, m, q in
            [(1e-3, 0.2, 0.8), (1e-1, 0.1, 0.9)]]
    fig = metric_vs_ridge_figure([1e-3, 1e-1], rows)
    try:
        assert [ax.get_ylabel() for ax in fig.axes] == ["mse", "r2"]
    finally:
        plt.close(fig)


def test_one_ridge_and_a_direct_solve_say_what_is_left_out_and_why(tmp_path):
    rep = write_report(str(tmp_path / "r"), ridges=[3e-7], relative_ridges=[1e-6], ridge_metrics=ROWS[:1],
                       eigenvalues=np.array([2.0, 1.0]), method="cholesky")
    assert [p.rsplit("/", 1)[1] for p in rep] == ["spectrum.png"]
    assert not (tmp_path / "r" / "metric_vs_ridge.png").exists()
    assert "one ridge (1e-06: val_accuracy 0.91, test_accuracy 0.9)" in rep.skipped["metric_vs_ridge.png"]
    assert rep.skipped["cg_residuals.png"].startswith("the cholesky solver is direct")
    with pytest.raises(ValueError, match="two or more ridges"):
        plot_metric_vs_ridge([1e-6], ROWS[:1], str(tmp_path / "x.png"))
