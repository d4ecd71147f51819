"""``cluster: {kind: local}``: a ``distributed.LocalCluster`` of worker processes.

Each worker gets ``threads_per_worker + io_threads`` Dask threads; at most
``threads_per_worker`` of them compute at once (:func:`ntkscale.gram.schedule.compute_gate`),
the others write finished blocks meanwhile. With ``gpus`` there is one worker per
listed CUDA device: dask-cuda's ``LocalCUDACluster`` when dask-cuda is installed
(``ntkscale[gpu]``; it rotates ``CUDA_VISIBLE_DEVICES`` so worker i sees device i
first), else a ``LocalCluster`` whose workers the :mod:`ntkscale.cluster.gpu` preload
pins to their device. Either way every worker's CUDA context is on its own GPU. The
cluster is closed again when the run ends.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Dict, Iterator, Optional

from ..config.cluster import LocalClusterConfig
from ..errors import ClusterStartError
from .gpu import check_gpus

logger = logging.getLogger(__name__)

#: Tries to start a LocalCluster: a worker killed while the cluster starts fails the
#: start ("Nanny failed to start"); a second try on fresh processes gets past it.
START_ATTEMPTS = 2

#: Environment of local worker processes. Each Dask thread runs one block, so
#: the kernel engine's own threads (BLAS, numba) are pinned to one per task;
#: Dask already sets OMP/MKL/OPENBLAS_NUM_THREADS=1 (distributed.nanny.pre-spawn-environ).
WORKER_ENV = {"NUMBA_NUM_THREADS": "1"}


def cuda_cluster_class() -> Optional[Any]:
    """dask-cuda's ``LocalCUDACluster``, or None when dask-cuda is not installed."""
    try:
        from dask_cuda import LocalCUDACluster  # noqa: PLC0415 (optional: ntkscale[gpu])
    except ImportError:
        return None
    return LocalCUDACluster


def local_cluster_kwargs(cfg: LocalClusterConfig, security: Any = None,
                         cuda: bool = False) -> Dict[str, Any]:
    """Keyword arguments of ``distributed.LocalCluster`` for this config (no I/O);
    ``cuda``: of dask-cuda's ``LocalCUDACluster`` instead (only with ``gpus``)."""
    kwargs: Dict[str, Any] = dict(
        n_workers=cfg.n_workers, threads_per_worker=cfg.threads_per_worker + cfg.io_threads,
        memory_limit=cfg.memory_limit if cfg.memory_limit is not None else "auto",
        processes=cfg.processes, dashboard_address=cfg.dashboard_address,
    )
    if cfg.processes:
        kwargs["env"] = dict(WORKER_ENV)
    if cfg.gpus and cuda:
        # LocalCUDACluster: one worker per listed device (it always uses processes).
        del kwargs["processes"]
        kwargs["CUDA_VISIBLE_DEVICES"] = ",".join(cfg.gpus)
    elif cfg.gpus:
        # Without dask-cuda: one worker process per device; each sees the whole list
        # and its preload keeps its own entry (worker i -> gpus[i]) before CuPy
        # initialises CUDA.
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
    with start_local_cluster(cfg, security) as cluster:
        from distributed import Client  # noqa: PLC0415 (heavy: imported when a cluster opens)

        with Client(cluster, security=security) as client:
            client.run(quiet_heartbeat_loss)
            yield client


#: distributed's log line when a worker's heartbeat finds the scheduler gone.
HEARTBEAT_LOST = "Failed to communicate with scheduler during heartbeat"


class _HeartbeatLossFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(HEARTBEAT_LOST)


def quiet_heartbeat_loss() -> None:
    """In a worker of a local cluster: drop distributed's heartbeat-failure record.

    The scheduler of a local cluster lives and dies with the command, so a worker
    that still runs a task when the command closes it (after a block's persistent
    failure, say) may heartbeat once into the closed scheduler, and distributed logs
    that with a traceback beneath the command's one-line error. Nothing else can
    close this scheduler, so the record says nothing here; clusters on other hosts
    keep it."""
    worker_log = logging.getLogger("distributed.worker")
    if not any(isinstance(f, _HeartbeatLossFilter) for f in worker_log.filters):
        worker_log.addFilter(_HeartbeatLossFilter())


def start_local_cluster(cfg: LocalClusterConfig, security: Any = None) -> Any:
    """A started LocalCluster; a start that fails (a worker lost while starting) is
    retried once on fresh processes, then :class:`~ntkscale.errors.ClusterStartError`."""
    from distributed import LocalCluster  # noqa: PLC0415 (heavy: imported when a cluster opens)

    if cfg.gpus:
        check_gpus(cfg.gpus)   # no CuPy / no device / absent ids: one line, no workers started
    cuda_cls = cuda_cluster_class() if cfg.gpus else None
    factory = cuda_cls or LocalCluster
    attempt = 1
    while True:
        try:
            return factory(**local_cluster_kwargs(cfg, security, cuda=cuda_cls is not None))
        except (RuntimeError, OSError, TimeoutError) as exc:
            why = f"{type(exc).__name__}: {exc}" + (f" ({exc.__cause__})" if exc.__cause__ else "")
            if attempt >= START_ATTEMPTS:
                raise ClusterStartError(
                    f"the local Dask cluster did not start ({START_ATTEMPTS} tries; last: {why}); check free "
                    "memory and ports, or lower cluster.n_workers") from None
            logger.warning("ntkscale: the local Dask cluster failed to start (%s); trying once more", why)
            attempt += 1
