"""GPU workers: dask-cuda or the preload, SLURM ``dask cuda worker`` jobs, and bad GPU
configs refused in one line before any work (no CuPy and no device are real here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from ntkscale.cluster.gpu import check_gpus
from ntkscale.cluster.local import cuda_cluster_class, local_cluster_kwargs, start_local_cluster
from ntkscale.cluster.slurm import DASK_CUDA_WORKER_COMMAND, gpu_worker_mode, slurm_cluster_kwargs
from ntkscale.config.cluster import LocalClusterConfig
from ntkscale.config.run import load_config
from ntkscale.config.slurm import parse_slurm_options
from ntkscale.errors import ConfigError, GpuConfigError, PreflightError
from ntkscale.stages.gram import GramPipeline

HAS_CUPY = importlib.util.find_spec("cupy") is not None
HAS_DASK_CUDA = importlib.util.find_spec("dask_cuda") is not None


def _devices(n):
    return lambda: (n, "" if n else "CuPy sees no CUDA device")


def test_local_gpu_cluster_uses_dask_cuda_when_installed_else_the_preload():
    cfg = LocalClusterConfig(gpus=("0", "1"))
    cuda = local_cluster_kwargs(cfg, cuda=True)
    assert cuda["CUDA_VISIBLE_DEVICES"] == "0,1" and cuda["n_workers"] == 2
    assert "processes" not in cuda and "preload" not in cuda
    plain = local_cluster_kwargs(cfg, cuda=False)
    assert plain["preload"] == ["ntkscale.cluster.gpu"] and plain["n_workers"] == 2
    assert plain["env"]["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert (cuda_cluster_class() is not None) == HAS_DASK_CUDA


def test_slurm_gpu_jobs_start_dask_cuda_workers_or_the_preload():
    opts = parse_slurm_options({"kind": "slurm", "gpus_per_job": 4, "processes": 4, "cores": 8,
                                "memory": "64GB"})
    assert opts.gpu_workers == "auto"
    kw = slurm_cluster_kwargs(opts, dask_cuda=True)
    assert kw["worker_command"] == DASK_CUDA_WORKER_COMMAND == "dask cuda worker"
    assert "--preload" not in kw["worker_extra_args"] and "--gres=gpu:4" in kw["job_extra_directives"]
    kw = slurm_cluster_kwargs(opts, dask_cuda=False)
    assert "worker_command" not in kw and kw["worker_extra_args"] == ["--preload", "ntkscale.cluster.gpu"]
    forced = parse_slurm_options({"kind": "slurm", "gpus_per_job": 1, "gpu_workers": "dask-cuda"})
    assert gpu_worker_mode(forced, dask_cuda=False) == "dask-cuda"
    assert gpu_worker_mode(parse_slurm_options({"kind": "slurm"})) is None   # CPU jobs
    with pytest.raises(ConfigError, match="gpu_workers"):
        parse_slurm_options({"kind": "slurm", "gpus_per_job": 1, "gpu_workers": "mps"})


@pytest.mark.skipif(HAS_CUPY, reason="checks the machine without CuPy")
def test_no_cupy_is_one_line_before_any_worker_starts():
    with pytest.raises(GpuConfigError, match="CuPy is not installed") as err:
        check_gpus(("0",), env={})
    assert "\n" not in str(err.value)
    with pytest.raises(GpuConfigError):   # the local cluster refuses before starting a worker
        start_local_cluster(LocalClusterConfig(gpus=("0",)))


def test_absent_devices_and_too_many_gpus_are_refused():
    assert check_gpus(("0", "1"), env={}, devices=_devices(2)) == 2
    with pytest.raises(GpuConfigError, match="no CUDA device"):
        check_gpus(("0",), env={}, devices=_devices(0))
    with pytest.raises(GpuConfigError, match=r"GPU\(s\) 2 .*2 device\(s\) present"):
        check_gpus(("0", "2"), env={}, devices=_devices(2))
    with pytest.raises(GpuConfigError, match="CUDA_VISIBLE_DEVICES='1,3'"):
        check_gpus(("1", "2"), env={"CUDA_VISIBLE_DEVICES": "1,3"}, devices=_devices(2))
    with pytest.raises(GpuConfigError, match="asks for 3 GPUs but 2 are present"):
        check_gpus(("GPU-a", "GPU-b", "GPU-c"), env={}, devices=_devices(2))


def _config(tmp_path: Path, **extra):
    x = np.random.default_rng(0).standard_normal((8, 3))
    np.save(tmp_path / "x.npy", x)
    text = ("data: {train: {x: x.npy}}\nkernel: {layers: [[Dense, {}], [Relu, {}], [Dense, {}]]}\n"
            "store: run.zarr\n" + "".join(f"{k}: {v}\n" for k, v in extra.items()))
    (tmp_path / "run.yaml").write_text(text)
    return tmp_path / "run.yaml"


def test_more_gpus_than_visible_is_a_config_error_store_untouched(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(ConfigError, match=r"asks for 2 GPU\(s\) but 1 are visible"):
        load_config(_config(tmp_path, cluster="{kind: local, gpus: 2}"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    if not HAS_CUPY:   # no CuPy: gpus: all sees no device at all
        with pytest.raises(ConfigError, match=r"asks for all GPU\(s\) but 0 are visible"):
            load_config(_config(tmp_path, cluster="{kind: local, gpus: all}"))
    assert not (tmp_path / "run.zarr").exists()


@pytest.mark.skipif(HAS_CUPY, reason="checks the machine without CuPy")
def test_backend_cupy_without_cupy_is_refused_store_untouched(tmp_path):
    cfg = load_config(_config(tmp_path, backend="cupy"))
    with pytest.raises(PreflightError, match="CuPy is not installed") as err:
        GramPipeline(cfg, progress=False).run()
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run.zarr").exists()


def test_gram_refuses_gpu_ids_this_machine_lacks_before_creating_the_store(tmp_path):
    """An explicit gpus: list on a machine without CuPy or devices: one line, no store."""
    import subprocess
    import sys

    from tests.support.gram import config_dict, make_data, write_config

    cfg = config_dict(make_data(tmp_path), store=str(tmp_path / "g.zarr"),
                      cluster={"kind": "local", "gpus": [0, 1]})
    path = write_config(tmp_path, cfg)
    out = subprocess.run([sys.executable, "-m", "ntkscale.cli", "gram", str(path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "cluster.gpus" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "g.zarr").exists()
