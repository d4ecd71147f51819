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
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Set, Tuple


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
    for d in dirs:
        fd = os.open(d, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return count
