"""A real SLURM run: dask-jobqueue workers in SLURM jobs compute a Gram.

Needs a SLURM whose default partition is up; on one machine start one with
``deploy/slurm/local-slurm.sh up`` (``.ci/slurm.sh`` does up, this suite, down).
Run with ``pytest -m slurm``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid

import numpy as np
import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(600)]

dask_jobqueue = pytest.importorskip("dask_jobqueue")
psutil = pytest.importorskip("psutil")

from tests.support.paths import ROOT  # noqa: E402
from tests.support.processes import wait_for, worker_processes  # noqa: E402

from ntkscale import stax  # noqa: E402
from ntkscale.cluster.probe import check_store_visible  # noqa: E402
from ntkscale.cluster.slurm import make_slurm_cluster  # noqa: E402
from ntkscale.cluster.tls import security_from_tls  # noqa: E402
from ntkscale.config.slurm import parse_slurm_options  # noqa: E402

HOW_TO_START = "run `deploy/slurm/local-slurm.sh up` (as root) to boot a local single-node SLURM"


def _run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30).stdout


@pytest.fixture(scope="module")
def partition() -> str:
    """The default partition, which must be up (else the suite is skipped)."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        pytest.skip(f"SLURM client commands (sinfo, sbatch) are not installed; {HOW_TO_START}")
    try:
        lines = _run("sinfo", "-h", "-o", "%P %a").split()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        out = getattr(exc, "stderr", "") or ""
        pytest.skip(f"sinfo failed ({out.strip() or exc}); {HOW_TO_START}")
    pairs = list(zip(lines[::2], lines[1::2]))
    up = [name for name, avail in pairs if avail == "up"]
    if not up:
        pytest.skip(f"no SLURM partition is up (sinfo: {pairs}); {HOW_TO_START}")
    default = [name for name in up if name.endswith("*")]
    return (default or up)[0].rstrip("*")


def _queued(job_name: str) -> set:
    return set(_run("squeue", "-h", "-n", job_name, "-o", "%i").split())


def _worker_processes(scheduler_address: str) -> list:
    """dask-jobqueue worker processes of the scheduler at ``scheduler_address``."""
    return worker_processes(contains=("dask_worker", scheduler_address))


def _gram_rows(spec_json: str, x_rows: np.ndarray, x_all: np.ndarray):
    """One row block of the NTK Gram, and the SLURM job it ran in (runs on a worker)."""
    import os  # noqa: PLC0415

    from ntkscale import stax as worker_stax  # noqa: PLC0415

    kernel_fn = worker_stax.kernel_fn_from_spec(spec_json)
    block = np.asarray(kernel_fn(x_rows, x_all, "ntk"))
    return os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_JOB_NAME"), block


def _logs(directory) -> str:
    out = []
    for path in sorted(directory.glob("*")):
        out.append(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}")
    return "\n".join(out) or "(no job logs)"


def test_gram_blocks_run_inside_slurm_jobs(partition, tmp_path):
    from distributed import Client  # noqa: PLC0415

    job_name = f"ntks-{uuid.uuid4().hex[:8]}"
    logs = tmp_path / "logs"
    options = parse_slurm_options({
        "kind": "slurm", "jobs": 2, "cores": 1, "processes": 1, "memory": "1GB",
        "walltime": "00:15:00", "partition": partition, "job_name": job_name,
        "python": sys.executable, "local_directory": str(tmp_path / "scratch"),
        "log_directory": str(logs), "dashboard_address": ":0",
    })
    kernel_fn = stax.serial(stax.Dense(512, W_std=1.5, b_std=0.1), stax.Relu(),
                            stax.Dense(1, W_std=1.5, b_std=0.1))[2]
    x = np.random.default_rng(0).normal(size=(30, 4))
    expected = np.asarray(kernel_fn(x, x, "ntk"))

    cluster = make_slurm_cluster(options)
    address = cluster.scheduler_address
    try:
        assert "#SBATCH -p " + partition in cluster.job_script()
        with Client(cluster) as client:
            try:
                client.wait_for_workers(2, timeout=180)
            except Exception as exc:  # noqa: BLE001 - show the jobs' own logs
                pytest.fail(f"SLURM workers did not join ({exc}); squeue: {_run('squeue')}\n"
                            f"{_logs(logs)}")
            submitted = {job.job_id for job in cluster.workers.values()}
            assert len(submitted) == 2 and None not in submitted, submitted
            assert _queued(job_name) == submitted  # squeue lists exactly the jobs we submitted
            assert check_store_visible(client, tmp_path) == 2  # the shared-store check, for real

            starts = list(range(0, len(x), 6))
            futures = client.map(_gram_rows, [kernel_fn.spec_json] * len(starts),
                                 [x[i:i + 6] for i in starts], [x] * len(starts), pure=False)
            results = client.gather(futures)
            ran_in = {job_id for job_id, _, _ in results}
            assert None not in ran_in, "a block ran outside any SLURM job"
            assert ran_in <= submitted, (ran_in, submitted)
            assert {name for _, name, _ in results} == {job_name}
            gram = np.concatenate([block for _, _, block in results], axis=0)
            np.testing.assert_allclose(gram, expected, rtol=1e-12, atol=1e-12)
    finally:
        cluster.close()

    wait_for(lambda: not _queued(job_name), timeout=60, every=0.5,
             what=f"the jobs {job_name} to leave the queue after close")
    wait_for(lambda: not _worker_processes(address), timeout=60, every=0.5,
             what=f"the dask worker processes of {address} to exit")


def _ntkscale() -> str:
    here = os.path.join(os.path.dirname(sys.executable), "ntkscale")
    return here if os.path.exists(here) else (shutil.which("ntkscale") or "ntkscale")


def _driver_command() -> str:
    """`run` once the CLI has it; `gram` (the Gram step alone) until then."""
    probe = subprocess.run([_ntkscale(), "run", "--help"], capture_output=True, text=True)
    return "run" if probe.returncode == 0 else "gram"


def test_sbatch_script_runs_a_whole_job(partition, tmp_path):
    """deploy/slurm/ntkscale-job.sbatch: scheduler, workers and driver in one allocation."""
    import yaml  # noqa: PLC0415


    script = (ROOT / "deploy" / "slurm" / "ntkscale-job.sbatch").read_text()
    # The local SLURM has no GPUs: drop the GPU default (a user does the same on CPU nodes).
    job = tmp_path / "job.sbatch"
    job.write_text("\n".join(line for line in script.splitlines()
                             if "--gpus-per-node" not in line) + "\n")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 5))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", rng.normal(size=40))
    layers = [["Dense", {"W_std": 1.5, "b_std": 0.1}], ["Relu", {}], ["Dense", {"W_std": 1.5}]]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({
        "data": {"train": {"x": "x.npy", "y": "y.npy"}},
        "kernel": {"layers": layers, "get": "ntk"}, "store": "run.zarr", "block_size": 16,
        "cluster": {"kind": "address", "scheduler_file": "scheduler.json"}}))
    env = dict(os.environ, NTKSCALE_COMMAND=_driver_command(),
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    out = tmp_path / "job.out"
    done = subprocess.run(
        ["sbatch", "--wait", f"--partition={partition}", "--nodes=1", "--ntasks-per-node=1",
         "--cpus-per-task=1", "--mem=2G", "--time=00:10:00", f"--output={out}",
         str(job), str(tmp_path / "config.yaml")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=480)
    log = out.read_text(errors="replace") if out.exists() else "(no job output)"
    assert done.returncode == 0, f"{done.stdout}{done.stderr}\n{log[-4000:]}"
    assert "driver exited with status 0" in log
    assert not (tmp_path / "scheduler.json").exists()  # cleaned up

    subprocess.run([_ntkscale(), "export", str(tmp_path / "run.zarr"),
                    "train", "-o", str(tmp_path / "K.npy")], check=True, capture_output=True)
    kernel_fn = stax.serial(stax.Dense(1, W_std=1.5, b_std=0.1), stax.Relu(),
                            stax.Dense(1, W_std=1.5))[2]
    np.testing.assert_allclose(np.load(tmp_path / "K.npy"), kernel_fn(x, x, "ntk"),
                               rtol=1e-12, atol=1e-12)
    job_id = done.stdout.split()[-1]
    wait_for(lambda: job_id not in _run("squeue", "-h", "-o", "%i").split(), timeout=30, every=0.5,
             what=f"job {job_id} to leave the queue")


def test_tls_between_driver_and_slurm_workers(partition, tmp_path):
    """`tls:` files -> Security -> a tls:// scheduler whose SLURM workers use the certificates."""
    from distributed import Client  # noqa: PLC0415
    from distributed.security import Security  # noqa: PLC0415

    pytest.importorskip("cryptography")
    made = Security.temporary()
    for name, text in (("ca.pem", made.tls_ca_file), ("node.pem", made.tls_scheduler_cert),
                       ("node-key.pem", made.tls_scheduler_key)):
        (tmp_path / name).write_text(text)
    security = security_from_tls({"ca_file": "ca.pem", "cert": "node.pem",
                                  "key": "node-key.pem"}, tmp_path)
    job_name = f"ntks-tls-{uuid.uuid4().hex[:8]}"
    options = parse_slurm_options({
        "kind": "slurm", "jobs": 1, "cores": 1, "memory": "1GB", "walltime": "00:10:00",
        "partition": partition, "job_name": job_name, "python": sys.executable,
        "log_directory": str(tmp_path / "logs"), "dashboard_address": ":0"})
    cluster = make_slurm_cluster(options, security=security)
    try:
        assert cluster.scheduler_address.startswith("tls://")
        assert "--tls-ca-file" in cluster.job_script()
        with Client(cluster, security=security) as client:
            client.wait_for_workers(1, timeout=180)
            assert all(addr.startswith("tls://") for addr in client.scheduler_info()["workers"])
            job_id = client.submit(lambda: __import__("os").environ.get("SLURM_JOB_ID"),
                                   pure=False).result(timeout=60)
            assert job_id in {job.job_id for job in cluster.workers.values()}
    finally:
        cluster.close()
    wait_for(lambda: not _queued(job_name), timeout=60, every=0.5, what=f"the jobs {job_name} to leave the queue")


def test_gram_pipeline_with_cluster_kind_slurm(partition, tmp_path):
    """`cluster: {kind: slurm}` in a run config: the Gram pipeline submits its own
    SLURM jobs, computes every block there, and equals the in-memory kernel."""
    from ntkscale.config.run import RunConfig  # noqa: PLC0415
    from ntkscale.stages.gram import GramPipeline  # noqa: PLC0415
    from ntkscale.store.gram_store import GramStore  # noqa: PLC0415

    rng = np.random.default_rng(3)
    x = rng.standard_normal((50, 6))
    np.save(tmp_path / "x.npy", x)
    job_name = f"ntkscale-pipe-{uuid.uuid4().hex[:6]}"
    layers = [["Dense", {"W_std": 1.4, "b_std": 0.1}], ["Relu", {}], ["Dense", {"W_std": 1.4}]]
    config = RunConfig.from_mapping({
        "data": {"train": {"x": "x.npy"}},
        "kernel": {"layers": layers, "get": "ntk"},
        "store": "run.zarr", "block_size": 16, "dtype": "float64",
        "cluster": {"kind": "slurm", "jobs": 1, "cores": 1, "processes": 1, "memory": "1GB",
                    "walltime": "00:10:00", "partition": partition, "python": sys.executable,
                    "job_name": job_name, "log_directory": "logs", "dashboard_address": ":0"},
    }, base_dir=tmp_path)
    assert config.cluster.kind == "slurm"
    GramPipeline(config, progress=False).run()
    stored = np.asarray(GramStore.open(tmp_path / "run.zarr").train_array("ntk")[...])
    expected = stax.from_spec(layers)[2](x, None, "ntk")
    np.testing.assert_allclose(stored, expected, rtol=1e-12)
    wait_for(lambda: not _queued(job_name), timeout=60, every=0.5, what="the pipeline's SLURM jobs to leave the queue")


def test_run_solves_on_the_slurm_workers(partition, tmp_path):
    """`ntkscale run` with `cluster: {kind: slurm}`: one SLURM cluster serves the Gram
    and the solver (products: auto -> on the cluster for a non-local kind): CG
    products and predictions equal those of a solve in the driver."""
    from ntkscale.config.run import RunConfig  # noqa: PLC0415
    from ntkscale.stages.run import RunPipeline  # noqa: PLC0415
    from ntkscale.store.gram_store import GramStore  # noqa: PLC0415

    rng = np.random.default_rng(4)
    centres = rng.standard_normal((2, 5)) * 2
    lab = rng.integers(0, 2, 60)
    x = centres[lab] + 0.5 * rng.standard_normal((60, 5))
    for name, a in {"x": x[:45], "y": lab[:45], "xt": x[45:], "yt": lab[45:]}.items():
        np.save(tmp_path / f"{name}.npy", a)
    job_name = f"ntkscale-run-{uuid.uuid4().hex[:6]}"
    raw = {
        "data": {"train": {"x": "x.npy", "y": "y.npy"}, "test": {"x": "xt.npy", "y": "yt.npy"}},
        "kernel": {"layers": [["Dense", {"W_std": 1.4, "b_std": 0.1}], ["Relu", {}], ["Dense", {"W_std": 1.4}]],
                   "get": "ntk"},
        "store": "run.zarr", "block_size": 16, "dtype": "float64",
        "cluster": {"kind": "slurm", "jobs": 1, "cores": 1, "processes": 1, "memory": "1GB",
                    "walltime": "00:10:00", "partition": partition, "python": sys.executable,
                    "job_name": job_name, "log_directory": "logs", "dashboard_address": ":0"},
        "solver": {"method": "cg", "ridge": 1e-3, "tol": 1e-10, "preconditioner": "none"},
    }
    out = RunPipeline(RunConfig.from_mapping(raw, base_dir=tmp_path), progress=False).run()
    store = GramStore.open(tmp_path / "run.zarr")
    rec = dict(store.group("solver").attrs)["run"]
    assert rec["products"] == "cluster" and out["gram"]["blocks_computed"] > 0
    on_cluster = np.asarray(store.group("predict")["scores"][0])
    raw["solver"]["products"] = "driver"
    GramStore.open(tmp_path / "run.zarr", "r+").group("solver").attrs.update({"run": {}})
    again = RunPipeline(RunConfig.from_mapping(raw, base_dir=tmp_path), progress=False).run()
    assert again["gram"]["blocks_computed"] == 0
    rec = dict(GramStore.open(tmp_path / "run.zarr").group("solver").attrs)["run"]
    assert rec["products"] == "driver"
    np.testing.assert_allclose(np.asarray(GramStore.open(tmp_path / "run.zarr").group("predict")["scores"][0]),
                               on_cluster, rtol=1e-8, atol=1e-10)
    assert out["test_accuracy"] == again["test_accuracy"]
    wait_for(lambda: not _queued(job_name), timeout=60, every=0.5, what="the run's SLURM jobs to leave the queue")
