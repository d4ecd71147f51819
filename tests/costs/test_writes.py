"""The projection's store-write term: bytes written at the store's fsync'd bandwidth,
overlapped with compute (the slower binds), and the calibration that carries it."""

import json

import pytest

from ntkscale import NtkscaleError
from ntkscale.costs import model as costmodel
from ntkscale.costs.measure import chunked_write_bandwidth, storage_calibration, write_bandwidth
from ntkscale.costs.projection import combine, find_calibration, load_calibration, makespan, project

from .test_projection import _synthetic


def test_combine_takes_the_slower_and_says_which_binds():
    assert combine(10.0, 4.0) == {"wall_seconds": 10.0, "binds": "compute", "wall_seconds_serial": 14.0}
    assert combine(3.0, 7.5) == {"wall_seconds": 7.5, "binds": "write", "wall_seconds_serial": 10.5}
    assert combine(5.0, None) == {"wall_seconds": 5.0, "binds": "compute", "wall_seconds_serial": 5.0}


def test_makespan_is_greedy_list_scheduling():
    assert makespan([3, 3, 2, 2, 2], 2) == 7          # slots end at 5 and 7
    assert makespan([10] + [1] * 10, 2) == 10         # one long task bounds the wall time
    assert makespan([1] * 8, 4) == 2
    assert makespan([2, 3], 1) == 5


@pytest.fixture
def cal_with_storage():
    return costmodel.fit(_synthetic(), machine={"cpu": "test"},
                         storage={"write_bytes_per_s": 0.16e9, "path": "/disk", "fsync": True})


def test_writes_bind_a_flat_gram_and_compute_binds_a_conv_one(cal_with_storage):
    fc = project(60000, (784,), "fc3", "cpu", 2, "float64", cal_with_storage, n_test=2000, get=("ntk",),
                 block_size=1024)
    # every kernel's full square (mirrors included), the test rows and the diagonals, at 0.16 GB/s
    assert fc["storage_bytes"] == (60000 ** 2 + 2000 * 60000 + 62000) * 8
    assert fc["write_seconds"] == pytest.approx(fc["storage_bytes"] / 0.16e9)
    assert fc["binds"] == "write" and fc["wall_seconds"] == fc["write_seconds"] > fc["compute_wall_seconds"]
    assert any("write binds" in n for n in fc["notes"])
    conv = project(500, (32, 32, 3), "myrtle5", "cpu", 2, "float64", cal_with_storage, block_size=128)
    assert conv["binds"] == "compute" and conv["wall_seconds"] == conv["compute_wall_seconds"]
    # an explicit bandwidth wins over the calibration's; a bad one is refused
    fast = project(60000, (784,), "fc3", "cpu", 2, "float64", cal_with_storage, n_test=2000, get=("ntk",),
                   block_size=1024, write_bandwidth=1e15)
    assert fast["binds"] == "compute" and fast["write_bytes_per_s"] == 1e15
    with pytest.raises(NtkscaleError, match="bytes per second"):
        project(100, (784,), "fc3", calibration=cal_with_storage, write_bandwidth=0)


def test_write_bandwidth_is_measured_fsynced_and_round_trips(tmp_path):
    assert write_bandwidth(str(tmp_path), nbytes=1 << 20) > 0
    assert not list(tmp_path.iterdir())                           # its file is removed
    assert chunked_write_bandwidth(str(tmp_path), nbytes=1 << 20, chunk_bytes=1 << 18) > 0
    assert not list(tmp_path.iterdir())
    storage = storage_calibration(str(tmp_path), nbytes=1 << 20, repeats=3, chunk_bytes=1 << 18)
    assert storage["fsync"] and storage["path"] == str(tmp_path) and len(storage["all_write_bytes_per_s"]) == 3
    assert storage["write_bytes_per_s"] == sorted(storage["all_write_bytes_per_s"])[1]   # the median
    assert storage["sequential_bytes_per_s"] == sorted(storage["all_sequential_bytes_per_s"])[1]
    assert not list(tmp_path.iterdir())
    cal = costmodel.fit(_synthetic(), machine={"cpu": "test"}, storage=storage)
    path = costmodel.save(cal, tmp_path / "cal.json")
    back = load_calibration(path, "cpu")
    assert back["storage"] == json.loads(json.dumps(storage))
    p = project(20000, (784,), "fc3", calibration=path, block_size=1000)
    assert p["write_bytes_per_s"] == storage["write_bytes_per_s"]
    assert p["calibration"]["storage"]["path"] == str(tmp_path)


def test_model_cli_measures_writes_only_when_the_measurements_have_none(tmp_path):
    meas = tmp_path / "meas.json"
    meas.write_text(json.dumps({"machine": {"cpu": "test"}, "kernel": _synthetic()}))
    out = tmp_path / "cal.json"
    assert costmodel.main([str(meas), "--out", str(out), "--write-dir", str(tmp_path / "disk")]) == 0
    measured = json.loads(out.read_text())["storage"]
    assert measured["path"] == str(tmp_path / "disk") and measured["write_bytes_per_s"] > 0
    meas.write_text(json.dumps({"machine": {"cpu": "test"}, "kernel": _synthetic(),
                                "storage": {"write_bytes_per_s": 1.0e8, "path": "/recorded"}}))
    assert costmodel.main([str(meas), "--out", str(out), "--write-dir", str(tmp_path / "disk")]) == 0
    assert json.loads(out.read_text())["storage"]["path"] == "/recorded"


def test_shipped_calibration_is_package_data(monkeypatch):
    monkeypatch.delenv("NTKSCALE_CALIBRATION_DIR", raising=False)
    path = find_calibration("cpu")
    assert path.parts[-3:] == ("costs", "data", "cpu.json")
    cal = load_calibration(None, "cpu")
    assert cal["kind"] == "cpu" and cal["coefficients"]


def test_project_cli_says_which_binds(tmp_path, capsys):
    from ntkscale.cli.main import main as cli_main

    path = costmodel.save(costmodel.fit(_synthetic(), machine={"cpu": "test"}), tmp_path / "cal.json")
    args = ["project", "--n", "60000", "--n-test", "2000", "--input-shape", "784", "--net", "fc3", "--devices", "2",
            "--get", "ntk", "--block-size", "1024", "--calibration", str(path)]
    assert cli_main(args + ["--write-bandwidth", "1.6e8"]) == 0
    assert "write binds" in capsys.readouterr().out
    assert cli_main(args + ["--write-bandwidth", "1e15", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["binds"] == "compute"
    assert cli_main(args + ["--write-bandwidth", "-1"]) == 2
