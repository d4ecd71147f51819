"""Run configuration: typed, frozen, every bad key named before any work."""

import dataclasses
import json
import subprocess
import sys

import pytest

from ntkscale.config.cluster import AddressClusterConfig, LocalClusterConfig, auto_io_threads
from ntkscale.config.run import RunConfig, load_config
from ntkscale.config.sections import parse_memory
from ntkscale.errors import ConfigError
from tests.support.gram import config_dict, make_data, write_config


@pytest.fixture
def data(tmp_path):
    return make_data(tmp_path, n=10, m=4)


def test_valid_yaml_resolves_paths_relative_to_the_config(tmp_path, data):
    cfg = load_config(write_config(tmp_path, config_dict(data)))
    assert cfg.data.train.x == str(data["x"]) and cfg.data.test.y == str(data["yt"])
    assert cfg.store == str(tmp_path / "run.zarr")
    assert cfg.kernel.get == ("nngp", "ntk") and cfg.dtype == "float64" and cfg.block_size == 16
    assert cfg.cluster == LocalClusterConfig(n_workers=2, threads_per_worker=1, memory_limit=1 << 30,
                                             dashboard_address=":0")
    assert cfg.kernel.kernel_fn().spec == cfg.kernel.layers


def test_json_config_and_defaults(tmp_path, data):
    raw = config_dict(data, block_size=None, dtype=None, cluster=None)
    raw["kernel"]["get"] = "ntk"
    raw["data"].pop("test")
    cfg = load_config(write_config(tmp_path, raw, "c.json"))
    assert cfg.block_size is None and cfg.dtype == "float64" and cfg.backend == "auto"
    assert cfg.kernel.get == ("ntk",) and cfg.data.test is None
    assert cfg.cluster == LocalClusterConfig()


def test_get_order_is_canonical(tmp_path, data):
    raw = config_dict(data)
    raw["kernel"]["get"] = ["ntk", "nngp"]
    assert RunConfig.from_mapping(raw, tmp_path).kernel.get == ("nngp", "ntk")


def test_config_is_frozen(tmp_path, data):
    cfg = load_config(write_config(tmp_path, config_dict(data)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.dtype = "float32"
    assert cfg.replace(dtype="float32").dtype == "float32"


@pytest.mark.parametrize("mutate, needle", [
    (lambda c: c.update(blocksize=3), "blocksize: unknown key; did you mean 'block_size'?"),
    (lambda c: c["cluster"].update(n_worker=3), "cluster.n_worker: unknown key; did you mean 'n_workers'?"),
    (lambda c: c["data"]["train"].update(z="a.npy"), "data.train.z: unknown key"),
    (lambda c: c["kernel"].update(layer=[]), "kernel.layer: unknown key"),
    (lambda c: c["data"]["train"].update(x="nope.npy"), "data.train.x: file not found"),
    (lambda c: c.update(dtype="float16"), "dtype: must be one of float32, float64"),
    (lambda c: c["kernel"].update(get="both"), "kernel.get: must be 'nngp', 'ntk'"),
    (lambda c: c["kernel"].update(layers=[["Dense", {"W_sd": 1}]]), "kernel.layers: Dense got unknown keyword"),
    (lambda c: c["kernel"].update(layers=[["Relux", {}]]), "kernel.layers: unknown layer 'Relux'"),
    (lambda c: c["cluster"].update(memory_limit="4 jiggabytes"), "cluster.memory_limit: must be a memory size"),
    (lambda c: c.update(block_size=0), "block_size: must be an integer >= 1"),
    (lambda c: c.update(cluster={"kind": "slurm", "walltime": 5}), "cluster.walltime: must be a SLURM time"),
    (lambda c: c.update(cluster={"kind": "yarn"}), "cluster.kind: unknown kind 'yarn'"),
    (lambda c: c.update(cluster={"kind": "address"}), "cluster: give exactly one of 'address'"),
    (lambda c: c.update(solver=[1, 2]), "solver: must be a mapping"),
    (lambda c: c.pop("store"), "store: is required"),
    (lambda c: c.pop("data"), "data: is required"),
])
def test_bad_config_names_the_key(tmp_path, data, mutate, needle):
    raw = config_dict(data)
    mutate(raw)
    path = write_config(tmp_path, raw)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert needle in str(err.value)
    assert str(path) in str(err.value)


def test_address_cluster_and_scheduler_file(tmp_path, data):
    raw = config_dict(data, cluster={"kind": "address", "address": "tcp://10.0.0.1:8786"})
    assert RunConfig.from_mapping(raw, tmp_path).cluster == AddressClusterConfig(address="tcp://10.0.0.1:8786")
    raw["cluster"] = {"kind": "address", "scheduler_file": "sched.json", "slots": 64}
    cfg = RunConfig.from_mapping(raw, tmp_path)
    assert cfg.cluster.scheduler_file == str(tmp_path / "sched.json") and cfg.cluster.slots == 64


def test_solver_and_task_sections_are_typed_and_frozen(tmp_path, data):
    # the sections are validated by ntkscale.config.solver (more in tests/stages/test_run.py, test_solver_section_is_typed_and_checked)
    raw = config_dict(data, solver={"method": "cg", "tol": 1e-6, "ridge": [0.1, 1.0]}, task="regression")
    cfg = RunConfig.from_mapping(raw, tmp_path)
    assert cfg.solver.method == "cg" and cfg.solver.ridge == (0.1, 1.0) and cfg.task == "regression"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.solver.method = "x"
    out = cfg.to_dict()
    assert out["solver"]["ridge"] == [0.1, 1.0] and out["task"] == "regression"
    json.dumps(out)


def test_memory_sizes_are_dask_style():
    assert parse_memory("4GiB") == 4 << 30 and parse_memory("2GB") == 2_000_000_000
    assert parse_memory(1000) == 1000
    with pytest.raises(ConfigError):
        parse_memory("-1GB")


@pytest.mark.parametrize("text", ["100", "100 MB", "100M", "5kB", "5.4 kB", "1kiB", "1e6", "1e6 kB",
                                  "MB", "4GiB", "2gb", "1.5 TiB", "3 Pi", "7b"])
def test_memory_sizes_match_dask_parse_bytes(text):
    from dask.utils import parse_bytes

    assert parse_memory(text) == parse_bytes(text)


@pytest.mark.parametrize("value", ["5 foos", "lots", "1e6 kBB", None, [1], True, float("nan"),
                                   float("inf"), 0, "0GB"])
def test_bad_memory_sizes_are_config_errors(value):
    with pytest.raises(ConfigError, match="memory size"):
        parse_memory(value)


def test_config_imports_no_dask():
    """Parsing a config with every section (slurm, kubernetes, tls, memory sizes) imports
    neither dask nor distributed: config/ validates only."""
    code = """if True:
        import sys, tempfile, pathlib
        import numpy as np
        import ntkscale.config
        from ntkscale.config import RunConfig
        tmp = pathlib.Path(tempfile.mkdtemp())
        np.save(tmp / "x.npy", np.ones((4, 3)))
        base = {"data": {"train": {"x": "x.npy"}}, "kernel": {"layers": [["Dense", {}]]},
                "store": "run.zarr", "memory_budget": "1GiB", "tls": {"temporary": True}}
        for cluster in ({"kind": "local", "memory_limit": "2GB"}, {"kind": "address", "address": "tcp://h:1"},
                        {"kind": "slurm", "memory": "8GB"}, {"kind": "kubernetes", "image": "i"}):
            RunConfig.from_mapping({**base, "cluster": cluster}, base_dir=tmp)
        print([m for m in sys.modules if m.split(".")[0] in ("dask", "distributed")])
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_empty_and_malformed_files(tmp_path):
    (tmp_path / "e.yaml").write_text("")
    with pytest.raises(ConfigError, match="empty"):
        load_config(tmp_path / "e.yaml")
    (tmp_path / "b.yaml").write_text("data: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "b.yaml")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")



def test_io_threads_auto_is_two_writers_per_worker(tmp_path, data):
    # fsync'd O_DIRECT writes wait for the disk, not a core: a writer per worker even when
    # every core computes (issue 14: 7.3 s vs 11.3 s block phase, 2 workers on 2 cores)
    assert auto_io_threads(2, 1, cores=2) == 2
    assert auto_io_threads(None, 1, cores=16) == 2
    raw = config_dict(data, cluster={"kind": "local", "n_workers": 1, "io_threads": "auto"})
    assert RunConfig.from_mapping(raw, tmp_path).cluster.io_threads == auto_io_threads(1, 1)
    raw["cluster"]["io_threads"] = 0
    assert RunConfig.from_mapping(raw, tmp_path).cluster.io_threads == 0
    raw["cluster"]["io_threads"] = "many"
    with pytest.raises(ConfigError, match="cluster.io_threads: must be 'auto' or an integer >= 0"):
        RunConfig.from_mapping(raw, tmp_path)


def test_solver_method_auto_is_the_default_and_parses(tmp_path, data):
    from ntkscale.config.solver import SolverConfig, parse_solver

    assert SolverConfig().method == "auto"
    assert parse_solver({"ridge": 1e-6}).method == "auto"          # the key left out
    assert parse_solver({"method": "auto"}).method == "auto"
    assert parse_solver({"method": "cholesky"}).method == "cholesky"  # explicit ones unchanged
    cfg = RunConfig.from_mapping(config_dict(data, solver={"method": "auto", "ridge_path": "per_ridge"}), tmp_path)
    assert (cfg.solver.method, cfg.solver.ridge_path) == ("auto", "per_ridge")
    with pytest.raises(ConfigError, match="solver.method"):
        RunConfig.from_mapping(config_dict(data, solver={"method": "automatic"}), tmp_path)
