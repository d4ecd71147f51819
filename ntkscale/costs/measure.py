"""Measurements on this machine that turn a plan into a time estimate.

* :func:`calibrate` -- seconds per kernel entry on one core, timed on a small block
  of the run's own data;
* :func:`write_bandwidth` -- bytes per second of one fsync'd file write on the store's disk;
* :func:`chunked_write_bandwidth` -- the same in the store's pattern (chunk files, each fsync'd);
* :func:`storage_calibration` -- medians of a few of both, as a calibration stores them;
* :func:`measure_read_bandwidth` -- bytes per second reading whole chunks of a stored Gram;
* :func:`measure_flop_rate` -- effective kernel flops per second on a small block.

The solver's stored-vs-streamed choice (``solvers.operator.choose_mode``) takes the
last two as inputs.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import tempfile
import time
from typing import Any, Dict

import numba
import numpy as np
from threadpoolctl import threadpool_limits


def calibrate(kernel_fn: Any, x: Any, dtype: str, get: Any, rows: int = 256) -> float:
    """Seconds per kernel entry on one core, timed on a rows × rows block of the data."""
    xs = np.asarray(x[:rows], dtype=dtype)
    ys = xs[::-1].copy()
    numba_threads = None
    try:
        numba_threads = numba.get_num_threads()
        numba.set_num_threads(1)
    except Exception:
        pass
    try:
        with threadpool_limits(1):
            kernel_fn(xs[:8], ys[:8], get=tuple(get))        # warm-up (JIT, caches)
            best = float("inf")
            for _ in range(3):
                t = time.perf_counter()
                kernel_fn(xs, ys, get=tuple(get))
                best = min(best, time.perf_counter() - t)
    finally:
        if numba_threads:
            numba.set_num_threads(numba_threads)
    return best / (len(xs) * len(ys))


def write_bandwidth(directory: str, nbytes: int = 64 << 20, fsync: bool = True) -> float:
    """Bytes/s of one sequential file write (then deleted) in ``directory`` (the store's
    disk), ``fsync``'d inside the clock as the store's chunk files are
    (``store/durable.py``): without it the page cache absorbs the write and the
    figure says nothing about the disk."""
    os.makedirs(directory, exist_ok=True)
    data = np.ones(nbytes // 8)
    fd, path = tempfile.mkstemp(prefix=".ntkscale-plan-", dir=directory)
    try:
        t = time.perf_counter()
        with os.fdopen(fd, "wb") as f:
            f.write(memoryview(data).cast("B"))
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        return nbytes / max(time.perf_counter() - t, 1e-9)
    finally:
        os.remove(path)


def chunked_write_bandwidth(directory: str, nbytes: int = 256 << 20, chunk_bytes: int = 8 << 20) -> float:
    """Bytes/s writing ``nbytes`` as files of ``chunk_bytes``, each ``fsync``'d, then their
    directory: the store's own pattern (one file per block chunk, ``store/durable.py``;
    8 MiB is a 1024 × 1024 float64 block)."""
    os.makedirs(directory, exist_ok=True)
    data = memoryview(np.ones(max(1, chunk_bytes // 8))).cast("B")
    files = max(1, nbytes // len(data))
    folder = tempfile.mkdtemp(prefix=".ntkscale-plan-", dir=directory)
    try:
        t = time.perf_counter()
        for i in range(files):
            fd = os.open(os.path.join(folder, str(i)), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return files * len(data) / max(time.perf_counter() - t, 1e-9)
    finally:
        for name in os.listdir(folder):
            os.remove(os.path.join(folder, name))
        os.rmdir(folder)


def storage_calibration(directory: str, nbytes: int = 256 << 20, repeats: int = 3,
                        chunk_bytes: int = 8 << 20) -> Dict[str, Any]:
    """The store's side of a calibration, in ``directory``: ``write_bytes_per_s``, the median of
    ``repeats`` writes of ``nbytes`` in the store's pattern (:func:`chunked_write_bandwidth`),
    which the projection uses; and beside it one fsync'd file of ``nbytes``
    (:func:`write_bandwidth`), the disk's plain sequential rate; with where and when."""
    chunked = sorted(chunked_write_bandwidth(directory, nbytes, chunk_bytes) for _ in range(max(1, repeats)))
    single = sorted(write_bandwidth(directory, nbytes) for _ in range(max(1, repeats)))
    return {"write_bytes_per_s": chunked[len(chunked) // 2], "all_write_bytes_per_s": chunked,
            "chunk_bytes": int(chunk_bytes), "sequential_bytes_per_s": single[len(single) // 2],
            "all_sequential_bytes_per_s": single,
            "method": "files of chunk_bytes, each fsync'd, then their directory (the store's pattern)",
            "path": os.path.abspath(directory), "nbytes": int(nbytes), "fsync": True,
            "load_1min": round(os.getloadavg()[0], 2),
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def measure_read_bandwidth(array: Any, max_chunks: int = 4) -> float:
    """Bytes per second reading a few whole chunks of a Zarr array."""
    c0, c1 = array.chunks[:2]
    rows = min(array.shape[0], c0 * max(1, max_chunks // max(1, math.ceil(array.shape[1] / c1))))
    t = time.perf_counter()
    block = np.asarray(array[:rows, :])
    return block.nbytes / max(time.perf_counter() - t, 1e-6)


def measure_flop_rate(kernel_fn: Any, x: np.ndarray, rows: int = 256) -> float:
    """Effective kernel flops per second: the cost model's flops per entry
    times the entries of one timed ``rows x rows`` block, over its seconds."""
    xs = np.asarray(x[:rows])
    kernel_fn(xs[:8], xs[:8])  # warm caches / JIT
    t = time.perf_counter()
    kernel_fn(xs, xs)
    dt = max(time.perf_counter() - t, 1e-6)
    return kernel_fn.cost(tuple(xs.shape[1:]))["flops"] * len(xs) ** 2 / dt
