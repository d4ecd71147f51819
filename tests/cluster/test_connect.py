"""Clusters that do not answer fail within the connect deadline, before the store exists."""

import time

import pytest

from ntkscale.cli.main import main
from ntkscale.cluster import address
from tests.support.gram import config_dict, make_data, write_config

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("cluster, needle", [
    ({"kind": "address", "scheduler_file": "nowhere/scheduler.json"},
     "scheduler.json does not exist (waited 3 s); start the scheduler with `dask scheduler --scheduler-file"),
    ({"kind": "address", "address": "tcp://127.0.0.1:9"}, "cannot reach tcp://127.0.0.1:9 within 3 s"),
])
def test_cluster_that_does_not_answer_fails_within_the_deadline_before_the_store(tmp_path, capsys, monkeypatch,
                                                                                cluster, needle):
    monkeypatch.setattr(address, "CONNECT_TIMEOUT_S", 3.0)
    data = make_data(tmp_path, n=10, m=0, d=3)
    cfg = write_config(tmp_path, config_dict(data, cluster=cluster))
    t0 = time.monotonic()
    assert main(["gram", str(cfg)]) == 2
    elapsed = time.monotonic() - t0
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err, err
    assert elapsed < 10, elapsed
    assert not (tmp_path / "run.zarr").exists()


@pytest.mark.slow
def test_missing_scheduler_file_fails_within_the_default_deadline(tmp_path, capsys):
    data = make_data(tmp_path, n=10, m=0, d=3)
    cfg = write_config(tmp_path, config_dict(data, cluster={"kind": "address", "scheduler_file": "none.json"}))
    t0 = time.monotonic()
    assert main(["gram", str(cfg)]) == 2
    assert time.monotonic() - t0 < address.CONNECT_TIMEOUT_S + 5
    assert "does not exist (waited 15 s)" in capsys.readouterr().err
    assert not (tmp_path / "run.zarr").exists()
