"""Measurements on this machine that turn a plan into a time estimate.

* :func:`calibrate` -- seconds per kernel entry on one core, timed on a small block
  of the run's own data;
* :func:`write_bandwidth` -- bytes per second of one file write on the store's disk.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

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


def write_bandwidth(directory: str, nbytes: int = 64 << 20) -> float:
    """Bytes/s of one file write (then deleted) in ``directory`` (the store's disk)."""
    os.makedirs(directory, exist_ok=True)
    data = np.ones(nbytes // 8)
    fd, path = tempfile.mkstemp(prefix=".ntkscale-plan-", dir=directory)
    try:
        t = time.perf_counter()
        with os.fdopen(fd, "wb") as f:
            f.write(memoryview(data).cast("B"))
        return nbytes / max(time.perf_counter() - t, 1e-9)
    finally:
        os.remove(path)
