"""The Gram store on object storage, against a real S3 API (moto's server on loopback).

One bucket holds a store computed once by LocalCluster worker *processes* that write
their blocks straight to the bucket; the tests read, verify, export, solve and predict
from it, corrupt and repair objects in it, and compare everything with the same run
on local disk (bit for bit). No S3 client is mocked: s3fs/botocore talk HTTP to the
server, configured only by the standard AWS environment variables.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ntkscale.cli.main import main
from ntkscale.config.run import RunConfig
from ntkscale.stages.gram import GramPipeline, repair
from ntkscale.stages import solve as solve_stage
from ntkscale.stages.run import RunPipeline
from ntkscale.store.gram_store import GramStore
from ntkscale.store.location import StoreLocation
from ntkscale.store.maintenance import status, verify
from ntkscale.config.run import LocalClusterConfig
from tests.support.gram import config_dict, make_data, write_config
from tests.support.s3 import new_bucket, s3_server, s3fs_client

pytestmark = pytest.mark.timeout(300)

THREADS = {"kind": "local", "n_workers": 1, "processes": False, "dashboard_address": ":0"}
PROCESSES = {"kind": "local", "n_workers": 2, "threads_per_worker": 1, "processes": True,
             "memory_limit": "1GiB", "dashboard_address": ":0"}
SOLVER = {"method": "cholesky", "ridge": 1e-3}   # one pass over the Gram (CG re-reads it per iteration)


def arrays(store) -> dict:
    s = GramStore.open(store)
    out = {f"{p}/{k}": s.array(p, k)[...] for p in ("train", "test") for k in s.kinds}
    out.update({f"diag/{w}/{k}": s.diag(w, k) for w in ("train", "test") for k in s.kinds})
    return out


def assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The server, data, a local-disk reference store and the same store in a bucket
    (written by two LocalCluster worker processes)."""
    from threadpoolctl import threadpool_limits

    tmp = tmp_path_factory.mktemp("s3")
    with s3_server() as endpoint:
        bucket = new_bucket()
        data = make_data(tmp, n=40, m=12, d=5)
        local = config_dict(data, store="local.zarr", block_size=16, cluster=THREADS, solver=SOLVER)
        with threadpool_limits(1):    # as on Dask workers: the stores agree bit for bit
            GramPipeline(RunConfig.from_mapping(local, tmp), progress=False).run()
        url = f"s3://{bucket}/runs/run.zarr"
        remote = dict(local, store=url, cluster=PROCESSES)
        report = GramPipeline(RunConfig.from_mapping(remote, tmp), progress=False).run()
        yield {"tmp": tmp, "endpoint": endpoint, "bucket": bucket, "url": url, "data": data,
               "local": local, "remote": remote, "report": report, "ref": arrays(tmp / "local.zarr")}


def test_process_workers_write_the_gram_into_the_bucket(world):
    rep, url = world["report"], world["url"]
    assert rep.blocks_computed == rep.blocks_total == 13
    workers = {r["worker"] for r in rep.records}
    assert all(w.startswith("tcp://") for w in workers)          # written from worker processes
    fs = s3fs_client()
    objects = fs.find(f"{world['bucket']}/runs/run.zarr")
    assert any("/gram/train/ntk/c/" in o for o in objects)
    entries = [o for o in objects if o.endswith("/zarr.json") and "/manifest/" in o.rsplit("/", 2)[0] + "/"]
    assert len(entries) == 13 + 2                                # every block and both input copies
    assert_same(arrays(url), world["ref"])                       # bit for bit the local-disk run
    for where in (world["tmp"], Path.cwd()):                     # no local folder named after the URL
        assert not (where / "s3:").exists()


def test_status_verify_export_and_rerun_on_the_bucket(world, tmp_path, capsys):
    url = world["url"]
    st = status(url)
    assert (st["blocks_done"], st["blocks_total"], st["complete"], st["running"]) == (13, 13, True, False)
    assert main(["status", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["complete"] is True
    assert main(["verify", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["clean"] is True
    out = tmp_path / "K.npy"
    assert main(["export", url, "train", "-o", str(out), "--get", "ntk"]) == 0
    np.testing.assert_array_equal(np.load(out), world["ref"]["train/ntk"])
    again = GramPipeline(RunConfig.from_mapping(world["remote"], world["tmp"]), progress=False).run()
    assert again.blocks_computed == 0 and again.blocks_done_before == 13
    cfg = write_config(world["tmp"], world["remote"], "remote.yaml")
    assert main(["plan", str(cfg), "--json", "--no-calibrate"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert (plan["store"], plan["store_exists"], plan["blocks_done"]) == (url, True, 13)


def test_mismatched_spec_is_refused_and_the_bucket_untouched(world, capsys):
    fs = s3fs_client()
    prefix = f"{world['bucket']}/runs/run.zarr"
    before = {k: v["ETag"] for k, v in fs.find(prefix, detail=True).items()}
    cfg = write_config(world["tmp"], dict(world["remote"], dtype="float32"), "f32.yaml")
    assert main(["gram", str(cfg), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "dtype" in err and "the store was not changed" in err
    assert {k: v["ETag"] for k, v in fs.find(prefix, detail=True).items()} == before


def test_solve_and_predict_from_the_bucket(world):
    """``ntkscale run`` on the bucket's store (the Gram is there: solve + predict), against
    the dense solve of the local-disk Gram."""
    tmp = world["tmp"]
    out = RunPipeline(RunConfig.from_mapping(world["remote"], tmp), progress=False).run()
    ref = world["ref"]
    y, yt = np.load(world["data"]["y"]), np.load(world["data"]["yt"])
    K = ref["train/ntk"]
    ridge = SOLVER["ridge"] * np.mean(np.diag(K))                # ridges are relative to the mean diagonal
    alpha = np.linalg.solve(K + ridge * np.eye(len(K)), y)
    want = ref["test/ntk"] @ alpha
    store = GramStore.open(world["url"])
    np.testing.assert_allclose(store.group("solver")["alpha"][0], alpha, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(store.group("predict")["scores"][0], want, rtol=1e-6, atol=1e-8)
    assert out["test_mse"] == pytest.approx(float(np.mean((want - yt) ** 2)), rel=1e-6)
    # a rerun finds the solve stored in the bucket and reuses it
    again = RunPipeline(RunConfig.from_mapping(world["remote"], tmp), progress=False)
    assert solve_stage.solve(again.context)["identity"] == store.group("solver").attrs["run"]["identity"]
    cfg = write_config(tmp, world["remote"], "remote-cli.yaml")          # the CLI commands too
    for cmd in ("solve", "predict", "run"):
        assert main([cmd, str(cfg)]) == 0, cmd


def test_solver_mode_auto_measures_the_bucket(world, capsys):
    """``solver.mode: auto`` on a bucket's store measures the read bandwidth of the
    bucket's own chunks (not the local disk's) before choosing stored or streamed."""
    cfg = dict(world["remote"], solver={"method": "cg", "ridge": 1e-3, "tol": 1e-10, "mode": "auto"})
    assert main(["solve", str(write_config(world["tmp"], cfg, "remote-auto.yaml"))]) == 0
    line = next(l for l in capsys.readouterr().err.splitlines() if "Gram products" in l)
    assert f"MB/s measured on {world['url']}" in line, line
    K, y = world["ref"]["train/ntk"], np.load(world["data"]["y"])
    alpha = np.linalg.solve(K + 1e-3 * np.mean(np.diag(K)) * np.eye(len(K)), y)
    np.testing.assert_allclose(GramStore.open(world["url"]).group("solver")["alpha"][0], alpha, rtol=1e-6, atol=1e-8)


def test_a_corrupted_object_is_found_by_verify_and_repaired(world, capsys):
    url, bucket = world["url"], world["bucket"]
    fs = s3fs_client()
    store = GramStore.open(url)
    block = next(b for b in store.plan().blocks if b.key == "train-0-1")
    key = f"{bucket}/runs/run.zarr/{store.chunk_key(block, 'ntk', mirror=True)}"
    data = bytearray(fs.cat_file(key))
    data[100] ^= 0xFF                                              # one flipped byte, same size
    fs.pipe_file(key, bytes(data))
    diag_block = next(b for b in store.plan().blocks if b.key == "diag-test-0")
    diag = f"{bucket}/runs/run.zarr/{store.chunk_key(diag_block, 'nngp')}"
    fs.rm_file(diag)                                               # and a deleted object
    assert main(["verify", url, "--json"]) == 1
    rep = json.loads(capsys.readouterr().out)
    assert set(rep["bad"]) == {"train-0-1", "diag-test-0"}
    assert "ntk mirror chunk does not match its checksum" in rep["bad"]["train-0-1"]
    assert status(url)["damaged"] == {"diag-test-0": "nngp chunk file is missing"}
    out = repair(url, LocalClusterConfig(n_workers=1, processes=False, dashboard_address=":0"), progress=False)
    assert sorted(out["repaired"]) == ["diag-test-0", "train-0-1"] and out["after"]["clean"]
    assert verify(url)["clean"]
    assert_same(arrays(url), world["ref"])


@pytest.mark.slow
def test_store_options_in_the_config_reach_the_workers(world, tmp_path, monkeypatch):
    """Endpoint and credentials given only in ``store_options`` (none in the environment):
    the driver, the lease and the worker processes all use them."""
    for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    bucket = "opts-" + world["bucket"]
    opts = {"endpoint_url": world["endpoint"], "key": "ntkscale-test", "secret": "ntkscale-test-secret"}
    StoreLocation.parse(f"s3://{bucket}", opts).fs.mkdir(bucket)
    data = make_data(tmp_path, n=20, m=0, d=4)
    raw = config_dict(data, store=f"s3://{bucket}/run.zarr", block_size=16, store_options=opts,
                      cluster=dict(PROCESSES, n_workers=1))
    cfg = RunConfig.from_mapping(raw, tmp_path)
    assert cfg.to_dict()["store_options"]["secret"] == "***"
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:       # a given client: the workers are probed for the bucket first
        rep = GramPipeline(cfg, progress=False).run(client=client)
    assert rep.blocks_computed == 5 and all(r["worker"].startswith("tcp://") for r in rep.records)
    assert verify(StoreLocation.parse(f"s3://{bucket}/run.zarr", opts))["clean"]


@pytest.mark.slow
def test_a_cg_solve_from_the_bucket_checkpoints_there(world):
    """CG (the default method) on the bucket's Gram: it reads the Gram once per
    iteration and checkpoints into the bucket's ``solver/`` group."""
    cfg = dict(world["remote"], solver={"method": "cg", "ridge": 1e-3, "tol": 1e-10, "checkpoint_every": 5})
    RunPipeline(RunConfig.from_mapping(cfg, world["tmp"]), progress=False).run()
    K, y = world["ref"]["train/ntk"], np.load(world["data"]["y"])
    alpha = np.linalg.solve(K + 1e-3 * np.mean(np.diag(K)) * np.eye(len(K)), y)
    got = GramStore.open(world["url"]).group("solver")
    np.testing.assert_allclose(got["alpha"][0], alpha, rtol=1e-6, atol=1e-8)
    assert got.attrs["run"]["method"] == "cg" and got.attrs["run"]["cg_iterations"] > 0
