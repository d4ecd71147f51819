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
