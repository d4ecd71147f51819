"""``cluster: {kind: address}``: connect to a scheduler someone started.

``dask scheduler`` + ``dask worker``, a SLURM job, a Kubernetes DaskCluster:
``address: tcp://host:8786`` or ``scheduler_file: path``. Workers must see the
store at the same path (shared disk; :mod:`ntkscale.cluster.probe` checks it).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from ..config.cluster import AddressClusterConfig
from ..errors import ConfigError


@contextlib.contextmanager
def open_address(cfg: AddressClusterConfig, security: Any = None) -> Iterator[Any]:
    """A Client connected to the scheduler; closed on exit (the cluster stays up)."""
    import dask  # noqa: PLC0415 (heavy: imported when a cluster opens)
    from distributed import Client  # noqa: PLC0415

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
