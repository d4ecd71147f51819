"""Dask worker preload: each worker process of a multi-GPU job takes one GPU.

Used by SLURM jobs with several GPUs and by ``cluster: {kind: local, gpus: ...}``.

A SLURM job with ``gpus_per_job: N`` runs ``N`` worker processes (``dask worker --nworkers
N``), named ``<job>-0`` ... ``<job>-(N-1)``; SLURM gives the job ``CUDA_VISIBLE_DEVICES``
for its N GPUs. ``--preload ntkscale.cluster.gpu`` narrows ``CUDA_VISIBLE_DEVICES`` to the
process's own GPU before anything initialises CUDA (CuPy is imported lazily by the
kernel engine), so every worker sees exactly one device as device 0.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Mapping, Optional, Sequence, Tuple

from ..errors import GpuConfigError

logger = logging.getLogger(__name__)


def device_for_worker(name: str, env: Mapping[str, str]) -> Optional[str]:
    """The CUDA device (as listed in ``CUDA_VISIBLE_DEVICES``) for worker ``name``, or None.

    The local index is the worker name's numeric suffix (``<job>-i``), or the
    name itself for a ``LocalCluster`` worker (named ``0``, ``1``, ...); with
    ``NTKSCALE_WORKERS_PER_JOB`` set it must be below that count.
    """
    per_job = int(env.get("NTKSCALE_WORKERS_PER_JOB", "0") or 0)
    head, _, tail = str(name).rpartition("-")
    if not tail.isdigit() or (not head and str(name) != tail):
        return None
    index = int(tail)
    if per_job and index >= per_job:
        return None
    visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if visible:
        return visible[index] if index < len(visible) else None
    return str(index)


def _cuda_devices() -> Tuple[int, str]:
    """(devices this process sees, why none) via CuPy; (0, reason) without CuPy or a driver."""
    try:
        import cupy  # noqa: PLC0415 (optional dependency: ntkscale[gpu])
    except ImportError:
        return 0, "CuPy is not installed (pip install 'ntkscale[gpu]' on a machine with NVIDIA GPUs)"
    try:
        count = int(cupy.cuda.runtime.getDeviceCount())
    except Exception as exc:  # no driver, no device
        return 0, f"CuPy sees no usable CUDA device ({type(exc).__name__}: {exc})".replace("\n", " ")
    return count, "" if count else "CuPy sees no CUDA device"


def check_gpus(requested: Sequence[str], env: Optional[Mapping[str, str]] = None,
               devices: Any = _cuda_devices) -> int:
    """Refuse, in one line (:class:`~ntkscale.errors.GpuConfigError`), GPU workers this
    machine cannot start: no CuPy, no CUDA device, or device ids ``requested``
    (``cluster.gpus``) that are not present: numeric ids beyond the devices CuPy
    counts, or ids outside ``CUDA_VISIBLE_DEVICES`` when that is set. Returns the
    device count. ``devices() -> (count, why_none)`` is CuPy's count (a parameter
    for the tests of the counting rules)."""
    env = os.environ if env is None else env
    count, why = devices()
    if count == 0:
        raise GpuConfigError(f"cluster.gpus asks for GPU(s) {', '.join(requested)} but {why}; "
                             "leave gpus out for CPU workers")
    visible = [d.strip() for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if "CUDA_VISIBLE_DEVICES" in env:
        missing = [d for d in requested if d not in visible]
        where = f"CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']!r}"
    else:
        missing = [d for d in requested if d.isdigit() and int(d) >= count]
        where = f"{count} device(s) present (ids 0..{count - 1})"
    if missing:
        raise GpuConfigError(f"cluster.gpus names GPU(s) {', '.join(missing)} that this machine does "
                             f"not have ({where}); list present devices or use gpus: all")
    if len(requested) > count:
        raise GpuConfigError(f"cluster.gpus asks for {len(requested)} GPUs but {count} are present; "
                             "ask for fewer (gpus: all uses every one)")
    return count


def free_device_memory() -> Tuple[int, int]:
    """(free, total) bytes of this process's current CUDA device (CuPy)."""
    import cupy  # noqa: PLC0415 (optional dependency: ntkscale[gpu])

    free, total = cupy.cuda.Device().mem_info
    return int(free), int(total)


#: Fraction of a GPU's free memory one block task may plan with (the rest: CuPy's pool,
#: the CUDA context, the kernel's pair lists and the other threads of the worker).
GPU_BLOCK_FRACTION = 0.4


def gpu_task_memory(threads_per_worker: int = 1, fraction: float = GPU_BLOCK_FRACTION) -> int:
    """Bytes a block task on this GPU may use: ``fraction`` of the device's free memory,
    shared by the worker's computing threads (the planner's ``memory_per_task`` on GPU
    workers)."""
    free, _ = free_device_memory()
    return int(free * fraction) // max(1, int(threads_per_worker))


def dask_setup(worker) -> None:  # the preload hook distributed calls
    device = device_for_worker(getattr(worker, "name", ""), os.environ)
    if device is None:
        logger.warning("ntkscale.cluster.gpu: no GPU index in worker name %r; leaving "
                       "CUDA_VISIBLE_DEVICES=%r", worker.name, os.environ.get("CUDA_VISIBLE_DEVICES"))
        return
    if "cupy" in sys.modules:
        logger.warning("ntkscale.cluster.gpu: CuPy was imported before the preload; the GPU "
                       "choice may not take effect")
    os.environ["CUDA_VISIBLE_DEVICES"] = device
    logger.info("ntkscale.cluster.gpu: worker %s uses GPU %s", worker.name, device)
