"""A run's memory and task-slot budget: what one block task may hold, and how many run at once.

Read by the Gram planner (:mod:`ntkscale.stages.gram`), ``ntkscale plan`` and the preflight.
"""

from __future__ import annotations

from typing import Optional

import psutil

from ..cluster.gpu import gpu_task_memory
from ..config.run import AddressClusterConfig, LocalClusterConfig, RunConfig
from ..gram.preflight import TARGET_FRACTION, WORKER_BASELINE

#: Per-task memory when neither the config nor the cluster says (address clusters).
DEFAULT_TASK_MEMORY = 2 << 30
#: The smallest per-task budget planned (a tiny memory_limit is then refused by the preflight).
MIN_TASK_MEMORY = 16 << 20

def worker_memory(config: RunConfig) -> Optional[int]:
    """``memory_limit`` of one local worker (Dask's "auto": the machine's memory
    shared by the workers), or None when the cluster does not say."""
    c = config.cluster
    if not isinstance(c, LocalClusterConfig):
        return None
    if c.memory_limit:
        return int(c.memory_limit)
    return int(psutil.virtual_memory().total) // max(1, c.slots // c.threads_per_worker)


def blocks_per_worker(config: RunConfig) -> int:
    """Block tasks a worker holds at once (its computing and writing threads)."""
    c = config.cluster
    return c.threads_per_worker + c.io_threads if isinstance(c, LocalClusterConfig) else 1


def task_memory(config: RunConfig) -> int:
    """Memory budget of one block task, for planning: a local worker's blocks fit in
    ``TARGET_FRACTION`` (60 %) of its memory_limit after the worker's baseline, well
    under Dask's pause threshold (80 %), see :mod:`ntkscale.gram.preflight`."""
    if config.memory_budget:
        return config.memory_budget
    limit = worker_memory(config)
    host = DEFAULT_TASK_MEMORY
    if limit is not None:
        usable = int(limit * TARGET_FRACTION) - WORKER_BASELINE
        host = max(MIN_TASK_MEMORY, usable // blocks_per_worker(config))
    device = gpu_memory(config)
    return host if device is None else max(MIN_TASK_MEMORY, min(host, device))


def gpu_memory(config: RunConfig) -> Optional[int]:
    """Block memory on a local GPU worker, from the device's free memory (None: no GPUs
    configured, or none usable here: ``gram`` then refuses the config before any work)."""
    c = config.cluster
    if not (isinstance(c, LocalClusterConfig) and c.gpus):
        return None
    try:
        return gpu_task_memory(c.threads_per_worker)
    except (ImportError, RuntimeError):   # no CuPy / no device (CuPy's CUDA errors are RuntimeErrors)
        return None


def io_threads(config: RunConfig) -> int:
    """Threads per worker that write finished blocks instead of computing."""
    return int(getattr(config.cluster, "io_threads", 0) or 0)


def planned_slots(config: RunConfig) -> int:
    c = config.cluster
    if isinstance(c, LocalClusterConfig):
        return c.slots
    if isinstance(c, AddressClusterConfig) and c.slots:
        return c.slots
    return getattr(c, "slots", None) or 1
