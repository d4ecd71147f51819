"""Long solves report progress on a timer: CG iterations and residuals, Cholesky tiles (issue 15, item 9)."""

import io
import re

import numpy as np

from ntkscale.gram.progress import say
from ntkscale.solvers.api import solve as solve_system
from ntkscale.solvers.cg import cg
from ntkscale.solvers.cholesky import TiledCholesky
from ntkscale.stages.solve import progress_line

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
    # the stage's hook, passed to solvers.api.solve as the solve stage does
    res = solve_system(A, b, ridges=[0.0], method="cg", rtol=1e-8, preconditioner="none",
                       progress=lambda p: say(progress_line(p), out), progress_every=1e-6)
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


TILE = re.compile(r"^solve: Cholesky tile (\d+)/(\d+) \((\d+) %\), ([0-9.]+) s$")


def test_cholesky_under_the_solve_stage_prints_tiles_done_on_a_timer():
    A, b = _spd(n=1200, seed=1)
    out = io.StringIO()
    res = solve_system(A, b, ridges=[1e-3], method="cholesky", tile=60, num_workers=1,
                       progress=lambda p: say(progress_line(p), out), progress_every=0.005)
    rows = [TILE.match(line) for line in out.getvalue().splitlines()]
    assert rows and all(rows), out.getvalue()
    done = [int(m[1]) for m in rows]
    total = {int(m[2]) for m in rows}
    assert total == {20 * 21 // 2}                          # 20 tile rows: 210 tiles
    assert len(rows) >= 2 and len(set(done)) >= 2
    assert done == sorted(done) and done[-1] == 210 and rows[-1][3] == "100"
    assert all(int(m[3]) == 100 * int(m[1]) // 210 for m in rows)
    secs = [float(m[4]) for m in rows]
    assert secs == sorted(secs)
    np.testing.assert_allclose((A + 1e-3 * np.eye(len(A))) @ res.alpha[0], b, rtol=0, atol=1e-8)


def test_cholesky_hook_counts_resumed_tiles_and_reports_once_at_the_end():
    import zarr

    A, _ = _spd(n=300, seed=2)
    group = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    first = TiledCholesky(A, group, tile=50, ridge=0.0)
    first.factor()
    first.done[5, 5] = 0                                    # one tile lost: resumed, not redone
    calls = []
    again = TiledCholesky(A, group, tile=50, progress=lambda *a: calls.append(a), progress_every=3600.0)
    again.factor()
    assert again.tiles_computed == 1
    assert [c[:2] for c in calls] == [(21, 21)]             # no line within the hour but the last
