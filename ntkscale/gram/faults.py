"""Transient or persistent: what a failed block task means for the rest of the run.

A *transient* failure (a worker lost, a timeout, a killed worker, an unknown
error) may pass on another try: the task is retried as Dask does. A
*persistent* one cannot pass on any retry, and every other block would fail
the same way: the disk holding the store is full (``ENOSPC``, ``EDQUOT``), the
store is on a read-only filesystem (``EROFS``) or the workers may not write it
(``EACCES``, ``EPERM``), the backend is missing (CuPy not installed), or the
spec or inputs are bad (an :class:`~ntkscale.errors.NtkscaleError`). A block
task that meets a persistent failure returns it as a record instead of raising
(:func:`ntkscale.gram.schedule.run_block`), so Dask neither retries it nor logs
a worker traceback, and the driver stops the run at once.
"""

from __future__ import annotations

import dataclasses
import errno
from typing import Dict, Iterator, Optional

from ..errors import BackendUnavailableError, NtkscaleError

#: errno -> (what it means, the fix), for the errors no retry can fix.
PERSISTENT_ERRNOS: Dict[int, tuple] = {
    errno.ENOSPC: ("the disk holding the store is full (ENOSPC)",
                   "free space on that disk (or move the store to a larger one) and rerun the same command"),
    errno.EDQUOT: ("the disk quota of the store's filesystem is exhausted (EDQUOT)",
                   "free space within the quota (or move the store) and rerun the same command"),
    errno.EROFS: ("the store is on a read-only filesystem (EROFS)",
                  "make the store writable for the workers (or choose another store path) and rerun"),
    errno.EACCES: ("the workers may not write the store (EACCES: permission denied)",
                   "give the workers' user write access to the store directory and rerun"),
    errno.EPERM: ("the workers may not write the store (EPERM: operation not permitted)",
                  "give the workers' user write access to the store directory and rerun"),
}


@dataclasses.dataclass(frozen=True)
class Fault:
    """A persistent failure: its ``code`` (``ENOSPC``, ``backend``, ...), what it means and the fix."""

    code: str
    message: str
    fix: str
    detail: str

    def as_dict(self) -> Dict[str, str]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, str]) -> "Fault":
        return cls(**{f.name: str(d.get(f.name, "")) for f in dataclasses.fields(cls)})


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and its causes/contexts (each once)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def persistent_fault(exc: BaseException) -> Optional[Fault]:
    """The :class:`Fault` when ``exc`` (or what caused it) is persistent, else None (transient)."""
    for e in _chain(exc):
        detail = f"{type(e).__name__}: {e}"
        if isinstance(e, OSError) and e.errno in PERSISTENT_ERRNOS:
            message, fix = PERSISTENT_ERRNOS[e.errno]
            return Fault(errno.errorcode[e.errno], message, fix, detail)
        if isinstance(e, ImportError):
            return Fault("import", f"a module is missing on the worker ({e.name or e})",
                         "install it in the workers' environment (the same ntkscale extras as the driver)", detail)
        if isinstance(e, NtkscaleError):
            code = "backend" if isinstance(e, BackendUnavailableError) else "input"
            return Fault(code, str(e), "fix the configuration as the message says, then rerun", detail)
    return None
