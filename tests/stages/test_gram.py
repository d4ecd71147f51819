"""Gram pipeline on a real (small) Dask cluster: blocked == in-memory, resume,
refusals that leave the store untouched, and inputs checked before any work."""

import os

import numpy as np
import pytest

from ntkscale.cluster.client import WORKER_ENV
from ntkscale.config.run import RunConfig
from ntkscale.errors import InputError, SpecMismatchError
from ntkscale.store.maintenance import status, verify
from ntkscale.stages.gram import GramPipeline
from ntkscale.store.gram_store import GramStore, Manifest, StoreError
from tests.support.gram import config_dict, make_data, snapshot
from tests.support.nets import LAYERS
from tests.support.reference import assert_matches_in_memory, in_memory_kernels


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      memory_limit="1GiB", env=dict(WORKER_ENV)) as cluster, Client(cluster) as c:
        yield c


def _run(tmp_path, data, client, **over):
    opts = {k: over.pop(k) for k in ("recompute_test", "replace_y") if k in over}
    cfg = RunConfig.from_mapping(config_dict(data, **over), tmp_path)
    return GramPipeline(cfg, progress=False, **opts).run(client=client), cfg


def _check_equal(store_path, data, get, dtype, with_test):
    s = GramStore.open(store_path)
    ref = in_memory_kernels(data, "train")
    for kind in get:
        k = s.train_array(kind)[...]
        assert k.dtype == np.dtype(dtype)
        assert_matches_in_memory(k, ref[kind], dtype)
        np.testing.assert_array_equal(k, k.T)
        assert_matches_in_memory(s.diag("train", kind), ref[f"diag_{kind}"], dtype)
    if with_test:
        reft = in_memory_kernels(data, "test")
        for kind in get:
            assert_matches_in_memory(s.test_array(kind)[...], reft[kind], dtype)
            assert_matches_in_memory(s.diag("test", kind), reft[f"diag_{kind}"], dtype)


@pytest.mark.parametrize("n, m, block, get, dtype", [
    (64, 0, 32, ["nngp", "ntk"], "float64"),    # square grid, exact multiple
    (70, 23, 16, ["nngp", "ntk"], "float64"),   # ragged last blocks, rectangular test Gram
    (12, 5, 64, ["ntk"], "float32"),            # n smaller than one block
    (45, 45, 20, ["nngp"], "float32"),
])
def test_blocked_equals_in_memory(tmp_path, client, n, m, block, get, dtype):
    data = make_data(tmp_path, n=n, m=m, d=6, seed=n)
    report, cfg = _run(tmp_path, data, client, block_size=block, dtype=dtype,
                       kernel={"layers": LAYERS, "get": get})
    s = GramStore.open(cfg.store)
    assert report.blocks_computed == s.plan().n_blocks and report.blocks_done_before == 0
    assert s.block_size == min(block, max(n, m))
    _check_equal(cfg.store, data, get, dtype, with_test=bool(m))
    assert verify(cfg.store)["clean"]
    st = status(cfg.store)
    assert st["complete"] and not st["running"] and st["blocks_done"] == st["blocks_total"]


def test_resume_computes_only_missing_blocks(tmp_path, client):
    data = make_data(tmp_path, n=50, m=10, d=4)
    report, cfg = _run(tmp_path, data, client)
    total = report.blocks_computed
    assert _run(tmp_path, data, client)[0].blocks_computed == 0          # rerun: nothing to do
    m = Manifest(cfg.store)
    gone = ["train-0-2", "test-0-1", "diag-train-3"]
    m.delete(gone)
    os.remove(os.path.join(cfg.store, "gram", "train", "ntk", "c", "2", "0"))   # mirror of train-0-2
    report2, _ = _run(tmp_path, data, client, block_size=32)              # the store's block size wins
    assert report2.blocks_computed == len(gone) and report2.blocks_done_before == total - len(gone)
    assert sorted(r["block"] for r in report2.records) == sorted(gone)
    assert GramStore.open(cfg.store).block_size == 16
    _check_equal(cfg.store, data, ["nngp", "ntk"], "float64", with_test=True)


def test_new_test_set_is_refused_then_recomputed_alone(tmp_path, client):
    data = make_data(tmp_path, n=40, m=10, d=4)
    _, cfg = _run(tmp_path, data, client)
    train_entries = {k: os.stat(os.path.join(cfg.store, "manifest", k, "zarr.json")).st_mtime_ns
                     for k in Manifest(cfg.store).keys() if k.startswith(("train-", "diag-train"))}
    new = make_data(tmp_path, n=40, m=13, d=4, seed=7, prefix="new_")
    data2 = dict(data, xt=new["xt"], yt=new["yt"])
    before = snapshot(cfg.store)
    with pytest.raises(SpecMismatchError, match="data.test.x.*--recompute-test"):
        _run(tmp_path, data2, client)
    assert snapshot(cfg.store) == before
    report, _ = _run(tmp_path, data2, client, recompute_test=True)
    s = GramStore.open(cfg.store)
    n_test_blocks = sum(b.row_set == "test" for b in s.plan().blocks)
    assert report.blocks_computed == n_test_blocks and s.n_test == 13
    assert all(r["block"].startswith(("test-", "diag-test")) for r in report.records)
    for k, t in train_entries.items():
        assert os.stat(os.path.join(cfg.store, "manifest", k, "zarr.json")).st_mtime_ns == t
    _check_equal(cfg.store, data2, ["nngp", "ntk"], "float64", with_test=True)


def test_test_set_added_later_computes_only_the_test_part(tmp_path, client):
    data = make_data(tmp_path, n=30, m=9, d=3)
    train_only = {k: v for k, v in data.items() if k in ("x", "y")}
    _run(tmp_path, train_only, client)
    report, cfg = _run(tmp_path, data, client)
    assert {r["block"].split("-")[0] for r in report.records} <= {"test", "diag"}
    assert report.blocks_done_before == 2 + 3          # diag-train-0..1, train 0-0, 0-1, 1-1
    _check_equal(cfg.store, data, ["nngp", "ntk"], "float64", with_test=True)


def test_changed_labels_need_replace_y(tmp_path, client):
    data = make_data(tmp_path, n=20, m=0, d=3)
    _, cfg = _run(tmp_path, data, client)
    np.save(data["y"], np.ones((20, 2)))
    with pytest.raises(SpecMismatchError, match="data.train.y.*--replace-y"):
        _run(tmp_path, data, client)
    report, _ = _run(tmp_path, data, client, replace_y=True)
    assert report.blocks_computed == 0
    np.testing.assert_array_equal(GramStore.open(cfg.store).y("train")[...], np.ones((20, 2)))


@pytest.mark.parametrize("damage, needle", [
    ("nan", r"data.train.x \(.*x.npy\) has 1 NaN and 0 infinite values \(rows 3\)"),
    ("inf_test", r"data.test.x \(.*xt.npy\) has 0 NaN and 1 infinite"),
    ("y_len", r"data.train.y \(.*y.npy\) has 9 rows but data.train.x has 10 samples"),
    ("features", r"data.test.x .* per-sample shape \(4,\) but data.train.x .* has \(3,\)"),
    ("rank", r"data.train.x \(.*x.npy\) does not fit the kernel: .*2-D"),
    ("strings", r"data.train.x \(.*x.npy\) has dtype <U1"),
    ("pickle", r"data.train.x: cannot read .*x.npy without pickle"),
])
def test_bad_inputs_are_reported_before_any_work(tmp_path, damage, needle):
    data = make_data(tmp_path, n=10, m=4, d=3)
    if damage == "nan":
        x = np.load(data["x"], allow_pickle=False); x[3, 1] = np.nan; np.save(data["x"], x)
    elif damage == "inf_test":
        x = np.load(data["xt"], allow_pickle=False); x[1, 0] = np.inf; np.save(data["xt"], x)
    elif damage == "y_len":
        np.save(data["y"], np.zeros(9))
    elif damage == "features":
        np.save(data["xt"], np.zeros((4, 4)))
    elif damage == "rank":
        np.save(data["x"], np.zeros((10, 3, 2)))
    elif damage == "pickle":
        np.save(data["x"], np.array([{"a": 1}] * 10, dtype=object), allow_pickle=True)
    elif damage == "strings":
        np.save(data["x"], np.array([["a"] * 3] * 10))
    cfg = RunConfig.from_mapping(config_dict(data), tmp_path)
    with pytest.raises(InputError, match=needle):
        GramPipeline(cfg, progress=False).run(client=object())   # no cluster is ever touched
    assert not os.path.exists(cfg.store)


def test_store_path_that_is_not_a_store_is_refused(tmp_path):
    data = make_data(tmp_path, n=10, m=0, d=3)
    (tmp_path / "run.zarr").mkdir()
    (tmp_path / "run.zarr" / "mine.txt").write_text("precious")
    cfg = RunConfig.from_mapping(config_dict(data), tmp_path)
    with pytest.raises(StoreError, match="exists and is not a Gram store"):
        GramPipeline(cfg, progress=False).run(client=object())
    assert (tmp_path / "run.zarr" / "mine.txt").read_text() == "precious"


def test_zarr_inputs_and_image_batches(tmp_path, client):
    """Inputs may be Zarr arrays, and (n, H, W, C) image batches for conv nets."""
    import zarr

    from ntkscale import stax

    rng = np.random.default_rng(5)
    x, xt = rng.standard_normal((11, 4, 4, 2)), rng.standard_normal((3, 4, 4, 2))
    zarr.create_array(str(tmp_path / "x.zarr"), data=x, chunks=(4, 4, 4, 2))
    np.save(tmp_path / "xt.npy", xt)
    layers = [["Conv", {"out_chan": 8, "filter_shape": [3, 3], "padding": "SAME"}], ["Relu", {}],
              ["GlobalAvgPool", {}], ["Dense", {"out_dim": 1}]]
    raw = {"data": {"train": {"x": "x.zarr"}, "test": {"x": "xt.npy"}},
           "kernel": {"layers": layers, "get": "ntk"}, "store": "img.zarr", "block_size": 4}
    report = GramPipeline(RunConfig.from_mapping(raw, tmp_path), progress=False).run(client=client)
    assert report.blocks_computed == GramStore.open(tmp_path / "img.zarr").plan().n_blocks
    s = GramStore.open(tmp_path / "img.zarr")
    kfn = stax.from_spec(layers)[2]
    np.testing.assert_allclose(s.train_array()[...], kfn(x, None, get="ntk"), rtol=1e-10)
    np.testing.assert_allclose(s.test_array()[...], kfn(xt, x, get="ntk"), rtol=1e-10)
    np.testing.assert_allclose(s.diag("train"), kfn.diag(x, get="ntk"), rtol=1e-10)
    assert s.inputs("train").shape == (11, 4, 4, 2) and s.y("train") is None


def test_missing_arrays_are_recreated_without_touching_others(tmp_path, client):
    """A run killed while it created the store left some arrays out: the rerun adds them."""
    import zarr

    data = make_data(tmp_path, n=20, m=6, d=3)
    _, cfg = _run(tmp_path, data, client)
    del zarr.open_group(cfg.store, mode="r+")["gram/test/ntk"]
    m = Manifest(cfg.store)
    m.delete([k for k in m.keys() if k.startswith("test-")])
    report, _ = _run(tmp_path, data, client)
    assert sorted(r["block"] for r in report.records) == ["test-0-0", "test-0-1"]
    _check_equal(cfg.store, data, ["nngp", "ntk"], "float64", with_test=True)
