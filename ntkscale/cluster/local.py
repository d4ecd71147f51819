"""``cluster: {kind: local}``: a ``distributed.LocalCluster`` of worker processes.

Each worker gets ``threads_per_worker + io_threads`` Dask threads; at most
``threads_per_worker`` of them compute at once (:func:`ntkscale.gram.schedule.compute_gate`),
the others write finished blocks meanwhile. With ``gpus`` there is one worker per
listed CUDA device, pinned to it by the :mod:`ntkscale.cluster.gpu` preload. The
cluster is closed again when the run ends.
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator

from ..config.cluster import LocalClusterConfig

#: Environment of local worker processes. Each Dask thread runs one block, so
#: the kernel engine's own threads (BLAS, numba) are pinned to one per task;
#: Dask already sets OMP/MKL/OPENBLAS_NUM_THREADS=1 (distributed.nanny.pre-spawn-environ).
WORKER_ENV = {"NUMBA_NUM_THREADS": "1"}


def local_cluster_kwargs(cfg: LocalClusterConfig, security: Any = None) -> Dict[str, Any]:
    """Keyword arguments of ``distributed.LocalCluster`` for this config (no I/O)."""
    kwargs: Dict[str, Any] = dict(
        n_workers=cfg.n_workers, threads_per_worker=cfg.threads_per_worker + cfg.io_threads,
        memory_limit=cfg.memory_limit if cfg.memory_limit is not None else "auto",
        processes=cfg.processes, dashboard_address=cfg.dashboard_address,
    )
    if cfg.processes:
        kwargs["env"] = dict(WORKER_ENV)
    if cfg.gpus:
        # One worker process per device: each sees the whole list and its preload
        # keeps its own entry (worker i -> gpus[i]) before CuPy initialises CUDA.
        # dask-cuda's LocalCUDACluster does the same, but would add a dependency (and
        # its own worker class) for what one environment variable does here.
        kwargs["env"].update(CUDA_VISIBLE_DEVICES=",".join(cfg.gpus),
                             NTKSCALE_WORKERS_PER_JOB=str(len(cfg.gpus)))
        kwargs["preload"] = ["ntkscale.cluster.gpu"]
    if security is not None:
        kwargs["security"] = security
        kwargs["protocol"] = "tls://"
    return kwargs


@contextlib.contextmanager
def open_local(cfg: LocalClusterConfig, security: Any = None) -> Iterator[Any]:
    """A Client on a new LocalCluster; both are closed on exit."""
    from distributed import Client, LocalCluster  # noqa: PLC0415 (heavy: imported when a cluster opens)

    with LocalCluster(**local_cluster_kwargs(cfg, security)) as cluster, \
            Client(cluster, security=security) as client:
        yield client
