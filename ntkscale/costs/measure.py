"""Measurements on this machine that turn a plan into a time estimate.

* :func:`calibrate` -- seconds per kernel entry on one core, timed on a small block
  of the run's own data;
* :func:`write_bandwidth` -- bytes per second of one fsync'd file write on the store's disk;
* :func:`storage_calibration` -- the median of a few of those, as a calibration stores it;
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


def storage_calibration(directory: str, nbytes: int = 256 << 20, repeats: int = 3) -> Dict[str, Any]:
    """The store's side of a calibration: the median of ``repeats`` fsync'd sequential
    writes of ``nbytes`` in ``directory``, with where and when it was measured."""
    rates = sorted(write_bandwidth(directory, nbytes) for _ in range(max(1, repeats)))
    return {"write_bytes_per_s": rates[len(rates) // 2], "all_write_bytes_per_s": rates,
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
