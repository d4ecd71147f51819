"""Persistent block failures stop a run at once (no retries, one clear error, finished
blocks kept); transient ones are retried. Real faults: a full tmpfs, a missing backend."""

import errno
import importlib.util
import os
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ntkscale.config.run import RunConfig
from ntkscale.errors import BackendUnavailableError, InputError, PersistentBlockError
from ntkscale.gram.faults import persistent_fault
from ntkscale.gram.progress import Progress
from ntkscale.gram.schedule import FAULT_DELAY_ENV, Job, run_blocks
from ntkscale.stages.gram import GramPipeline
from ntkscale.store.gram_store import GramStore
from ntkscale.store.maintenance import verify
from tests.support.gram import config_dict, make_data
from tests.support.reference import assert_matches_in_memory, in_memory_kernels

pytestmark = pytest.mark.timeout(120)

THREADS = {"kind": "local", "n_workers": 1, "threads_per_worker": 2, "io_threads": 0, "processes": False,
           "dashboard_address": ":0"}


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as c:
        yield c


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (needs root and mount permission; skipped otherwise)."""
    where = tmp_path / "disk"
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4M", "tmpfs", str(where)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip() or r.returncode}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(disk: Path) -> Path:
    """Write zeros into ``disk`` until it is full; returns the filler file."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_classification_of_failures():
    assert persistent_fault(OSError(errno.ENOSPC, "No space left on device")).code == "ENOSPC"
    assert persistent_fault(OSError(errno.EROFS, "Read-only file system")).code == "EROFS"
    assert persistent_fault(PermissionError(errno.EACCES, "Permission denied")).code == "EACCES"
    assert persistent_fault(BackendUnavailableError("CuPy is not installed")).code == "backend"
    assert persistent_fault(InputError("bad rows")).code == "input"
    assert persistent_fault(ModuleNotFoundError("No module named 'cupy'", name="cupy")).code == "import"
    try:                                    # a cause further down the chain counts
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("write failed") from inner
    except RuntimeError as outer:
        assert persistent_fault(outer).code == "ENOSPC"
    # transient: retried as before
    for exc in (TimeoutError("slow"), OSError(errno.EIO, "I/O error"), RuntimeError("worker lost"), MemoryError()):
        assert persistent_fault(exc) is None


def test_progress_never_claims_100_percent_with_failed_blocks():
    import io

    out = io.StringIO()
    bar = Progress(10, 0, 1000, stream=out, every=0.0)
    for _ in range(9):
        bar.update({"entries": 100})
    bar.update(None)
    text = out.getvalue()
    assert "blocks 9/10 (90%)  1 FAILED" in text.splitlines()[-1]
    assert "100%" not in text
    out2 = io.StringIO()
    bar2 = Progress(200, 199, 100, stream=out2, every=0.0)
    bar2.update(None)
    assert "(99%)  1 FAILED" in out2.getvalue()


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed here")
def test_missing_backend_fails_once_and_cancels_the_rest(tmp_path, client):
    data = make_data(tmp_path, n=64, m=0, d=3)
    GramPipeline(RunConfig.from_mapping(config_dict(data, cluster=THREADS), tmp_path), progress=False).run(
        client=client)
    store = GramStore.open(tmp_path / "run.zarr")
    plan = store.plan()
    job = Job(store=str(store.path), spec_json=store.spec_json, get=store.kinds, dtype=store.dtype,
              backend="cupy", run_id="t")
    t0 = time.perf_counter()
    res = run_blocks(client, job, plan.blocks, {b.key: "tok" for b in plan.blocks})
    assert time.perf_counter() - t0 < 20
    key, fault = res.fault
    assert fault.code == "backend" and "CuPy is not installed" in fault.message
    assert res.records == [] and res.cancelled >= plan.n_blocks - 2        # 2 threads: at most 2 tried
    assert list(res.failed) == [key]                                      # one failure reported, not 36


def test_disk_full_mid_run_stops_at_once_and_keeps_finished_blocks(tmp_path, small_disk, client, monkeypatch,
                                                                  capsys):
    data = make_data(tmp_path, n=96, m=0, d=4)
    cfg = RunConfig.from_mapping(config_dict(data, store=str(small_disk / "run.zarr"), cluster=THREADS), tmp_path)
    monkeypatch.setenv(FAULT_DELAY_ENV, "0.15")
    store_path = small_disk / "run.zarr"
    filled = {}

    def fill_after_three_blocks():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            entries = store_path / "manifest"       # finished blocks: an entry with its record
            done = [k for k in os.listdir(entries) if not k.startswith("inputs")
                    and (entries / k / "zarr.json").exists()] if entries.exists() else []
            if len(done) >= 3:
                filled["file"] = _fill(small_disk)
                return
            time.sleep(0.02)

    t = threading.Thread(target=fill_after_three_blocks)
    t.start()
    t0 = time.perf_counter()
    with pytest.raises(PersistentBlockError) as info:
        GramPipeline(cfg, progress=True).run(client=client)
    elapsed = time.perf_counter() - t0
    t.join()
    msg = str(info.value)
    assert "ENOSPC" in msg and "disk holding the store is full" in msg and "free space" in msg
    assert msg.startswith("block ") and "finished blocks kept" in msg and "\n" not in msg
    err = capsys.readouterr().err
    assert "100%" not in err and "FAILED" in err
    assert elapsed < 30                                                    # no retry storm
    # the finished blocks are intact (manifest entries match their chunks) and kept
    filled["file"].unlink()
    rep = verify(store_path)
    assert rep["bad"] == {} and rep["ok"] >= 2 and rep["missing"]
    monkeypatch.delenv(FAULT_DELAY_ENV)
    report = GramPipeline(cfg, progress=False).run(client=client)         # after the fix: resume
    # (a task already running when the run stopped may have finished its block since)
    assert report.blocks_done_before >= rep["ok"] and report.blocks_computed <= len(rep["missing"])
    assert report.blocks_done_before + report.blocks_computed == rep["blocks_total"]
    s = GramStore.open(store_path)
    ref = in_memory_kernels(data)
    for kind in ("nngp", "ntk"):
        assert_matches_in_memory(s.train_array(kind)[...], ref[kind])
    assert verify(store_path)["clean"]


@pytest.mark.slow
def test_cli_disk_full_is_one_line_and_exit_code_2(tmp_path, small_disk):
    """The real thing: ``ntkscale gram`` with worker processes, its disk filled mid-run."""
    from tests.support.gram import write_config
    from tests.support.processes import kill_group, start_cli, wait_for

    data = make_data(tmp_path, n=96, m=0, d=4)
    cfg = write_config(tmp_path, config_dict(data, store=str(small_disk / "run.zarr")))
    log = tmp_path / "gram.log"
    proc = start_cli("gram", str(cfg), cwd=tmp_path, env={FAULT_DELAY_ENV: "0.3"}, log=log)
    try:
        manifest = small_disk / "run.zarr" / "manifest"
        wait_for(lambda: manifest.exists() and sum(not k.startswith("inputs") for k in os.listdir(manifest)) >= 3,
                 timeout=90, what="first blocks")
        filler = _fill(small_disk)
        assert proc.wait(timeout=60) == 2
    finally:
        kill_group(proc)
    out = log.read_text()
    errors = [line for line in out.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("ntkscale gram: error: block ") and "ENOSPC" in errors[0], out
    assert "Traceback" not in out and "100%" not in out, out
    filler.unlink()
    assert verify(small_disk / "run.zarr")["bad"] == {}
