"""The lease that locks a store on object storage (conditional writes on a real S3 API),
and the refusal of store URLs that cannot be honoured."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from ntkscale.cli.main import main
from ntkscale.errors import StoreBusyError, StoreError
from ntkscale.store.lease import LEASE_REL, LeaseLock, lease_holder
from ntkscale.store.location import StoreLocation
from ntkscale.store.lock import StoreLock, lock_holder
from tests.support.gram import config_dict, make_data, write_config
from tests.support.s3 import new_bucket, s3_server, s3fs_client

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def endpoint():
    with s3_server() as url:
        yield url


@pytest.fixture
def where(endpoint):
    return StoreLocation.parse(f"s3://{new_bucket('lease')}/run.zarr")


def _doc(where):
    return json.loads(s3fs_client().cat_file(where.key(LEASE_REL)))["attributes"]["holder"]


def test_a_second_writer_is_refused_naming_the_holder(where):
    first = StoreLock(where.url, command="ntkscale gram a.yaml")
    assert isinstance(first, LeaseLock)                        # a URL gets the lease, not flock
    with first:
        holder = _doc(where)
        assert holder["pid"] == os.getpid() and holder["command"] == "ntkscale gram a.yaml"
        assert holder["expires_unix"] - holder["renewed_unix"] == pytest.approx(first.ttl)
        with pytest.raises(StoreBusyError, match=r"in use by pid \d+ on .*ntkscale gram a.yaml.*expires in"):
            StoreLock(where.url, command="ntkscale gram b.yaml", wait=0.3).acquire()
        assert lock_holder(where.url)["lease_id"] == holder["lease_id"]
    assert _doc(where) is None and lock_holder(where.url) is None   # released: holder null
    with StoreLock(where.url, wait=0.3):                        # and free for the next run
        pass


def test_two_writers_racing_for_a_free_lease_one_wins(where):
    results = []
    barrier = threading.Barrier(4)

    def take():
        lock = LeaseLock(where, wait=0.0)
        barrier.wait()
        try:
            lock.acquire()
            results.append(lock)
        except StoreBusyError:
            results.append(None)

    threads = [threading.Thread(target=take) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if r is not None]
    assert len(winners) == 1, results
    winners[0].release()


def test_an_expired_lease_is_taken_over_and_its_old_holder_learns_it(where):
    old = LeaseLock(where, command="killed run", ttl=1.0)
    old.acquire()
    old._stop.set()                                             # the holder stops renewing (as if killed)
    old._thread.join()
    with pytest.raises(StoreBusyError):                         # not expired yet: refused
        LeaseLock(where, wait=0.0).acquire()
    time.sleep(1.0 + 1.2)                                       # ttl + the clock-skew margin
    assert lease_holder(where) is None                          # stale: status says nobody runs
    new = LeaseLock(where, command="resume", wait=0.5).acquire()
    assert new.took_over["command"] == "killed run"
    assert not old.renew() and "taken over" in old.lost        # the old holder's renewal fails
    with pytest.raises(StoreBusyError, match="taken over"):
        old.__exit__(None, None, None)
    assert _doc(where)["command"] == "resume"                   # its release did not clobber the new lease
    new.release()


def test_a_lease_lost_while_the_command_runs_stops_it_at_once(where):
    """Another run takes the lease over mid-command: the holder's next renewal sees it and
    interrupts the main thread; the ``with`` block reports it, naming the new holder. A
    SIGINT handler that exits (dask-jobqueue's runner installs one) does not get in the way."""
    before = signal.getsignal(signal.SIGUSR1)
    previous = signal.signal(signal.SIGINT, lambda *_: sys.exit("SIGINT handler ran"))
    try:
        _lose_the_lease_mid_command(where)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert signal.getsignal(signal.SIGUSR1) is before            # the lease's handler is gone


def _lose_the_lease_mid_command(where):
    lock = LeaseLock(where, command="ntkscale gram slow.yaml", ttl=1.5)
    other = {"pid": 4242, "host": "elsewhere", "command": "ntkscale gram other.yaml", "lease_id": "x",
             "ttl_s": 60.0, "renewed_unix": time.time(), "expires_unix": time.time() + 60.0}
    t0 = time.monotonic()
    with pytest.raises(StoreBusyError, match=r"taken over by pid 4242 on elsewhere.*stopped at once"):
        with lock:
            s3fs_client().pipe_file(where.key(LEASE_REL), json.dumps(
                {"zarr_format": 3, "node_type": "group", "attributes": {"holder": other}}).encode())
            while time.monotonic() - t0 < 20.0:                 # a long command, in small steps
                time.sleep(0.05)
    assert time.monotonic() - t0 < 3.0                          # one renewal period (0.5 s), not the command's end
    assert _doc(where)["command"] == "ntkscale gram other.yaml"  # the new holder's lease is left alone


def test_a_lease_held_by_a_worker_thread_reports_the_loss_at_its_end(where):
    errors = []

    def hold():
        lock = LeaseLock(where, command="thread", ttl=1.5)
        try:
            with lock:
                s3fs_client().pipe_file(where.key(LEASE_REL), json.dumps(
                    {"zarr_format": 3, "node_type": "group",
                     "attributes": {"holder": {"pid": 1, "host": "h", "command": "c", "lease_id": "y",
                                               "ttl_s": 60.0, "expires_unix": time.time() + 60}}}).encode())
                time.sleep(1.5)
        except StoreBusyError as exc:
            errors.append(str(exc))

    t = threading.Thread(target=hold)
    t.start()
    t.join()
    assert len(errors) == 1 and "taken over" in errors[0] and "it stopped" in errors[0]


def test_the_holder_renews_its_lease(where):
    lock = LeaseLock(where, ttl=1.5).acquire()
    try:
        first = _doc(where)["expires_unix"]
        time.sleep(1.2)
        assert _doc(where)["expires_unix"] > first              # renewed every ttl/3
        assert lock.held and lock.lost is None
    finally:
        lock.release()


# ----------------------------------------------------------------------------- URLs


@pytest.mark.parametrize("store, words", [
    ("foo://bucket/run.zarr", ["unknown URL scheme 'foo'", "s3://"]),
    ("memory://run.zarr", ["not storage that a run's processes share"]),
    ("s3:/grams/run.zarr", ["one slash", "s3://grams/run.zarr"]),
    ("s3://", ["names no bucket"]),
])
def test_store_urls_that_cannot_be_honoured_are_refused(tmp_path, capsys, monkeypatch, store, words):
    monkeypatch.chdir(tmp_path)
    data = make_data(tmp_path, n=8, m=0, d=3)
    cfg = write_config(tmp_path, config_dict(data, store=store))
    assert main(["gram", str(cfg), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(w in err[0] for w in words), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "x.npy", "y.npy"]   # no folder made


@pytest.mark.parametrize("scheme, package", [("gs", "gcsfs"), ("az", "adlfs")])
def test_a_missing_fsspec_backend_is_named(tmp_path, capsys, monkeypatch, scheme, package):
    import importlib.util

    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed here")
    monkeypatch.chdir(tmp_path)
    assert main(["status", f"{scheme}://bucket/run.zarr"]) == 2
    err = capsys.readouterr().err
    assert f"needs the {package} package" in err and f"pip install {package}" in err
    data = make_data(tmp_path, n=8, m=0, d=3)
    cfg = write_config(tmp_path, config_dict(data, store=f"{scheme}://bucket/run.zarr"))
    for cmd in (["plan", str(cfg), "--no-calibrate"], ["gram", str(cfg)], ["solve", str(cfg)]):
        assert main(cmd) == 2, cmd
        assert f"pip install {package}" in capsys.readouterr().err
    assert not (tmp_path / f"{scheme}:").exists()


def test_a_missing_bucket_and_store_options_misuse_are_one_line_errors(endpoint, tmp_path, capsys):
    data = make_data(tmp_path, n=8, m=0, d=3)
    cfg = write_config(tmp_path, config_dict(data, store="s3://no-such-bucket-here/run.zarr"))
    assert main(["gram", str(cfg), "--quiet"]) == 2
    assert "bucket 'no-such-bucket-here' does not exist" in capsys.readouterr().err
    cfg = write_config(tmp_path, config_dict(data, store="run.zarr", store_options={"anon": True}), "b.yaml")
    assert main(["gram", str(cfg)]) == 2
    assert "store_options: only applies to a store at a URL" in capsys.readouterr().err
    assert main(["status", str(tmp_path / "run.zarr"), "--store-option", "anon=true"]) == 2
    assert "--store-option applies to a store at a URL" in capsys.readouterr().err
    assert main(["status", "s3://b/run.zarr", "--store-option", "novalue"]) == 2
    assert "write KEY=VALUE" in capsys.readouterr().err
    assert not Path("s3:").exists()


UNREACHABLE = ["--store-option", "endpoint_url=http://127.0.0.1:1",
               "--store-option", "config_kwargs={retries: {max_attempts: 1}}"]


def test_an_unreachable_endpoint_is_one_line(capsys):
    assert main(["status", "s3://bucket/run.zarr", *UNREACHABLE]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach the object store" in err[0] and "endpoint_url" in err[0], err


def test_workers_that_cannot_read_the_bucket_are_named(where):
    from distributed import Client, LocalCluster

    from ntkscale.store.location import check_remote_visible

    where.write_bytes("zarr.json", b"{}")
    with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as cluster, Client(cluster) as client:
        assert check_remote_visible(client, where) == 1
        wrong = StoreLocation.parse(where.url, {"endpoint_url": "http://127.0.0.1:1",
                                                "config_kwargs": {"retries": {"max_attempts": 1}}})
        with pytest.raises(StoreError, match=r"1 of 1 workers cannot read it: .*EndpointConnectionError"):
            check_remote_visible(client, wrong)
