"""``cluster: {kind: address}``: connect to a scheduler someone started.

``dask scheduler`` + ``dask worker``, a SLURM job, a Kubernetes DaskCluster:
``address: tcp://host:8786`` or ``scheduler_file: path``. Workers must see the
store at the same path (shared disk; :mod:`ntkscale.cluster.probe` checks it).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any, Iterator

from ..config.cluster import AddressClusterConfig
from ..errors import ClusterUnreachableError

#: Seconds a run waits for a scheduler (its scheduler_file to appear, then the
#: connection) before it gives up; Dask's own connect timeout wins when shorter.
CONNECT_TIMEOUT_S = 15.0


def connect_deadline() -> float:
    """Seconds to wait for a scheduler: :data:`CONNECT_TIMEOUT_S`, or Dask's
    ``distributed.comm.timeouts.connect`` when that is shorter."""
    import dask  # noqa: PLC0415 (heavy: imported when a cluster opens)
    from dask.utils import parse_timedelta  # noqa: PLC0415

    dask_s = parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), "s")
    return min(CONNECT_TIMEOUT_S, float(dask_s or CONNECT_TIMEOUT_S))


def read_scheduler_file(path: str, timeout: float) -> str:
    """The scheduler address in ``path``, waiting up to ``timeout`` s for the file to
    appear (a scheduler just started writes it); a clear error after that."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(path, encoding="utf-8") as f:
                return str(json.load(f)["address"])
        except FileNotFoundError:
            if time.monotonic() >= deadline:
                raise ClusterUnreachableError(
                    f"cluster.scheduler_file {path} does not exist (waited {timeout:.0f} s); start the "
                    f"scheduler with `dask scheduler --scheduler-file {path}` or fix the path") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            if time.monotonic() >= deadline:
                raise ClusterUnreachableError(
                    f"cluster.scheduler_file {path} holds no scheduler address ({type(exc).__name__}: {exc}); "
                    "point it at the file `dask scheduler --scheduler-file` writes") from None
        time.sleep(0.2)


@contextlib.contextmanager
def open_address(cfg: AddressClusterConfig, security: Any = None) -> Iterator[Any]:
    """A Client connected to the scheduler within :func:`connect_deadline` seconds
    (else :class:`~ntkscale.errors.ClusterUnreachableError`); closed on exit (the cluster stays up)."""
    from distributed import Client  # noqa: PLC0415 (heavy: imported when a cluster opens)

    timeout = connect_deadline()
    t0 = time.monotonic()
    address = cfg.address or read_scheduler_file(os.fspath(cfg.scheduler_file), timeout)
    where = cfg.address or f"{address} (from {cfg.scheduler_file})"
    left = max(1.0, timeout - (time.monotonic() - t0))
    try:
        client = Client(address, timeout=f"{left}s", security=security)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ClusterUnreachableError(
            f"cluster: cannot reach {where} within {timeout:.0f} s ({type(exc).__name__}: {exc}); is "
            "`dask scheduler` running and the address right?") from None
    with client:
        yield client
