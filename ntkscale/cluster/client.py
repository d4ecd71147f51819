"""Cluster configs -> a ``distributed.Client``.

``kind: local``    a ``LocalCluster`` of worker processes (the default), closed
                   again when the run ends. Each worker gets ``threads_per_worker
                   + io_threads`` Dask threads; at most ``threads_per_worker``
                   of them compute at once (:func:`ntkscale.gram.schedule.compute_gate`),
                   the others write finished blocks meanwhile. With ``gpus``
                   there is one worker per listed CUDA device, pinned to it.
``kind: address``  a scheduler someone started (``dask scheduler`` +
                   ``dask worker``, a SLURM job, a Kubernetes DaskCluster):
                   ``address: tcp://host:8786`` or ``scheduler_file: path``.
                   Workers must see the store at the same path (shared disk).

Later kinds (``slurm`` via dask-jobqueue, ``kubernetes`` via the
dask-kubernetes operator) register a config parser with
:func:`ntkscale.config.run.register_cluster_kind` and a client factory with
:func:`register_client_factory`; nothing else changes.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager, Dict, Iterator, Optional

from ..errors import ConfigError

#: Environment of local worker processes. Each Dask thread runs one block, so
#: the kernel engine's own threads (BLAS, numba) are pinned to one per task;
#: Dask already sets OMP/MKL/OPENBLAS_NUM_THREADS=1 (distributed.nanny.pre-spawn-environ).
WORKER_ENV = {"NUMBA_NUM_THREADS": "1"}

ClientFactory = Callable[..., ContextManager[Any]]
CLIENT_FACTORIES: Dict[str, ClientFactory] = {}


def register_client_factory(kind: str, factory: ClientFactory) -> None:
    """``factory(cluster_config, security=None)`` is a context manager yielding a Client
    (``security``: a ``distributed.security.Security`` from the ``tls:`` section)."""
    CLIENT_FACTORIES[kind] = factory


@contextlib.contextmanager
def _local(cfg: Any, security: Any = None) -> Iterator[Any]:
    from distributed import Client, LocalCluster  # noqa: PLC0415

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
    with LocalCluster(**kwargs) as cluster, Client(cluster, security=security) as client:
        yield client


@contextlib.contextmanager
def _address(cfg: Any, security: Any = None) -> Iterator[Any]:
    from distributed import Client  # noqa: PLC0415

    import dask  # noqa: PLC0415

    where = cfg.address or f"the scheduler in {cfg.scheduler_file}"
    timeout = dask.config.get("distributed.comm.timeouts.connect")
    try:
        client = Client(cfg.address, timeout=timeout, security=security) if cfg.address else Client(
            scheduler_file=cfg.scheduler_file, timeout=timeout, security=security)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ConfigError(f"cluster: cannot reach {where} ({type(exc).__name__}: {exc}); is "
                          "`dask scheduler` running and the address right?") from None
    with client:
        yield client


register_client_factory("local", _local)
register_client_factory("address", _address)


def open_client(cfg: Any, security: Any = None) -> ContextManager[Any]:
    """Context manager: a Client for ``cfg`` (closed, with its cluster, on exit)."""
    from . import backends as cluster_backends  # noqa: F401,PLC0415 (registers slurm and kubernetes)

    try:
        factory = CLIENT_FACTORIES[cfg.kind]
    except KeyError:
        raise ConfigError(f"cluster.kind {cfg.kind!r} has no client factory in this installation") from None
    return factory(cfg, security=security)


def dashboard_link(client: Any) -> Optional[str]:
    """The Dask dashboard URL, or None when the scheduler serves none (no bokeh)."""
    try:
        if "dashboard" not in client.scheduler_info().get("services", {}):
            return None
        return client.dashboard_link
    except Exception:
        return None


def total_threads(client: Any) -> int:
    """Task slots on the cluster now (sum of worker threads)."""
    try:
        return max(1, sum(client.nthreads().values()))
    except Exception:
        return 1
