"""`cluster:` kinds slurm/kubernetes and the `tls:` section in run configs."""

import numpy as np
import pytest

from ntkscale.cluster.client import OPENERS, open_client
from ntkscale.config.cluster import CLUSTER_PARSERS
from ntkscale.config.run import RunConfig
from ntkscale.errors import ConfigError


@pytest.fixture
def base(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((4, 3)))
    return tmp_path


def _config(base, **extra):
    mapping = {"data": {"train": {"x": "x.npy"}}, "kernel": {"layers": [["Dense", {}]]},
               "store": "run.zarr", **extra}
    return RunConfig.from_mapping(mapping, base_dir=base, source="run.yaml")


def test_every_config_kind_has_a_client_opener():
    """One list of kinds: what the config parses is what ntkscale.cluster can open."""
    assert list(CLUSTER_PARSERS) == list(OPENERS) == ["local", "address", "slurm", "kubernetes"]


def test_slurm_kind_parses_with_issue_keys(base):
    pytest.importorskip("dask_jobqueue")
    cfg = _config(base, cluster={"kind": "slurm", "jobs": 2, "cores": 1, "processes": 1, "memory": "2GB",
                                 "walltime": "01:00:00", "partition": "gpu", "account": "myproj",
                                 "gpus_per_job": 1, "interface": "ib0", "python": "/venv/bin/python",
                                 "extra_sbatch": ["--constraint=h100"]})
    assert cfg.cluster.kind == "slurm" and cfg.cluster.jobs == 2 and cfg.cluster.gpus_per_job == 1
    with pytest.raises(ConfigError, match=r"cluster.jbos: unknown key; did you mean 'jobs'"):
        _config(base, cluster={"kind": "slurm", "jbos": 2})


def test_kubernetes_kind_parses_with_issue_keys(base):
    cfg = _config(base, cluster={"kind": "kubernetes", "image": "ghcr.io/example/ntkscale:0.1",
                                 "namespace": "ml", "n_workers": 4, "gpus_per_worker": 1,
                                 "memory": "32GiB", "cpu": 8, "store_claim": "ntkscale-store",
                                 "store_mount": "/data"})
    assert cfg.cluster.kind == "kubernetes" and cfg.cluster.n_workers == 4
    with pytest.raises(ConfigError, match=r"cluster.image: is required"):
        _config(base, cluster={"kind": "kubernetes"})


def test_tls_section(base, tmp_path):
    cfg = _config(base, tls={"temporary": True})
    assert cfg.tls.temporary
    with pytest.raises(ConfigError, match=r"tls.ca_file: file .* does not exist"):
        _config(base, tls={"ca_file": "missing.pem", "cert": "c.pem", "key": "k.pem"})
    with pytest.raises(ConfigError, match=r"tls.certs: unknown key"):
        _config(base, tls={"certs": "x"})


def test_tls_local_cluster_runs_gram_over_tls(base):
    """`tls: {temporary: true}` puts the local cluster on tls:// and the Gram is the same."""
    from ntkscale.stages.gram import GramPipeline
    from ntkscale.store.gram_store import GramStore
    from ntkscale import stax

    x = np.random.default_rng(0).standard_normal((20, 3))
    np.save(base / "x.npy", x)
    layers = [["Dense", {"W_std": 1.5}], ["Relu", {}], ["Dense", {}]]
    cfg = RunConfig.from_mapping({"data": {"train": {"x": "x.npy"}}, "kernel": {"layers": layers, "get": "ntk"},
                                  "store": "run.zarr", "block_size": 8,
                                  "cluster": {"kind": "local", "n_workers": 1, "processes": False,
                                              "dashboard_address": ":0"},
                                  "tls": {"temporary": True}}, base_dir=base)
    GramPipeline(cfg, progress=False).run()
    stored = np.asarray(GramStore.open(base / "run.zarr").train_array("ntk")[...])
    np.testing.assert_allclose(stored, stax.from_spec(layers)[2](x, None, "ntk"), rtol=1e-12)


# ----------------------------------------------------------------------------- local GPUs


def test_local_gpus_parse_and_refusals(base, monkeypatch):
    cfg = _config(base, cluster={"kind": "local", "gpus": [2, "5"]})
    assert cfg.cluster.gpus == ("2", "5") and cfg.cluster.n_workers == 2 and cfg.cluster.slots == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6,7")
    assert _config(base, cluster={"kind": "local", "gpus": "all"}).cluster.gpus == ("4", "6", "7")
    assert _config(base, cluster={"kind": "local", "gpus": 2}).cluster.gpus == ("4", "6")
    assert _config(base, cluster={"kind": "local"}).cluster.gpus == ()
    with pytest.raises(ConfigError, match=r"cluster.gpus: asks for 4 GPU\(s\) but 3 are visible"):
        _config(base, cluster={"kind": "local", "gpus": 4})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ConfigError, match=r"cluster.gpus: asks for all GPU\(s\) but 0 are visible.*ntkscale\[gpu\]"):
        _config(base, cluster={"kind": "local", "gpus": "all"})
    with pytest.raises(ConfigError, match=r"cluster.n_workers: is 3 but gpus names 2 device\(s\)"):
        _config(base, cluster={"kind": "local", "gpus": [0, 1], "n_workers": 3})
    with pytest.raises(ConfigError, match=r"cluster.gpus: lists a device twice"):
        _config(base, cluster={"kind": "local", "gpus": [0, 0]})
    with pytest.raises(ConfigError, match=r"cluster.gpus: must be 'all', a number of GPUs or a list"):
        _config(base, cluster={"kind": "local", "gpus": [-1]})
    with pytest.raises(ConfigError, match=r"cluster.processes: gpus needs worker processes"):
        _config(base, cluster={"kind": "local", "gpus": [0], "processes": False})


def test_local_gpu_workers_each_see_their_own_device(base):
    """Real worker processes: worker i keeps only gpus[i] in CUDA_VISIBLE_DEVICES
    (set by the preload before anything could initialise CUDA). The cluster is
    started from the same keyword arguments open_client uses, without its GPU
    check (which refuses these ids on a machine without GPUs)."""
    from distributed import Client, LocalCluster

    from ntkscale.cluster.local import local_cluster_kwargs

    cfg = _config(base, cluster={"kind": "local", "gpus": [3, 5], "memory_limit": "1GiB",
                                 "dashboard_address": ":0"})

    def visible():
        import os
        return os.environ.get("CUDA_VISIBLE_DEVICES")

    with LocalCluster(**local_cluster_kwargs(cfg.cluster)) as cluster, Client(cluster) as client:
        client.wait_for_workers(2, timeout=60)
        seen = client.run(visible)
        names = {w["name"] for w in client.scheduler_info()["workers"].values()}
    assert sorted(seen.values()) == ["3", "5"] and names == {0, 1}


def test_local_workers_drop_the_heartbeat_record_of_a_closed_scheduler():
    """A local cluster's workers filter distributed's heartbeat-loss record (logged
    when the command closes the scheduler under a running task), and only it."""
    import logging

    from ntkscale.cluster.local import HEARTBEAT_LOST, open_local
    from ntkscale.config.cluster import LocalClusterConfig

    def probe():
        log = logging.getLogger("distributed.worker")
        keep = [bool(log.filter(logging.LogRecord(log.name, logging.ERROR, __file__, 1, msg, None, None)))
                for msg in (HEARTBEAT_LOST + ".", "Compute Failed")]
        return keep

    cfg = LocalClusterConfig(n_workers=2, threads_per_worker=1, io_threads=0, processes=True,
                             dashboard_address=":0")
    with open_local(cfg) as client:
        got = client.run(probe)
    assert len(got) == 2 and all(v == [False, True] for v in got.values())
