"""``cluster: {kind: address}`` against separately started ``dask scheduler`` and
``dask worker`` processes gives the same Gram as the in-memory kernel."""

import json
import os
import signal
import subprocess
import sys

import pytest

from ntkscale.cli.main import main
from ntkscale.cluster.client import WORKER_ENV
from ntkscale.store.gram_store import GramStore
from tests.support.gram import config_dict, make_data, write_config
from tests.support.processes import cli, wait_for
from tests.support.reference import assert_matches_in_memory, in_memory_kernels

pytestmark = pytest.mark.timeout(180)


def _start(args, log):
    env = dict(os.environ, **WORKER_ENV)
    return subprocess.Popen([sys.executable, "-m", "dask", *args], stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


@pytest.fixture
def scheduler(tmp_path):
    sched_file = tmp_path / "scheduler.json"
    procs = [_start(["scheduler", "--scheduler-file", str(sched_file), "--port", "0",
                     "--dashboard-address", ":0"], tmp_path / "scheduler.log")]
    try:
        wait_for(sched_file.exists, timeout=60, what="the scheduler file")
        procs.append(_start(["worker", "--scheduler-file", str(sched_file), "--nworkers", "2",
                             "--nthreads", "2", "--memory-limit", "1GiB", "--no-dashboard"],
                            tmp_path / "worker.log"))
        yield sched_file
    finally:
        for p in reversed(procs):
            _stop(p)


def test_address_cluster_gives_the_same_gram(tmp_path, scheduler, capsys):
    data = make_data(tmp_path, n=50, m=15, d=6)
    address = json.loads(scheduler.read_text())["address"]
    cfg = write_config(tmp_path, config_dict(data, cluster={"kind": "address", "address": address,
                                                              "io_threads": 1}))
    r = cli("gram", str(cfg), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    # 2 workers x 2 threads, one of which only writes: 2 compute slots
    assert report["blocks_computed"] == report["blocks_total"] and report["slots"] == 2
    s = GramStore.open(tmp_path / "run.zarr")
    ref, reft = in_memory_kernels(data), in_memory_kernels(data, "test")
    for kind in ("nngp", "ntk"):
        assert_matches_in_memory(s.train_array(kind)[...], ref[kind])
        assert_matches_in_memory(s.test_array(kind)[...], reft[kind])
        assert_matches_in_memory(s.diag("test", kind), reft[f"diag_{kind}"])
    # the blocks were computed by the external workers, not by a local cluster
    from distributed import Client

    with Client(address, timeout="20s") as c:
        external = set(c.scheduler_info()["workers"])
    seen = {rec["worker"] for k, rec in s.manifest.records().items() if not k.startswith("inputs-")}
    assert seen <= external and seen
    # the same scheduler via scheduler_file, through the --scheduler flag on a rerun: nothing to do
    assert main(["gram", str(cfg), "--json", "--scheduler", address]) == 0
    assert json.loads(capsys.readouterr().out)["blocks_computed"] == 0


def test_unreachable_scheduler_is_a_clear_error(tmp_path):
    data = make_data(tmp_path, n=10, m=0, d=3)
    cfg = write_config(tmp_path, config_dict(data, cluster={"kind": "address", "address": "tcp://127.0.0.1:9"}))
    r = cli("gram", str(cfg), cwd=tmp_path, timeout=90, env={"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"})
    assert r.returncode == 2 and "cannot reach tcp://127.0.0.1:9" in r.stderr, r.stderr
