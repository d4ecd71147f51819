"""ntkscale.cluster offline: option validation (ntkscale.config.slurm/kubernetes/tls), SLURM
job scripts, TLS, the store probe, GPU pinning."""

from __future__ import annotations

import pytest

from ntkscale.cluster.gpu import device_for_worker
from ntkscale.cluster.probe import check_store_visible, probe_store
from ntkscale.cluster.slurm import slurm_cluster_kwargs
from ntkscale.cluster.tls import security_from_tls
from ntkscale.config.kubernetes import k8s_quantity, parse_kubernetes_options
from ntkscale.config.slurm import parse_slurm_options
from ntkscale.config.tls import parse_tls_options
from ntkscale.errors import ConfigError

SLURM = {"kind": "slurm", "jobs": 2, "cores": 4, "processes": 2, "memory": "16GB",
         "walltime": "02:00:00", "partition": "gpu", "account": "myproj", "gpus_per_job": 2,
         "interface": "ib0", "python": "/opt/venv/bin/python",
         "extra_sbatch": ["--constraint=h100"]}


# ----------------------------------------------------------------------------- SLURM


@pytest.mark.parametrize("change,key,words", [
    ({"jbos": 2}, "cluster.jbos", "did you mean 'jobs'"),
    ({"processes": 8}, "cluster.processes", "cores is 4"),
    ({"gpus_per_job": 1}, "cluster.processes", "processes: 1"),
    ({"walltime": 3600.5}, "cluster.walltime", "01:00:00"),
    ({"walltime": "1:2:3:4"}, "cluster.walltime", "SLURM time"),
    ({"memory": "lots"}, "cluster.memory", "memory size"),
    ({"memory": "100MB"}, "cluster.memory", "128 MiB"),
    ({"extra_sbatch": "--constraint=h100"}, "cluster.extra_sbatch", "list of strings"),
    ({"extra_sbatch": ["constraint=h100"]}, "cluster.extra_sbatch", "sbatch option"),
    ({"jobs": 0}, "cluster.jobs", ">= 1"),
    ({"kind": "kubernetes"}, "cluster.kind", "'slurm'"),
])
def test_slurm_errors_name_the_key(change, key, words):
    with pytest.raises(ConfigError) as info:
        parse_slurm_options({**SLURM, **change}, source="run.yaml")
    message = str(info.value)
    assert message.startswith(f"run.yaml: {key}:") and words in message, message


@pytest.mark.parametrize("walltime", ["30", "30:00", "01:00:00", "2-00", "2-12:00", "1-12:00:00"])
def test_slurm_walltimes(walltime):
    assert parse_slurm_options({"walltime": walltime}).walltime == walltime


def test_slurm_defaults_and_kwargs():
    opts = parse_slurm_options({"kind": "slurm"})
    assert (opts.jobs, opts.cores, opts.processes, opts.memory, opts.gpus_per_job) == \
        (1, 1, 1, "4GB", 0)
    kwargs = slurm_cluster_kwargs(opts)
    assert kwargs["job_extra_directives"] == [] and kwargs["worker_extra_args"] == []
    assert "queue" not in kwargs and "account" not in kwargs
    assert "export NUMBA_NUM_THREADS=1" in kwargs["job_script_prologue"]
    assert kwargs["scheduler_options"] == {"dashboard_address": ":8787"}


def test_slurm_job_script():
    """The job script dask-jobqueue writes for the issue's example options."""
    pytest.importorskip("dask_jobqueue")
    from dask_jobqueue import SLURMCluster  # noqa: PLC0415

    opts = parse_slurm_options({**SLURM, "dashboard_address": ":0", "interface": None})
    assert opts.slots == 8
    with SLURMCluster(**slurm_cluster_kwargs(opts)) as cluster:
        script = cluster.job_script()
    for line in ("#SBATCH -p gpu", "#SBATCH -A myproj", "#SBATCH --cpus-per-task=4",
                 "#SBATCH -t 02:00:00", "#SBATCH --gres=gpu:2", "#SBATCH --constraint=h100",
                 "#SBATCH -J ntkscale-worker", "export NTKSCALE_WORKERS_PER_JOB=2",
                 "export NUMBA_NUM_THREADS=1"):
        assert line in script, (line, script)
    assert "/opt/venv/bin/python -m distributed.cli.dask_worker" in script
    assert "--nworkers 2" in script and "--nthreads 2" in script
    assert "--preload ntkscale.cluster.gpu" in script


# ----------------------------------------------------------------------------- Kubernetes

K8S = {"kind": "kubernetes", "image": "registry.example.com/ntkscale:0.1.0",
       "namespace": "ntkscale", "n_workers": 4, "gpus_per_worker": 1, "memory": "32GiB",
       "cpu": 8, "store_claim": "ntkscale-store", "store_mount": "/data"}


def test_kubernetes_options():
    opts = parse_kubernetes_options(K8S)
    assert (opts.memory, opts.cpu, opts.threads_per_worker, opts.slots) == ("32Gi", "8", 1, 4)
    cpu = parse_kubernetes_options({"image": "x", "cpu": 6, "gpus_per_worker": 0})
    assert cpu.threads_per_worker == 6 and cpu.memory == "8Gi"
    assert parse_kubernetes_options({"image": "x", "cpu": "1500m"}).threads_per_worker == 1
    assert [k8s_quantity(n) for n in (2**35, 3 * 10**9, 1536 * 2**20, 1001)] == \
        ["32Gi", "3G", "1536Mi", "1001"]


@pytest.mark.parametrize("change,key,words", [
    ({"image": None}, "cluster.image", "required"),
    ({"gpus_per_worker": 2}, "cluster.gpus_per_worker", "one worker per GPU"),
    ({"name": "My_Cluster"}, "cluster.name", "DNS label"),
    ({"namespace": "x" * 64}, "cluster.namespace", "DNS label"),
    ({"memory": "a lot"}, "cluster.memory", "memory size"),
    ({"cpu": 0}, "cluster.cpu", "CPU count"),
    ({"cpu": "eight"}, "cluster.cpu", "CPU count"),
    ({"store_mount": "data"}, "cluster.store_mount", "absolute"),
    ({"store_claim": "Store!"}, "cluster.store_claim", "PersistentVolumeClaim"),
    ({"env": {"A": 1}}, "cluster.env", "quote numbers"),
    ({"image_pull_policy": "always"}, "cluster.image_pull_policy", "IfNotPresent"),
    ({"tolerations": {"key": "x"}}, "cluster.tolerations", "list"),
    ({"n_worker": 3}, "cluster.n_worker", "did you mean 'n_workers'"),
])
def test_kubernetes_errors_name_the_key(change, key, words):
    options = {k: v for k, v in {**K8S, **change}.items() if v is not None}
    with pytest.raises(ConfigError) as info:
        parse_kubernetes_options(options, source="run.yaml")
    message = str(info.value)
    assert message.startswith(f"run.yaml: {key}:") and words in message, message


# ----------------------------------------------------------------------------- TLS


def test_tls_errors_name_the_key(tmp_path):
    (tmp_path / "ca.pem").write_text("x")
    with pytest.raises(ConfigError, match=r"tls\.ca_file: file .*missing\.pem does not exist"):
        parse_tls_options({"ca_file": "missing.pem", "cert": "ca.pem"}, tmp_path)
    with pytest.raises(ConfigError, match=r"tls\.ca_file: is required"):
        parse_tls_options({"cert": "ca.pem"}, tmp_path)
    with pytest.raises(ConfigError, match=r"tls\.scheduler_cert: no certificate for the scheduler"):
        parse_tls_options({"ca_file": "ca.pem"}, tmp_path)
    with pytest.raises(ConfigError, match=r"tls\.temporary: .*drop ca_file"):
        parse_tls_options({"temporary": True, "ca_file": "ca.pem"}, tmp_path)
    with pytest.raises(ConfigError, match=r"tls\.min_version"):
        parse_tls_options({"ca_file": "ca.pem", "cert": "ca.pem", "min_version": 1.1}, tmp_path)
    with pytest.raises(ConfigError, match=r"tls\.certfile: unknown key"):
        parse_tls_options({"certfile": "ca.pem"}, tmp_path)


def test_tls_files_map_onto_security_and_connect(tmp_path):
    """Certificate files -> Security; a TLS-only cluster accepts a client that uses it."""
    import ssl  # noqa: PLC0415

    from distributed import Client, LocalCluster  # noqa: PLC0415
    from distributed.security import Security  # noqa: PLC0415

    pytest.importorskip("cryptography")
    made = Security.temporary()  # PEM text: written to files as a user's certificates would be
    (tmp_path / "ca.pem").write_text(made.tls_ca_file)
    (tmp_path / "node.pem").write_text(made.tls_scheduler_cert)
    (tmp_path / "node-key.pem").write_text(made.tls_scheduler_key)
    security = security_from_tls({"ca_file": "ca.pem", "cert": "node.pem", "key": "node-key.pem",
                                  "min_version": "1.3"}, tmp_path)
    assert security.require_encryption is True
    assert security.tls_ca_file == str(tmp_path / "ca.pem")
    for role in ("scheduler", "worker", "client"):
        assert getattr(security, f"tls_{role}_cert") == str(tmp_path / "node.pem")
        assert getattr(security, f"tls_{role}_key") == str(tmp_path / "node-key.pem")
    assert security.tls_min_version == ssl.TLSVersion.TLSv1_3

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tls://",
                      security=security, dashboard_address=None) as cluster:
        assert cluster.scheduler_address.startswith("tls://")
        with Client(cluster, security=security) as client:
            assert client.submit(sum, [1, 2, 3]).result(timeout=30) == 6
    assert security_from_tls(None) is None
    assert security_from_tls({"temporary": True}).tls_ca_file


# ----------------------------------------------------------------------------- GPU pinning


@pytest.mark.parametrize("name,env,expected", [
    ("SLURMCluster-3-0", {"CUDA_VISIBLE_DEVICES": "2,3"}, "2"),
    ("SLURMCluster-3-1", {"CUDA_VISIBLE_DEVICES": "2,3"}, "3"),
    ("SLURMCluster-3-1", {}, "1"),
    ("SLURMCluster-3-2", {"CUDA_VISIBLE_DEVICES": "2,3"}, None),
    ("SLURMCluster-3-2", {"NTKSCALE_WORKERS_PER_JOB": "2"}, None),
    ("worker", {"CUDA_VISIBLE_DEVICES": "0,1"}, None),
    ("1", {"CUDA_VISIBLE_DEVICES": "3,5"}, "5"),          # LocalCluster workers are named 0, 1, ...
    ("-1", {"CUDA_VISIBLE_DEVICES": "3,5"}, None),
])
def test_device_for_worker(name, env, expected):
    assert device_for_worker(name, env) == expected


# ----------------------------------------------------------------------------- shared store


def test_check_store_visible(tmp_path):
    from distributed import Client, LocalCluster  # noqa: PLC0415

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        assert check_store_visible(client, tmp_path) == 2
    assert list(tmp_path.iterdir()) == []  # probes removed
    assert check_store_visible(None, "s3://bucket/run.zarr") == 0


def test_check_store_visible_names_the_blind_workers(tmp_path):
    class Elsewhere:
        """Workers on other machines: one sees another filesystem, one sees nothing."""

        def run(self, fn, probe, token):
            other = tmp_path / "other"
            other.mkdir()
            (other / "p").write_text("not the token")
            return {"tcp://a:1": fn(probe, token),
                    "tcp://b:1": fn(str(tmp_path / "missing" / "p"), token),
                    "tcp://c:1": fn(str(other / "p"), token)}

    with pytest.raises(ConfigError) as info:
        check_store_visible(Elsewhere(), tmp_path)
    message = str(info.value)
    assert "2 of 3 workers cannot use it" in message
    assert "tcp://b:1" in message and "does not exist" in message
    assert "tcp://c:1" in message and "other content" in message
    assert "ReadWriteMany" in message
    assert probe_store(str(tmp_path / "nothing"), "t").endswith("unmounted filesystem)")
