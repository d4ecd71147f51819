"""Hopeless configs are refused by ``plan`` and ``gram`` before any file is written:
free disk, worker memory, task count, worker count, backend, store path."""

import importlib.util
import os
import subprocess

import numpy as np
import pytest

from ntkscale.cli.main import main
from ntkscale.config.run import RunConfig
from ntkscale.errors import PreflightError
from ntkscale.gram.preflight import (MAX_TASKS, PAUSE_FRACTION, WORKER_BASELINE, Facts, check_tasks,
    task_peak_bytes)
from ntkscale.stages.gram import GramPipeline, blocks_per_worker, task_memory
from tests.support.gram import config_dict, make_data, write_config

pytestmark = pytest.mark.timeout(120)


def _pipe(tmp_path, data, **over):
    return GramPipeline(RunConfig.from_mapping(config_dict(data, **over), tmp_path), progress=False)


def test_two_million_rows_against_the_free_disk_is_refused_by_plan_and_gram(tmp_path, capsys):
    x = np.zeros((2_000_000, 1), np.float32)
    np.save(tmp_path / "x.npy", x)
    data = {"x": tmp_path / "x.npy", "y": tmp_path / "y.npy"}
    np.save(data["y"], np.zeros(2_000_000, np.float32))
    cfg = write_config(tmp_path, config_dict(data, block_size=None, dtype="float32",
                                             kernel={"layers": [["Dense", {"out_dim": 1}]], "get": "ntk"}))
    before = sorted(os.listdir(tmp_path))
    assert main(["plan", str(cfg), "--no-calibrate"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ntkscale plan: error: refused before any work: the plan writes 14.6 TiB"), err
    assert "are free at" in err and "put the store on a larger disk" in err
    assert main(["gram", str(cfg)]) == 2
    assert "the plan writes 14.6 TiB" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == before                     # no file written


def test_fixed_block_size_above_the_pause_threshold_is_refused_with_the_numbers(tmp_path):
    data = make_data(tmp_path, n=9000, m=0, d=2)
    with pytest.raises(PreflightError, match=r"block_size 9000 needs ~1\.9 GiB per task x 3 tasks per worker \+ 256\.0 MiB = 5\.9 GiB, "
                                             r"above Dask's pause threshold 819\.2 MiB \(80% of memory_limit 1\.0 GiB\)"):
        _pipe(tmp_path, data, block_size=9000).describe()
    assert not (tmp_path / "run.zarr").exists()


def test_planned_block_size_fits_well_under_the_pause_threshold(tmp_path):
    data = make_data(tmp_path, n=9000, m=0, d=2)
    pipe = _pipe(tmp_path, data, block_size=None)
    info = pipe.describe()
    b = info["block_size"]
    limit = 1 << 30
    peak = task_peak_bytes(3 * b * b * 8, b, pipe.bytes_per_entry(), task_memory(pipe.config) // 2)
    worker = blocks_per_worker(pipe.config) * peak + WORKER_BASELINE
    assert worker <= 0.6 * limit < PAUSE_FRACTION * limit                  # Dask's target, not its pause
    assert [f for f in info["preflight"] if f["check"] == "memory"] == []


def test_many_tasks_warn_and_too_many_are_refused(tmp_path):
    data = make_data(tmp_path, n=340, m=0, d=2)
    info = _pipe(tmp_path, data, block_size=1).describe()
    (warn,) = [f for f in info["preflight"] if f["check"] == "tasks"]
    assert warn["level"] == "warning" and "block size 1 plans 58,310 block tasks" in warn["message"]
    facts = Facts(store=str(tmp_path / "s.zarr"), store_exists=False, bytes_todo=0, files_todo=0, input_bytes=0,
                  tasks=MAX_TASKS + 1, block_size=1, block_size_fixed=True, block_bytes=24,
                  engine_bytes_per_entry=8, engine_budget=1 << 20, local=True)
    (err,) = check_tasks(facts)
    assert err.level == "error" and "plans 1,000,001 block tasks" in err.message


def test_absurd_worker_count_is_refused(tmp_path):
    data = make_data(tmp_path, n=20, m=0, d=2)
    cluster = {"kind": "local", "n_workers": 1_000_000_000, "dashboard_address": ":0"}
    with pytest.raises(PreflightError, match=rf"cluster.n_workers 1,000,000,000 is more than 4x the "
                                             rf"{os.cpu_count()} cores"):
        _pipe(tmp_path, data, cluster=cluster).run(client=object())    # refused before any cluster
    assert not (tmp_path / "run.zarr").exists()


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed here")
def test_cupy_backend_without_cupy_is_refused_by_plan(tmp_path, capsys):
    data = make_data(tmp_path, n=20, m=0, d=2)
    cfg = write_config(tmp_path, config_dict(data, backend="cupy"))
    assert main(["plan", str(cfg), "--no-calibrate"]) == 2
    assert "backend: cupy, but CuPy is not installed; install ntkscale[gpu]" in capsys.readouterr().err
    assert main(["gram", str(cfg)]) == 2
    assert "CuPy is not installed" in capsys.readouterr().err
    assert not (tmp_path / "run.zarr").exists()


def test_store_paths_that_cannot_work(tmp_path, capsys):
    data = make_data(tmp_path, n=20, m=0, d=2)
    cfg = write_config(tmp_path, config_dict(data, store="no/such/dir/run.zarr"))
    assert main(["plan", str(cfg), "--no-calibrate"]) == 2
    err = capsys.readouterr().err
    assert f"the parent directory {tmp_path}/no/such/dir does not exist; create it (mkdir -p" in err
    assert "Traceback" not in err and not (tmp_path / "no").exists()
    (tmp_path / "afile").write_text("x")
    cfg = write_config(tmp_path, config_dict(data, store="afile"))
    assert main(["gram", str(cfg)]) == 2
    assert f"store: {tmp_path}/afile exists and is not a Gram store; choose another path" in capsys.readouterr().err


def test_store_under_a_read_only_parent_is_refused(tmp_path, capsys):
    src, ro = tmp_path / "src", tmp_path / "ro"
    src.mkdir()
    ro.mkdir()
    r = subprocess.run(["mount", "--bind", "-o", "ro", str(src), str(ro)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot make a read-only bind mount here: {r.stderr.strip()}")
    try:
        data = make_data(tmp_path, n=20, m=0, d=2)
        cfg = write_config(tmp_path, config_dict(data, store="ro/run.zarr"))
        assert main(["plan", str(cfg), "--no-calibrate"]) == 2
        assert f"store: cannot create run.zarr in {ro} (not writable" in capsys.readouterr().err
    finally:
        subprocess.run(["umount", str(ro)], check=False)
