"""A worker killed while the local cluster starts does not abort the run: the start
is retried once on fresh processes and the Gram comes out right."""

import os
import signal
import time

import pytest

from ntkscale.store.gram_store import GramStore
from ntkscale.store.maintenance import verify
from tests.support.gram import config_dict, make_data, write_config
from tests.support.processes import kill_group, start_cli, worker_processes
from tests.support.reference import assert_matches_in_memory, in_memory_kernels

pytestmark = pytest.mark.timeout(240)


def _kill_first_worker(parent: int, after: float, timeout: float = 90.0) -> int:
    """SIGKILL the first worker process of ``parent`` ``after`` seconds after it appears."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = worker_processes(parent=parent, contains=("spawn_main",), excludes=("resource_tracker",))
        if found:
            time.sleep(after)
            os.kill(found[0].pid, signal.SIGKILL)
            return found[0].pid
        time.sleep(0.01)
    pytest.fail("no worker process appeared")


@pytest.mark.slow
@pytest.mark.parametrize("after", [0.3, 0.05])
def test_worker_killed_while_the_cluster_starts(tmp_path, after):
    data = make_data(tmp_path, n=40, m=0, d=3)
    cfg = write_config(tmp_path, config_dict(data))
    log = tmp_path / "gram.log"
    proc = start_cli("gram", str(cfg), cwd=tmp_path, log=log)
    try:
        _kill_first_worker(proc.pid, after)
        rc = proc.wait(timeout=180)
    finally:
        kill_group(proc)
    out = log.read_text()
    assert rc == 0, out
    assert "Traceback" not in out.split("computing")[-1], out
    s = GramStore.open(tmp_path / "run.zarr")
    assert_matches_in_memory(s.train_array("ntk")[...], in_memory_kernels(data)["ntk"])
    assert verify(tmp_path / "run.zarr")["clean"]
