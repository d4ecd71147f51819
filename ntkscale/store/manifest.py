"""The manifest of finished blocks: records, checksums, tokens, the block writer.

Finished means *in the manifest*. A block task writes its chunk(s), computes
the checksum of the values, and only then writes its manifest entry
(:func:`write_block`); a block killed part-way has no entry and is recomputed
by the next run. Resume trusts an entry only when its token
(:func:`block_token`) matches the block's identity.

On object storage an entry is one ``PUT`` of ``manifest/<key>/zarr.json``, issued
after the chunk PUTs returned: an object is visible whole or not at all and S3
reads are strongly consistent after a write, so "in the manifest" still implies
"its chunks are stored".
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Set, Tuple

import numpy as np

from .blocks import Block
from .durable import chunk_files, fsync_files, staging, write_chunk
from .layout import FORMAT_VERSION, MANIFEST, WRITE_CONFIG, diag_path, gram_path, transpose
from .location import StoreLocation


def _crc32(a: np.ndarray) -> str:
    return "crc32:%08x" % zlib.crc32(memoryview(np.ascontiguousarray(a)).cast("B"))


def _sha256(a: np.ndarray) -> str:
    return "sha256:" + hashlib.sha256(memoryview(np.ascontiguousarray(a)).cast("B")).hexdigest()


#: Checksum of a block's values (C order, the stored dtype). CRC-32 is the
#: default: it catches truncation and altered bytes (burst errors up to 32 bits
#: always, others with probability 1 - 2^-32) at ~4 GB/s, so integrity costs
#: almost nothing next to the kernel. The algorithm is recorded in the store.
CHECKSUMS: Dict[str, Callable[[np.ndarray], str]] = {"crc32": _crc32, "sha256": _sha256}
DEFAULT_CHECKSUM = "crc32"


class Manifest:
    """Finished blocks: ``manifest/<key>`` Zarr groups whose attributes are records.

    Entries are written through zarr (one atomic ``zarr.json`` put each) by
    the worker that computed the block; they are listed and read with
    ``os.scandir``/``json`` because a store holds 10^4-10^5 of them and
    zarr's member listing opens each one.
    """

    def __init__(self, root: Any):
        self.location = StoreLocation.parse(root)
        self.root = self.location.path
        self.dir = Path(self.location.key(MANIFEST))    # a local store's manifest directory

    def keys(self) -> Set[str]:
        """Keys of every finished block (and finished input copy)."""
        if self.location.remote:
            return set(self.finish_times())
        try:
            with os.scandir(self.dir) as it:
                return {e.name for e in it if e.is_dir() and os.path.isfile(os.path.join(e.path, "zarr.json"))}
        except FileNotFoundError:
            return set()

    def finish_times(self, keys: Optional[Iterable[str]] = None) -> Dict[str, float]:
        """``{key: unix time its entry was written}``: an entry is written once, when its
        block finishes (a file's mtime, an object's LastModified; one listing remotely)."""
        if self.location.remote:
            out = {rel.split("/", 1)[0]: info["mtime"] for rel, info in self.location.objects(MANIFEST).items()
                   if rel.count("/") == 1 and rel.endswith("/zarr.json")}
            return out if keys is None else {k: out[k] for k in keys if k in out}
        times = {}
        for key in (self.keys() if keys is None else keys):
            try:
                times[key] = os.stat(self.dir / key / "zarr.json").st_mtime
            except FileNotFoundError:
                continue
        return times

    def get(self, key: str) -> Optional[Dict[str, Any]]:
        """The record of ``key``, or ``None`` when it has no (readable) entry."""
        doc = self.location.read_json(f"{MANIFEST}/{key}/zarr.json")
        return None if not isinstance(doc, dict) else doc.get("attributes") or {}

    def records(self, keys: Optional[Iterable[str]] = None) -> Dict[str, Dict[str, Any]]:
        """``{key: record}`` for ``keys`` (default: every entry)."""
        out = {}
        for key in (self.keys() if keys is None else keys):
            rec = self.get(key)
            if rec is not None:
                out[key] = rec
        return out

    def put(self, key: str, record: Dict[str, Any]) -> None:
        """Write (or replace) the entry of ``key``."""
        if self.location.remote:   # one PUT of the group's zarr.json (no listing, no delete)
            doc = {"zarr_format": 3, "node_type": "group", "attributes": record}
            self.location.write_bytes(f"{MANIFEST}/{key}/zarr.json", json.dumps(doc, indent=2).encode())
            return
        import zarr  # heavy import, kept out of `import ntkscale` and `ntkscale --help`

        zarr.create_group(store=str(self.root), path=f"{MANIFEST}/{key}", attributes=record, overwrite=True)

    def delete(self, keys: Iterable[str]) -> None:
        """Remove the entries of ``keys`` (absent ones are skipped)."""
        if self.location.remote:
            for key in keys:
                self.location.remove(f"{MANIFEST}/{key}/zarr.json")
            return
        import zarr  # heavy import, kept out of `import ntkscale` and `ntkscale --help`

        group = zarr.open_group(str(self.root), path=MANIFEST, mode="r+")
        for key in keys:
            if (self.dir / key).exists():
                del group[key]


def write_block(root: Any, block: Block, values: Dict[str, np.ndarray], record: Dict[str, Any],
                checksum: str = DEFAULT_CHECKSUM) -> Dict[str, Any]:
    """Worker side: write a block's chunk(s), checksum them, then its manifest entry.
    ``root`` is the store's directory, or the zarr ``FsspecStore`` of a remote store
    (:meth:`~ntkscale.store.location.StoreLocation.zarr_store`): the worker writes
    straight to the bucket.

    In a local store a whole chunk (every block but the ragged ones at the edges) is
    written as its raw bytes by :func:`~ntkscale.store.durable.write_chunk`, the mirror
    transposed once into a reused buffer; other chunks go through zarr. Every chunk file
    is fsync'd after all of the block's are written. The
    record gains ``write_data_s`` (chunks written and fsync'd) and ``write_entry_s``
    (checksums and the manifest entry)."""
    import zarr  # heavy import, kept out of `import ntkscale` and `ntkscale --help`

    t0 = time.perf_counter()
    (r0, r1), (c0, c1) = block.rows, block.cols
    local = isinstance(root, (str, os.PathLike))
    written = []
    for kind, a in values.items():
        path = diag_path(block.row_set, kind) if block.is_diag else gram_path(block.part, kind)
        arr = zarr.open_array(store=root, path=path, mode="r+", zarr_format=3, config=WRITE_CONFIG)
        spans = [((r0, r1), None)] if block.is_diag else [((r0, r1), (c0, c1))]
        if block.mirrored:
            spans.append(((c0, c1), (r0, r1)))
        for k, (rows, cols) in enumerate(spans):
            mirror = k == 1
            raw = raw_chunk_file(Path(root) / path, arr, rows, cols, a.T if mirror else a) if local else None
            if raw is not None:
                write_chunk(raw, transpose(a, out=staging(a.shape[::-1], a.dtype)) if mirror else a)
                written.append(raw)
                continue
            region = (slice(*rows),) if cols is None else (slice(*rows), slice(*cols))
            arr[region] = transpose(a) if mirror else a
            if local:
                written += list(chunk_files(Path(root) / path, arr.metadata, rows, cols))
    fsync_files(written)   # the data (and the renames) on disk before the entry that vouches for it
    t1 = time.perf_counter()
    record = dict(record, checksums={kind: CHECKSUMS[checksum](a) for kind, a in values.items()})
    manifest = Manifest(root)
    manifest.put(block.key, record)
    if local:
        fsync_files([manifest.dir / block.key / "zarr.json"])
    return dict(record, write_data_s=round(t1 - t0, 6), write_entry_s=round(time.perf_counter() - t1, 6))


def raw_chunk_file(array_dir: Path, arr: Any, rows: Tuple[int, int], cols: Optional[Tuple[int, int]],
                   a: np.ndarray) -> Optional[Path]:
    """The file of the one chunk that ``a`` fills exactly at ``rows`` x ``cols``, when
    that file is ``a``'s bytes in C order: plain Zarr v3 ``bytes`` codec (no
    compression), the array's dtype, little endian. ``None`` otherwise (zarr writes it)."""
    md = arr.metadata
    codecs = getattr(md, "codecs", ())
    if len(codecs) != 1 or type(codecs[0]).__name__ != "BytesCodec" or sys.byteorder != "little":
        return None
    if np.dtype(arr.dtype) != a.dtype or a.dtype.byteorder == ">":
        return None
    chunks = tuple(md.chunk_grid.chunk_shape)
    spans = [rows] if cols is None else [rows, cols]
    if tuple(a.shape) != chunks or any(lo % c or hi - lo != c for (lo, hi), c in zip(spans, chunks)):
        return None
    return array_dir / md.encode_chunk_key(tuple(lo // c for (lo, _), c in zip(spans, chunks)))


def block_token(meta: Mapping[str, Any], block: Block) -> str:
    """Identity of a block's content: spec, dtype, block size, the fingerprints
    of the inputs it reads, and its index. Resume trusts a manifest entry only
    when its token matches. A plain SHA-256 of canonical JSON (not
    ``dask.base.tokenize``, whose output may change between Dask versions,
    which would silently invalidate old stores)."""
    fps = meta.get("fingerprints") or {}
    sets = ("train", "test") if block.row_set == "test" else ("train",)
    ident = [FORMAT_VERSION, meta["spec_hash"], meta["dtype"], int(meta["block_size"]),
             [(fps.get(s) or {}).get("x") for s in sets], block.key]
    return hashlib.sha256(json.dumps(ident, separators=(",", ":")).encode()).hexdigest()[:32]
