"""Kill-resume with a real process: SIGKILL a tiled Cholesky mid-run, rerun: the tiles
already factored are reused."""

from __future__ import annotations

import os
import signal

import numpy as np
import zarr

from ntkscale.solvers import TiledCholesky
from tests.support.processes import spawn, wait_for
from tests.support.solvers import reference, spd


def test_killed_cholesky_reuses_factored_tiles(tmp_path):
    store = str(tmp_path / "chol.zarr")
    proc = spawn(f"""
import time, numpy as np, zarr
from tests.support.solvers import spd
from ntkscale.solvers import TiledCholesky
k = spd(400, 100, seed=21)
class Slow:
    shape, dtype, ndim = k.shape, k.dtype, 2
    def __getitem__(self, key):
        time.sleep(0.15)
        return k[key]
TiledCholesky(Slow(), zarr.open_group({store!r}, mode="a"), tile=50, ridge=1e-3, token="k21").factor()
""")

    def progress():
        return int(np.asarray(zarr.open_group(store, mode="r")["cholesky/done"][...]).sum()) >= 6

    wait_for(progress, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = int(np.asarray(zarr.open_group(store, mode="r")["cholesky/done"][...]).sum())
    assert done_before < 36
    k = spd(400, 100, seed=21)
    f = TiledCholesky(k, zarr.open_group(store, mode="a"), tile=50, ridge=1e-3, token="k21")
    assert f.tiles_done == done_before
    f.factor()
    assert f.tiles_computed == 36 - done_before
    b = np.random.default_rng(0).standard_normal((400, 2))
    np.testing.assert_allclose(f.solve(b), reference(k, b, 1e-3), rtol=1e-8, atol=1e-10)
