"""Dask clusters for a run: ``open_client(cluster_config, security)``.

``client``      OPENERS (kind -> opener), open_client, dashboard_link, total_threads
``local``, ``address``, ``slurm``, ``kubernetes``   one module per ``cluster.kind``
``tls``         security_from_tls (``tls:`` -> ``distributed.security.Security``)
``probe``       check_store_visible (every worker sees the store)
``gpu``         the worker preload that pins one GPU per worker process

Nothing here imports Dask until a cluster is opened.
"""

from .client import OPENERS, WORKER_ENV, dashboard_link, open_client, total_threads
from .probe import check_store_visible
from .tls import security_from_tls

__all__ = ["OPENERS", "WORKER_ENV", "check_store_visible", "dashboard_link", "open_client",
           "security_from_tls", "total_threads"]
