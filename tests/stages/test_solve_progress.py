"""Long solves report progress: CG iterations and residuals on a timer (issue 15, item 9)."""

import io
import re

import numpy as np

from ntkscale.gram.progress import say
from ntkscale.solvers.api import solve as solve_system
from ntkscale.solvers.cg import cg, report_progress
from ntkscale.stages.solve import cg_progress_line

LINE = re.compile(r"^solve: CG iteration (\d+), relative residual ([0-9.e+-]+), ([0-9.]+) s$")


def _spd(n=200, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n))
    return a @ a.T / n + 0.05 * np.eye(n), rng.standard_normal(n)


def _parse(text):
    rows = [LINE.match(line) for line in text.splitlines()]
    assert all(rows), text
    return [(int(m[1]), float(m[2]), float(m[3])) for m in rows]


def test_cg_under_the_solve_stage_prints_iterations_with_falling_residuals():
    A, b = _spd()
    out = io.StringIO()
    # the stage's hook, reached through solvers.api.solve as the solve stage does
    with report_progress(lambda *a: say(cg_progress_line(*a), out), every=1e-6):
        res = solve_system(A, b, ridges=[0.0], method="cg", rtol=1e-8, preconditioner="none")
    rows = _parse(out.getvalue())
    assert len(rows) >= 2
    its, resid, secs = zip(*rows)
    assert list(its) == sorted(set(its)) and its[-1] == res.info.iterations
    assert resid[-1] < resid[0] and resid[-1] <= 1e-8      # falls to the tolerance
    assert all(s2 >= s1 for s1, s2 in zip(secs, secs[1:]))
    np.testing.assert_allclose(A @ res.alpha[0], b, rtol=0, atol=1e-6)


def test_timer_interval_limits_the_lines_and_the_end_is_always_reported():
    A, b = _spd()
    calls = []
    x, info = cg(A, b, rtol=1e-8, progress=lambda *a: calls.append(a), progress_every=3600.0)
    assert [c[0] for c in calls] == [info.iterations]      # no line within the hour but the last
    assert calls[0][1] <= 1e-8
    calls.clear()
    cg(A, np.stack([b, -2 * b], 1), ridges=[1e-3, 1e-1], rtol=1e-8, progress=lambda *a: calls.append(a),
       progress_every=0.0)                                  # multishift: one line per iteration
    assert len(calls) > 5 and calls[-1][1] < calls[0][1]
