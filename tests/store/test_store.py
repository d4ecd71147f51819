"""Gram store without Dask: layout, block writes, checksums, compatibility, lock."""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ntkscale import stax
from ntkscale.errors import SpecMismatchError, StoreBusyError, StoreError
from ntkscale.store.blocks import make_plan
from ntkscale.store.gram_store import GramStore
from ntkscale.store.layout import FORMAT_VERSION, transpose
from ntkscale.store.lock import StoreLock, lock_holder
from ntkscale.store.maintenance import status
from ntkscale.store.manifest import Manifest, block_token, write_block
from ntkscale.store.meta import StoreDiff, StoreMeta
from tests.support.nets import LAYERS

N, M, B = 20, 7, 8


def _meta(**over):
    kfn = stax.from_spec(LAYERS)[2]
    meta = {"format_version": FORMAT_VERSION, "spec": kfn.spec, "spec_hash": kfn.spec_hash,
            "get": ["nngp", "ntk"], "dtype": "float64", "block_size": B, "n_train": N, "n_test": M,
            "checksum": "crc32", "sample_shape": [3],
            "fingerprints": {"train": {"x": "sha256:aa", "y": None}, "test": {"x": "sha256:bb", "y": None}}}
    meta.update(over)
    return meta


@pytest.fixture
def store(tmp_path):
    s = GramStore.create(tmp_path / "s.zarr", _meta())
    s.create_part_arrays("train")
    s.create_part_arrays("test")
    return s


def _fill(store, rng):
    """Write every block of the plan with random values; return dense truths."""
    k = {"nngp": rng.standard_normal((N, N)), "ntk": rng.standard_normal((N, N))}
    k = {n: a + a.T for n, a in k.items()}
    kt = {n: rng.standard_normal((M, N)) for n in ("nngp", "ntk")}
    d = {("train", n): rng.standard_normal(N) for n in ("nngp", "ntk")}
    d.update({("test", n): rng.standard_normal(M) for n in ("nngp", "ntk")})
    for blk in store.plan().blocks:
        (r0, r1), (c0, c1) = blk.rows, blk.cols
        if blk.is_diag:
            vals = {n: d[(blk.row_set, n)][r0:r1] for n in ("nngp", "ntk")}
        elif blk.part == "train":
            vals = {n: k[n][r0:r1, c0:c1] for n in k}
        else:
            vals = {n: kt[n][r0:r1, c0:c1] for n in kt}
        write_block(str(store.path), blk, vals, {"token": block_token(store.meta, blk)})
    return k, kt, d


def test_layout_and_solver_helpers(store):
    k, kt, d = _fill(store, np.random.default_rng(1))
    s = GramStore.open(store.path)
    assert s.kinds == ("nngp", "ntk") and s.n_train == N and s.n_test == M and s.block_size == B
    np.testing.assert_array_equal(s.train_array("ntk")[...], k["ntk"])   # mirror written
    np.testing.assert_array_equal(s.test_array("nngp")[...], kt["nngp"])
    np.testing.assert_array_equal(s.diag("test", "ntk"), d[("test", "ntk")])
    assert s.train_array("ntk").chunks == (B, B) and s.test_array("ntk").chunks == (M, B)
    import dask.array as da
    np.testing.assert_array_equal(da.from_zarr(str(s.path), component="gram/train/nngp").compute(), k["nngp"])
    np.testing.assert_array_equal(s.dask_array("test", "ntk").compute(), kt["ntk"])
    with pytest.raises(StoreError, match="say which kernel"):
        s.train_array()
    with pytest.raises(StoreError, match="not 'foo'"):
        s.train_array("foo")
    assert s.kernel_fn().spec_hash == s.spec_hash
    assert all(s.check_block(b, s.manifest.get(b.key)) is None for b in s.plan().blocks)


def test_unfinished_regions_are_nan(store):
    assert np.isnan(GramStore.open(store.path).train_array("ntk")[...]).all()


def test_check_block_finds_truncated_altered_and_missing_chunks(store):
    _fill(store, np.random.default_rng(2))
    s = GramStore.open(store.path)
    chunks = store.path / "gram" / "train" / "ntk" / "c"
    with open(chunks / "0" / "1", "r+b") as f:       # block train-0-1 (its own chunk)
        f.truncate(100)
    with open(chunks / "2" / "0", "r+b") as f:       # the mirror of block train-0-2
        f.seek(24)
        f.write(b"\x01\x02\x03")
    os.remove(chunks / "1" / "1")                    # block train-1-1
    problems = {b.key: s.check_block(b, s.manifest.get(b.key)) for b in s.plan().blocks}
    bad = {k: v for k, v in problems.items() if v}
    assert set(bad) == {"train-0-1", "train-0-2", "train-1-1"}
    assert "unreadable" in bad["train-0-1"] and "mirror" in bad["train-0-2"]
    assert "checksum" in bad["train-1-1"]


def test_stale_token_and_missing_entry(store):
    _fill(store, np.random.default_rng(3))
    s = GramStore.open(store.path)
    blk = s.plan().blocks[-1]
    rec = dict(s.manifest.get(blk.key), token="0" * 32)
    assert "stale" in s.check_block(blk, rec)
    assert s.check_block(blk, None) == "missing"


def test_partial_writes_are_removed(store):
    junk = store.path / "gram" / "train" / "ntk" / "c" / "0" / "1.3f2a.partial"
    junk.parent.mkdir(parents=True, exist_ok=True)
    junk.write_bytes(b"half a chunk")
    keep = store.path / "solver" / "x.partial"
    keep.parent.mkdir()
    keep.write_bytes(b"not ours")
    assert GramStore.open(store.path, "r+").remove_partial_writes() == 1
    assert not junk.exists() and keep.exists()


def test_manifest_entries_are_zarr_groups(store):
    m = Manifest(store.path)
    m.put("train-9-9", {"checksums": {"ntk": "crc32:0"}})
    assert "train-9-9" in m.keys() and m.get("train-9-9")["checksums"]["ntk"] == "crc32:0"
    import zarr
    assert zarr.open_group(str(store.path), path="manifest/train-9-9", mode="r").attrs["checksums"]
    m.delete(["train-9-9"])
    assert m.get("train-9-9") is None and "train-9-9" not in m.keys()


def test_drop_part_keeps_train_and_reserved_groups(store):
    _fill(store, np.random.default_rng(4))
    s = GramStore.open(store.path, "r+")
    s.group("solver").create_array("alpha", shape=(3,), dtype="f8")
    s.group("predict")
    s.drop_part("test")
    keys = s.manifest.keys()
    assert not any(k.startswith(("test-", "diag-test")) for k in keys)
    assert any(k.startswith("train-") for k in keys)
    s = GramStore.open(store.path)
    assert s.group("solver")["alpha"].shape == (3,) and s.group("predict") is not None
    with pytest.raises(StoreError):
        s.test_array("ntk")


def test_open_refuses_other_directories(tmp_path):
    with pytest.raises(StoreError, match="not a Gram store"):
        GramStore.open(tmp_path)
    import zarr
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    with pytest.raises(StoreError, match="not an ntkscale Gram store"):
        GramStore.open(tmp_path / "plain.zarr")
    GramStore.create(tmp_path / "new.zarr", _meta(format_version=FORMAT_VERSION + 1))
    with pytest.raises(StoreError, match="newer ntkscale"):
        GramStore.open(tmp_path / "new.zarr")


def _want(**over):
    meta = _meta()
    want = {k: meta[k] for k in ("spec", "spec_hash", "dtype", "get", "fingerprints")}
    want.update(over)
    return want


def test_compatibility_names_what_differs(store):
    s = GramStore.open(store.path)
    assert s.diff(_want()) == StoreDiff() and s.diff(_want()).empty
    assert s.diff(_want(get=["ntk"])) == StoreDiff()
    other = stax.from_spec(LAYERS[:1] + [["Erf", {}]] + LAYERS[2:])[2]
    with pytest.raises(SpecMismatchError, match=r"kernel.layers.*layer 1 is \[\"Erf\""):
        s.diff(_want(spec=other.spec, spec_hash=other.spec_hash))
    with pytest.raises(SpecMismatchError, match=r"dtype float64 but the config asks for float32 \(dtype\)"):
        s.diff(_want(dtype="float32"))
    fps = _meta()["fingerprints"]
    with pytest.raises(SpecMismatchError, match=r"data.train.x"):
        s.diff(_want(fingerprints=dict(fps, train={"x": "sha256:zz", "y": None})))
    new_test = dict(fps, test={"x": "sha256:cc", "y": None})
    with pytest.raises(SpecMismatchError, match="--recompute-test") as err:
        s.diff(_want(fingerprints=new_test))
    assert "not changed" in str(err.value)
    assert s.diff(_want(fingerprints=new_test), recompute_test=True) == StoreDiff(drop_test=True)
    new_y = dict(fps, train={"x": "sha256:aa", "y": "sha256:yy"})
    with pytest.raises(SpecMismatchError, match="--replace-y"):
        s.diff(_want(fingerprints=new_y))
    assert s.diff(_want(fingerprints=new_y), replace_y=True) == StoreDiff(replace_y=("train",))


def test_compatibility_add_test_and_get_superset(tmp_path):
    meta = _meta(n_test=0, get=["ntk"])
    meta["fingerprints"] = {"train": meta["fingerprints"]["train"]}
    s = GramStore.create(tmp_path / "t.zarr", meta)
    with pytest.raises(SpecMismatchError, match=r"also asks for nngp \(kernel.get\)"):
        s.diff(_want())
    assert s.diff(_want(get=["ntk"])) == StoreDiff(add_test=True)


def test_lock_refuses_a_second_holder_and_names_it(tmp_path):
    root = tmp_path / "s.zarr"
    with StoreLock(root, command="ntkscale gram a.yaml"):
        st = status(root)            # the first run is still creating the store
        assert st["state"] == "creating" and st["holder"]["command"] == "ntkscale gram a.yaml"
        holder = lock_holder(root)
        assert holder["pid"] == os.getpid() and holder["command"] == "ntkscale gram a.yaml"
        with pytest.raises(StoreBusyError, match=r"in use by pid \d+ .*ntkscale gram a.yaml"):
            StoreLock(root, wait=0.2).acquire()
    assert lock_holder(root) is None
    with StoreLock(root):
        pass


def test_lock_of_a_killed_process_does_not_block(tmp_path):
    root = tmp_path / "s.zarr"
    code = textwrap.dedent(f"""
        import sys, time
        from ntkscale.store.lock import StoreLock
        StoreLock({str(root)!r}).acquire()
        print("locked", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        assert lock_holder(root)["pid"] == proc.pid
        with pytest.raises(StoreBusyError):
            StoreLock(root, wait=0.2).acquire()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert lock_holder(root) is None          # the kernel dropped the flock with its holder
    with StoreLock(root, wait=0.2) as lock:
        assert lock.held


@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (300, 700), (513, 257)])
def test_tiled_transpose(shape):
    a = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    t = transpose(a, tile=128)
    assert t.flags.c_contiguous and t.dtype == a.dtype
    np.testing.assert_array_equal(t, a.T)


def test_plan_of_a_store_matches_its_arrays(store):
    plan = make_plan(N, M, B)
    assert store.plan() == plan


def test_store_meta_round_trips_and_is_frozen(tmp_path):
    attrs = _meta(created="2026-12-01T00:00:00+00:00", sources={"train": {"x": "x.npy", "y": None}},
                  some_future_key={"kept": True})
    meta = StoreMeta.from_dict(attrs)
    assert meta.get == ("nngp", "ntk") and meta.block_size == B and meta.extra["some_future_key"] == {"kept": True}
    assert meta.to_dict() == attrs
    with pytest.raises(AttributeError):
        meta.dtype = "float32"
    s = GramStore.create(tmp_path / "m.zarr", meta)
    assert GramStore.open(s.path).meta == attrs and GramStore.open(s.path).store_meta == meta
    assert GramStore.read_attributes(s.path) == attrs


def test_status_rate_counts_from_the_first_finished_block_with_the_progress_lines_eta(store):
    """Issue 15 item 9: ``status`` measured its rate from the lock's start, so cluster
    start-up slowed it and its ETA disagreed with the progress line's. It now runs
    from the run's first to its last finished block, through the same eta_seconds."""
    from ntkscale.gram.progress import Progress, eta_seconds

    blocks = sorted(store.plan().blocks, key=lambda b: b.key)
    rng = np.random.default_rng(3)
    with StoreLock(store.path, command="test"):
        since = float(lock_holder(store.path)["started_unix"])
        run = blocks[: len(blocks) // 2]
        for i, blk in enumerate(run):          # finished 100 s after the lock (start-up), then every 2 s
            (r0, r1), (c0, c1) = blk.rows, blk.cols
            shape = (r1 - r0,) if blk.is_diag else (r1 - r0, c1 - c0)
            write_block(str(store.path), blk, {n: rng.standard_normal(shape) for n in ("nngp", "ntk")},
                        {"token": "t"})
            t = since + 100.0 + 2.0 * i
            os.utime(store.manifest.dir / blk.key / "zarr.json", (t, t))
        info = status(store.path)
    assert info["run_blocks_done"] == len(run)
    measured = sum(b.entries for b in run[1:])
    remaining = sum(b.entries for b in blocks[len(run):])
    span = 2.0 * (len(run) - 1)
    assert info["entries_per_s"] == pytest.approx(measured / span)
    assert info["eta_s"] == pytest.approx(remaining * span / measured)
    # the progress line in the same state: its clock started at the first finish
    clock = [0.0]
    bar = Progress(len(blocks), 1, measured + remaining, enabled=False, timer=False, clock=lambda: clock[0])
    for blk in run[1:]:
        bar.update({"entries": blk.entries})
    clock[0] = span
    assert info["eta_s"] == pytest.approx(eta_seconds(bar.entries_done, bar.entries_todo, span))
    assert f"blocks {len(run)}/" in bar.line()


def test_status_has_no_rate_before_two_blocks_of_the_run_finished(store):
    with StoreLock(store.path, command="test"):
        info = status(store.path)
    assert info["running"] and info["run_blocks_done"] == 0
    assert info["entries_per_s"] is None and info["eta_s"] is None
