"""Cluster configs -> a ``distributed.Client``, one opener per ``cluster.kind``.

:data:`OPENERS` is the one registry: ``kind -> opener(cluster_config, security=None)``,
a context manager yielding a Client and closing it (and any cluster it made) on exit.
The kinds are those of :data:`ntkscale.config.cluster.CLUSTER_PARSERS`; each has its
module (:mod:`.local`, :mod:`.address`, :mod:`.slurm`, :mod:`.kubernetes`).
"""

from __future__ import annotations

from typing import Any, Callable, ContextManager, Dict, Optional

from ..config.cluster import ClusterConfig
from ..errors import ConfigError
from .address import open_address
from .kubernetes import open_kubernetes
from .local import WORKER_ENV, open_local
from .slurm import open_slurm

__all__ = ["OPENERS", "WORKER_ENV", "dashboard_link", "open_client", "total_threads"]

Opener = Callable[..., ContextManager[Any]]

#: ``cluster.kind`` -> opener(cluster_config, security=None) -> context manager of a Client.
OPENERS: Dict[str, Opener] = {
    "local": open_local,
    "address": open_address,
    "slurm": open_slurm,
    "kubernetes": open_kubernetes,
}


def open_client(cfg: ClusterConfig, security: Any = None) -> ContextManager[Any]:
    """Context manager: a Client for ``cfg`` (closed, with its cluster, on exit).

    ``security``: a ``distributed.security.Security`` from the ``tls:`` section
    (:func:`ntkscale.cluster.tls.security_from_tls`), or None for plain tcp.
    """
    try:
        opener = OPENERS[cfg.kind]
    except KeyError:
        raise ConfigError(f"cluster.kind {cfg.kind!r} has no client opener in this installation") from None
    return opener(cfg, security=security)


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
