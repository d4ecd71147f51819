"""Kill-resume with real processes: SIGKILL a CG solve / a tiled Cholesky mid-run,
then rerun: the CG checkpoint and the factored tiles are reused, not recomputed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from ntkscale.solvers import TiledCholesky, ZarrCheckpoint, cg

from .solver_contract import reference, spd

ROOT = Path(__file__).resolve().parents[1]


def _spawn(code: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for(pred, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"child exited early ({proc.returncode}): {err.decode()[-2000:]}")
        try:
            if pred():
                return
        except Exception:  # store half-created: keep polling
            pass
        time.sleep(0.05)
    proc.kill()
    pytest.fail("child made no progress")


CG_PROBLEM = """
import numpy as np, time
from tests.solver_contract import spd
k = spd(300, 300, floor=1e-5, seed=11)
b = np.random.default_rng(12).standard_normal((300, 3))
"""


def test_killed_cg_resumes_from_its_checkpoint(tmp_path):
    store = str(tmp_path / "run.zarr")
    proc = _spawn(CG_PROBLEM + f"""
from ntkscale.solvers import cg, ZarrCheckpoint
cg(k, b, rtol=1e-12, checkpoint=ZarrCheckpoint({store!r}), checkpoint_every=5,
   callback=lambda x: time.sleep(0.05))
""")
    _wait_for(lambda: (ZarrCheckpoint(store).load() or {}).get("it", 0) >= 15, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = ZarrCheckpoint(store).load()["it"]
    ns: dict = {}
    exec(CG_PROBLEM, ns)
    k, b = ns["k"], ns["b"]
    x, info = cg(k, b, rtol=1e-12, checkpoint=ZarrCheckpoint(store), checkpoint_every=5)
    x_ref, info_ref = cg(k, b, rtol=1e-12)
    assert info.resumed_from == saved >= 15
    assert int(info) == 0
    # continued, not restarted (BLAS thread counts differ between the processes: allow rounding)
    assert abs(info.iterations - info_ref.iterations) <= 5
    np.testing.assert_allclose(x, x_ref, rtol=1e-9, atol=1e-9)


def test_killed_cholesky_reuses_factored_tiles(tmp_path):
    store = str(tmp_path / "chol.zarr")
    proc = _spawn(f"""
import time, numpy as np, zarr
from tests.solver_contract import spd
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

    _wait_for(progress, proc)
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
