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
from typing import Mapping, Optional

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
