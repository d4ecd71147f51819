"""The run lock of a Gram store: one writer at a time, never a stale lock.

Choice: a second run on the same store is *refused* (not cooperative). The
lock is an advisory ``fcntl.flock`` on ``STORE/lock/zarr.json`` (the metadata
file of the Zarr group ``lock``, so the store stays a clean Zarr hierarchy).
The kernel drops a flock when its holder dies, so a lock left by a killed run
(SIGKILL, OOM, node loss) never blocks the rerun: there is nothing to detect
or clean up. The file also records who holds the lock (pid, host, command,
start time) for the refusal message and ``ntkscale status``.

Hand-written rather than a lock-file library because the holder's record has
to be readable by ``status`` and must live in the file that is locked; it is
rewritten *in place* (a zarr write would replace the file with a new inode and
silently move the lock away from it). On Linux NFS clients flock is mapped to
POSIX locks, which the NFS lock manager honours across hosts.

A store at a URL (``s3://...``) has no flock: ``StoreLock`` hands it to the lease
of :mod:`ntkscale.store.lease` (conditional writes, expiry, holder identity), with
the same interface, and ``lock_holder`` reads the lease.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Union

from ..errors import StoreBusyError, StoreReadOnlyError
from .lease import LeaseLock, describe_holder, lease_holder
from .location import StoreLocation

LOCK_NODE = "lock"
#: A lock that cannot be created for these reasons means the store is read-only for us.
READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)


def _lock_file(root: Path) -> Path:
    return Path(root) / LOCK_NODE / "zarr.json"


def _document(holder: Optional[Dict[str, Any]]) -> bytes:
    doc = {"zarr_format": 3, "node_type": "group", "attributes": {"holder": holder}}
    return json.dumps(doc, indent=2).encode()


def _read_holder(fd: int) -> Optional[Dict[str, Any]]:
    for _ in range(5):  # the holder rewrites the record in place; retry a torn read
        try:
            data = os.pread(fd, 1 << 16, 0)
            return json.loads(data.decode() or "{}").get("attributes", {}).get("holder")
        except (ValueError, UnicodeDecodeError):
            time.sleep(0.02)
    return None


Root = Union[os.PathLike, str, StoreLocation]


class StoreLock:
    """``with StoreLock(path, command="ntkscale gram"):`` — exclusive, refusing.

    ``StoreLock(url)`` (a store on object storage) is a :class:`~ntkscale.store.lease.LeaseLock`."""

    def __new__(cls, root: Root, *args: Any, **kwargs: Any) -> Any:
        location = StoreLocation.parse(root)
        if location.remote:
            return LeaseLock(location, *args, **kwargs)
        return super().__new__(cls)

    def __init__(self, root: Root, command: Optional[str] = None, wait: float = 2.0,
                 extra: Optional[Dict[str, Any]] = None):
        self.root = Path(str(StoreLocation.parse(root)))
        self.extra = dict(extra or {})
        self.command = command or " ".join([Path(sys.argv[0]).name] + sys.argv[1:])
        self.wait = wait  # covers a concurrent `status` probing the lock for a moment
        self._fd: Optional[int] = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "StoreLock":
        path = _lock_file(self.root)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if exc.errno not in READ_ONLY_ERRNOS:
                raise
            raise StoreReadOnlyError(
                f"store {self.root} is read-only here ({errno.errorcode[exc.errno]}): `{self.command}` must write "
                "into it; make it writable, or use the commands that only read (status, verify without "
                "--repair, export, predict -o / --x)") from None
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if time.monotonic() > deadline:
                    holder = _read_holder(fd)
                    os.close(fd)
                    raise StoreBusyError(
                        f"store {self.root} is in use by {describe_holder(holder)}; two runs on one "
                        "store are refused: wait for that run to finish or stop it (a killed run "
                        "releases the lock by itself)") from None
                time.sleep(0.1)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                  "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "started_unix": time.time(), **self.extra}
        self._write(fd, holder)
        self._fd = fd
        return self

    @staticmethod
    def _write(fd: int, holder: Optional[Dict[str, Any]]) -> None:
        data = _document(holder)
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            self._write(fd, None)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> "StoreLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def lock_holder(root: Root) -> Optional[Dict[str, Any]]:
    """Who holds the store's lock, or ``None`` when no run does. Read-only:
    probes with a shared flock for an instant and changes nothing (a remote
    store: reads its lease)."""
    location = StoreLocation.parse(root)
    if location.remote:
        return lease_holder(location)
    path = _lock_file(Path(location.url))
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return _read_holder(fd) or {"pid": None, "host": None}
            raise
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
