"""Durable local writes: ``fsync`` a block's chunk files before its manifest entry.

zarr's LocalStore writes each chunk to a temporary file and renames it into
place, so a chunk is never seen half written; but until the kernel flushes the
page cache the data may exist only in memory, and a power loss could leave a
manifest entry whose chunk never reached the disk (``verify`` would then find
its checksum wrong and recompute it, but the work would be lost). Flushing
the chunk files and their directories first makes the entry a promise that
the data is on disk, and keeps the page cache from hiding the disk in
benchmarks (issue 17). Object storage needs none of this: a PUT is durable
when it returns. Hand-written because zarr's LocalStore has no fsync option.

A whole, uncompressed chunk is written by :func:`write_chunk` instead of
through zarr: its file is the array's bytes in C order (Zarr v3's ``bytes``
codec, little endian), so one ``write`` from the block's own memory does it,
without zarr's encode copies (through the page cache, or with ``O_DIRECT``:
:data:`DIRECT_IO` says which and why; issue 14, ``benchmarks/bench_gram.py``).
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator, Set, Tuple

import numpy as np

#: ``O_DIRECT`` transfers: buffer address and length are multiples of this.
DIRECT_ALIGN = 4096

_local = threading.local()


def chunk_files(array_dir: Path, metadata: Any, rows: Tuple[int, int], cols: Tuple[int, int] = None) -> Iterator[Path]:
    """Files of the chunks of the array at ``array_dir`` that the slice ``rows`` x ``cols`` touches."""
    chunks = metadata.chunks if hasattr(metadata, "chunks") else metadata.chunk_grid.chunk_shape
    spans = [rows] if cols is None else [rows, cols]
    ranges = [range(lo // c, (hi - 1) // c + 1) for (lo, hi), c in zip(spans, chunks)]
    if len(ranges) == 1:
        coords: Iterable[Tuple[int, ...]] = ((i,) for i in ranges[0])
    else:
        coords = ((i, j) for i in ranges[0] for j in ranges[1])
    for idx in coords:
        yield array_dir / metadata.encode_chunk_key(idx)


def fsync_files(paths: Iterable[Path]) -> int:
    """``fsync`` each existing file and then each of their directories; returns how many files."""
    dirs: Set[Path] = set()
    count = 0
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:   # an all-fill chunk zarr chose not to write
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        count += 1
        dirs.add(path.parent)
    fsync_dirs(dirs)
    return count


def fsync_dirs(dirs: Iterable[Path]) -> None:
    """``fsync`` directories: the names of files renamed into them reach the disk."""
    for d in set(dirs):
        fd = os.open(d, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def staging(shape: Tuple[int, ...], dtype: Any) -> np.ndarray:
    """A page-aligned scratch array of ``shape`` for this thread, reused by its next call
    (what :func:`write_chunk` writes with ``O_DIRECT`` without a copy; a mirror chunk is
    transposed straight into it). Valid until this thread's next call."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    buf = getattr(_local, "buf", None)
    if buf is None or len(buf) < nbytes:
        if buf is not None:
            buf.close()
        buf = _local.buf = mmap.mmap(-1, max(nbytes, 1))
    return np.frombuffer(buf, dtype=dtype, count=int(np.prod(shape))).reshape(shape)


def _aligned(a: np.ndarray) -> bool:
    return a.ctypes.data % DIRECT_ALIGN == 0 and a.nbytes % DIRECT_ALIGN == 0


#: Whole chunks bypass the page cache (``O_DIRECT``)? Measured on this project's 2-core
#: VM disk (ext4 on virtio, fsync'd 64 MiB chunks, 512 MiB in all): through the page cache
#: 0.41 GB/s with one writer and 0.72 GB/s with two, at 0.4-0.65 CPU-s; ``O_DIRECT``
#: 0.31-0.39 GB/s at 0.15-0.35 CPU-s. The disk binds the Gram engine there, so the page
#: cache wins; a disk fast enough for the copy into the page cache to bind would flip it.
DIRECT_IO = False


def write_chunk(path: Path, data: np.ndarray, direct: bool = DIRECT_IO) -> None:
    """Write the bytes of C-contiguous ``data`` as the file ``path``: into a temporary
    ``*.partial`` file (what :meth:`GramStore.remove_partial_writes` cleans up after a
    killed run), then renamed into place. Not yet durable: the caller ``fsync``s the
    files and their directories (:func:`fsync_files`) before anything vouches for them,
    all of a block's chunks at once, so the disk writes one while the next is copied.

    ``direct``: with ``O_DIRECT`` when the length is a multiple of :data:`DIRECT_ALIGN`
    and the file system takes it (``data`` is copied into :func:`staging` first unless
    it is aligned already); otherwise through the page cache."""
    data = np.ascontiguousarray(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
    fd = None
    try:
        if direct and data.nbytes % DIRECT_ALIGN == 0 and data.nbytes and hasattr(os, "O_DIRECT"):
            fd = _write_direct(tmp, data)
        if fd is None:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            _write_all(fd, memoryview(data).cast("B"))
        os.close(fd)
        fd = None
        os.replace(tmp, path)
    except BaseException:
        if fd is not None:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise


def _write_direct(tmp: Path, data: np.ndarray) -> Any:
    """``tmp`` written with ``O_DIRECT``: its open descriptor, or None when the file
    system refuses ``O_DIRECT`` (EINVAL: tmpfs on older kernels, some FUSE mounts)."""
    if not _aligned(data):
        buf = staging(data.shape, data.dtype)
        buf[...] = data
        data = buf
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        return None
    try:
        _write_all(fd, memoryview(data).cast("B"))
    except OSError as exc:
        os.close(fd)
        if exc.errno != errno.EINVAL:
            raise
        return None
    return fd


def _write_all(fd: int, view: memoryview) -> None:
    done = 0
    while done < len(view):
        done += os.write(fd, view[done:])
