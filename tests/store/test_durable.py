"""Local stores flush each block's chunk files (and their directories) to disk before
the manifest entry that vouches for them, then the entry itself (store/durable.py)."""

import os

import numpy as np
import zarr

from ntkscale.config.run import RunConfig
from ntkscale.stages.gram import GramPipeline
from ntkscale.store import durable
from tests.support.run import blobs, run_config


def test_chunk_files_are_the_files_a_slice_wrote(tmp_path):
    arr = zarr.create_array(str(tmp_path / "a.zarr"), shape=(10, 10), chunks=(4, 4), dtype="f8",
                            compressors=None)
    arr[4:8, 0:10] = 1.0
    files = list(durable.chunk_files(tmp_path / "a.zarr", arr.metadata, (4, 8), (0, 10)))
    assert [f.relative_to(tmp_path / "a.zarr").as_posix() for f in files] == ["c/1/0", "c/1/1", "c/1/2"]
    assert all(f.exists() for f in files)
    assert durable.fsync_files(files + [tmp_path / "a.zarr" / "c" / "9" / "9"]) == 3   # absent: skipped
    diag = zarr.create_array(str(tmp_path / "d.zarr"), shape=(10,), chunks=(4,), dtype="f8", compressors=None)
    diag[0:10] = 2.0
    assert [f.name for f in durable.chunk_files(tmp_path / "d.zarr", diag.metadata, (0, 10))] == ["0", "1", "2"]


def test_every_block_is_on_disk_before_its_manifest_entry(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def recording_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(durable.os, "fsync", recording_fsync)
    cfg = RunConfig.from_mapping(run_config(blobs(tmp_path, n=70, m=20)), tmp_path)
    GramPipeline(cfg, progress=False).run()
    store = tmp_path / "run.zarr"
    chunks = {str(p) for part in ("gram", "diag") for p in (store / part).rglob("*")
              if p.is_file() and "/c/" in p.as_posix()}
    entries = [p for p in (store / "manifest").glob("*/zarr.json") if not p.parent.name.startswith("inputs")]
    assert chunks and entries
    assert chunks <= set(synced), sorted(chunks - set(synced))[:3]
    position = {path: i for i, path in enumerate(synced)}
    for entry in entries:
        assert str(entry) in position
    # each entry comes after at least the chunks of its own block: the first entry after some chunk
    first_entry = min(position[str(e)] for e in entries)
    assert any(position[c] < first_entry for c in chunks)
    assert np.isfinite(zarr.open_array(str(store), path="gram/train/ntk", mode="r")[...]).all()


def _mirror_store(tmp_path, dtype="f4", n=64, b=32):
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="w", zarr_format=3)
    g.create_array("gram/train/ntk", shape=(n, n), chunks=(b, b), dtype=dtype, fill_value=np.nan, compressors=None)
    g.create_group("manifest")
    return tmp_path / "s.zarr"


def test_whole_chunks_are_written_raw_as_zarr_would_and_read_back(tmp_path):
    from ntkscale.store.blocks import Block
    from ntkscale.store.manifest import raw_chunk_file, write_block

    root = _mirror_store(tmp_path)
    a = np.random.default_rng(0).standard_normal((32, 32)).astype(np.float32)   # 4096 bytes: O_DIRECT-sized
    rec = write_block(str(root), Block("train", 0, 1, (0, 32), (32, 64)), {"ntk": a}, {"token": "t"})
    arr = zarr.open_array(str(root), path="gram/train/ntk", mode="r")
    np.testing.assert_array_equal(arr[0:32, 32:64], a)
    np.testing.assert_array_equal(arr[32:64, 0:32], a.T)                # the mirror, transposed once
    assert np.isnan(arr[0:32, 0:32]).all()                              # nothing else touched
    assert rec["write_data_s"] >= 0 and rec["checksums"]["ntk"].startswith("crc32:")
    # the raw file is byte for byte what zarr writes for the same chunk
    ref = zarr.create_array(str(tmp_path / "ref.zarr"), shape=(64, 64), chunks=(32, 32), dtype="f4",
                            fill_value=np.nan, compressors=None)
    ref[0:32, 32:64] = a
    assert (root / "gram/train/ntk/c/0/1").read_bytes() == (tmp_path / "ref.zarr/c/0/1").read_bytes()
    assert not list(root.rglob("*.partial"))
    # a ragged chunk, or a compressed array, goes through zarr
    assert raw_chunk_file(root / "gram/train/ntk", arr, (32, 64), (40, 64), np.zeros((32, 24), "f4")) is None
    comp = zarr.create_array(str(tmp_path / "c.zarr"), shape=(64, 64), chunks=(32, 32), dtype="f4")
    assert raw_chunk_file(tmp_path / "c.zarr", comp, (0, 32), (0, 32), a) is None


def test_write_chunk_falls_back_when_the_file_system_refuses_o_direct(tmp_path, monkeypatch):
    import errno

    a = np.arange(2048, dtype=np.float64).reshape(32, 64)                 # 16 KiB: O_DIRECT-sized
    durable.write_chunk(tmp_path / "direct", a, direct=True)              # O_DIRECT where /tmp takes it
    assert (tmp_path / "direct").read_bytes() == a.tobytes()
    real_open = os.open
    refused = []

    def no_direct(path, flags, *args):
        if flags & getattr(os, "O_DIRECT", 0):
            refused.append(path)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(durable.os, "open", no_direct)
    durable.write_chunk(tmp_path / "c" / "0" / "0", a, direct=True)
    assert refused or not hasattr(os, "O_DIRECT")
    assert (tmp_path / "c/0/0").read_bytes() == a.tobytes()
    odd = np.arange(7, dtype=np.float32)                                   # not a multiple of 4096 bytes
    durable.write_chunk(tmp_path / "odd", odd, direct=True)
    assert (tmp_path / "odd").read_bytes() == odd.tobytes()
    assert not list(tmp_path.rglob("*.partial"))
