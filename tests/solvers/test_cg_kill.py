"""Kill-resume with a real process: SIGKILL a CG solve mid-run, rerun: it continues
from its last checkpoint (not from scratch)."""

from __future__ import annotations

import os
import signal

import numpy as np
from ntkscale.solvers import ZarrCheckpoint, cg
from tests.support.processes import spawn, wait_for


CG_PROBLEM = """
import numpy as np, time
from tests.support.solvers import spd
k = spd(300, 300, floor=1e-5, seed=11)
b = np.random.default_rng(12).standard_normal((300, 3))
"""


def test_killed_cg_resumes_from_its_checkpoint(tmp_path):
    store = str(tmp_path / "run.zarr")
    proc = spawn(CG_PROBLEM + f"""
from ntkscale.solvers import cg, ZarrCheckpoint
cg(k, b, rtol=1e-10, checkpoint=ZarrCheckpoint({store!r}), checkpoint_every=5,
   callback=lambda x: time.sleep(0.05))
""")
    wait_for(lambda: (ZarrCheckpoint(store).load() or {}).get("it", 0) >= 15, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = ZarrCheckpoint(store).load()["it"]
    ns: dict = {}
    exec(CG_PROBLEM, ns)
    k, b = ns["k"], ns["b"]
    x, info = cg(k, b, rtol=1e-10, checkpoint=ZarrCheckpoint(store), checkpoint_every=5)
    x_ref, info_ref = cg(k, b, rtol=1e-10)
    assert info.resumed_from == saved >= 15
    assert int(info) == 0
    # continued, not restarted (BLAS thread counts differ between the processes: allow rounding)
    assert abs(info.iterations - info_ref.iterations) <= 5
    np.testing.assert_allclose(x, x_ref, rtol=1e-9, atol=1e-9)
