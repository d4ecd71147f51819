"""The run lock of a store on object storage: a lease object with expiry and holder identity.

Object storage has no ``flock`` and no rename, so a store at a URL is locked by a
*lease*: the object ``STORE/lock/zarr.json`` (the same node as the local lock, a
Zarr group whose attributes name the holder), written only by conditional requests:

* **take** — an absent lease is created with ``If-None-Match: *`` (S3 conditional
  write: of two runs starting at once exactly one create succeeds); a lease that is
  released (holder ``null``) or expired is replaced with ``If-Match: <ETag>`` of the
  version that was read, so of two runs taking over a stale lease only one wins;
* **hold** — the holder renews it every ``ttl/3`` (``If-Match`` its own last ETag),
  moving ``expires_unix`` forward; a renewal that finds another ETag means the lease
  was taken over: the holder records that it lost the lease, stops renewing, and stops
  its command at once: a lease taken in the main thread has a SIGUSR1 handler installed
  while it is held, and the renewer runs it in the main thread (``_thread.interrupt_main``)
  to raise :class:`LeaseLostInterrupt` there, which the ``with`` block turns into
  :class:`StoreBusyError` naming the new holder. It is not SIGINT because other libraries
  replace SIGINT's handler; dask-jobqueue's runner, for example, exits (finished blocks are kept; a block written by both runs is the same
  deterministic block, checksummed in the manifest). A lease taken in another thread
  cannot interrupt it: that command fails when its ``with`` block ends;
* **expire** — a lease not renewed for ``ttl`` seconds (its holder was killed, its
  node lost) is stale: the next run takes it over at once, without waiting. Expiry
  compares ``expires_unix`` (the holder's clock) with the reader's clock plus
  ``CLOCK_SKEW_S``, so the machines' clocks must agree to within that (NTP does);
* **release** — the holder replaces the lease with ``holder: null`` (``If-Match``).

The TTL is ``NTKSCALE_LEASE_TTL_S`` seconds (default 60): a killed run's store is
free again at most that long after the kill. On S3 (and S3-compatible servers that
implement conditional writes: AWS since 2024, MinIO, moto) the guarantee is exact;
on other fsspec backends the create uses ``mode="create"`` when the backend has it
and the takeover is a read-compare-write checked by reading back (best effort,
documented in docs/store.md).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import socket
import sys
import threading
import _thread
import signal
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from ..errors import LeaseLostInterrupt, StoreBusyError, StoreReadOnlyError
from .location import StoreLocation

LEASE_REL = "lock/zarr.json"
TTL_ENV = "NTKSCALE_LEASE_TTL_S"
DEFAULT_TTL_S = 60.0
#: How far apart two machines' clocks may be: a lease is stale this long after its expiry.
CLOCK_SKEW_S = 1.0


def lease_ttl() -> float:
    try:
        return max(1.0, float(os.environ.get(TTL_ENV) or DEFAULT_TTL_S))
    except ValueError:
        return DEFAULT_TTL_S


def _document(holder: Optional[Dict[str, Any]]) -> bytes:
    return json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {"holder": holder}},
                      indent=2).encode()


def describe_holder(holder: Optional[Dict[str, Any]]) -> str:
    """``pid 123 on host (`ntkscale gram c.yaml`, since ...)``, for refusals and ``status``."""
    if not holder:
        return "another process"
    return (f"pid {holder.get('pid')} on {holder.get('host')} "
            f"(`{holder.get('command', '?')}`, since {holder.get('started', '?')})")


def expired(holder: Dict[str, Any], now: Optional[float] = None) -> bool:
    """The lease was not renewed in time (its holder is gone)."""
    exp = holder.get("expires_unix")
    if exp is None:
        return False
    return (time.time() if now is None else now) > float(exp) + CLOCK_SKEW_S


class _Objects:
    """Conditional whole-object operations on the lease object."""

    def __init__(self, location: StoreLocation):
        self.location = location
        self.fs = location.fs
        self.path = location.key(LEASE_REL)
        self.s3 = hasattr(self.fs, "call_s3") and hasattr(self.fs, "split_path")

    def read(self) -> Tuple[Optional[bytes], Optional[str]]:
        """``(bytes, etag)`` of the current version, or ``(None, None)`` when absent."""
        for _ in range(5):
            try:
                if not self.s3:
                    data = self.fs.cat_file(self.path)
                    return data, hashlib.sha256(data).hexdigest()
                before = self.fs.info(self.path).get("ETag")
                data = self.fs.cat_file(self.path)
                if self.fs.info(self.path).get("ETag") == before:   # no write in between
                    return data, before
            except FileNotFoundError:
                return None, None
        raise StoreBusyError(f"the lease {self.path} changes constantly; another run is fighting for it")

    def create(self, data: bytes) -> Optional[str]:
        """Create the object if it does not exist; its ETag, or ``None`` when it exists."""
        try:
            if self.s3:
                bucket, key, _ = self.fs.split_path(self.path)
                return self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")["ETag"]
            self.fs.pipe_file(self.path, data, mode="create")
        except FileExistsError:
            return None
        except OSError as exc:
            if _precondition(exc):
                return None
            raise
        return self._confirm(data)

    def replace(self, data: bytes, etag: str) -> Optional[str]:
        """Replace the version ``etag`` with ``data``; the new ETag, or ``None`` when the
        object changed since it was read (someone else wrote it)."""
        try:
            if self.s3:
                bucket, key, _ = self.fs.split_path(self.path)
                return self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfMatch=etag)["ETag"]
            now, tag = self.read()
            if tag != etag:
                return None
            self.fs.pipe_file(self.path, data)
        except (FileExistsError, FileNotFoundError):
            return None
        except OSError as exc:
            if _precondition(exc):
                return None
            raise
        return self._confirm(data)

    def _confirm(self, data: bytes) -> Optional[str]:
        """Generic backends: read back (a concurrent writer would show here)."""
        got, tag = self.read()
        return tag if got == data else None


def _precondition(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "precondition" in text or "pre-condition" in text or "412" in text or "conditional" in text


class LeaseLock:
    """``with LeaseLock(location, command=...)``: exclusive, refusing; see the module doc."""

    def __init__(self, location: StoreLocation, command: Optional[str] = None, wait: float = 2.0,
                 extra: Optional[Dict[str, Any]] = None, ttl: Optional[float] = None):
        self.location = location
        self.command = command or " ".join([Path(sys.argv[0]).name] + sys.argv[1:])
        self.wait, self.extra = wait, dict(extra or {})
        self.ttl = float(ttl or lease_ttl())
        self.lost: Optional[str] = None          # why this holder lost its lease (None: it did not)
        self.took_over: Optional[Dict[str, Any]] = None   # the stale holder replaced, if any
        self._objects: Optional[_Objects] = None
        self._etag: Optional[str] = None
        self._holder: Optional[Dict[str, Any]] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._mutex = threading.Lock()
        self._interrupts = False                 # whether losing the lease interrupts the main thread
        self._old_handler: Any = None

    @property
    def held(self) -> bool:
        return self._etag is not None and self.lost is None

    def _new_holder(self) -> Dict[str, Any]:
        now = time.time()
        return {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "started_unix": now, "lease_id": uuid.uuid4().hex, "ttl_s": self.ttl,
                "renewed_unix": now, "expires_unix": now + self.ttl, **self.extra}

    def acquire(self) -> "LeaseLock":
        try:
            return self._acquire()
        except PermissionError as exc:
            raise StoreReadOnlyError(
                f"store {self.location.url} is read-only for these credentials ({exc}): `{self.command}` must "
                "write its lease there; use credentials that may write, or the commands that only read "
                "(status, verify without --repair, export, predict -o / --x)") from None

    def _acquire(self) -> "LeaseLock":
        objects = self._objects = _Objects(self.location)
        holder = self._new_holder()
        deadline = time.monotonic() + self.wait
        while True:
            data, etag = objects.read()
            if data is None:
                got = objects.create(_document(holder))
            else:
                current = _holder_of(data)
                if current is not None and not expired(current):
                    if time.monotonic() > deadline:
                        left = float(current.get("expires_unix", 0)) - time.time()
                        raise StoreBusyError(
                            f"store {self.location.url} is in use by {describe_holder(current)} (lease "
                            f"renewed {time.time() - float(current.get('renewed_unix', 0)):.0f} s ago, "
                            f"expires in {max(0.0, left):.0f} s unless renewed); two runs on one store are "
                            f"refused: wait for that run to finish or stop it (a killed run's lease expires "
                            f"by itself after {float(current.get('ttl_s', self.ttl)):.0f} s)")
                    time.sleep(0.2)
                    continue
                got = objects.replace(_document(holder), etag)
                if got is not None and current is not None:
                    self.took_over = current
            if got is not None:
                self._etag, self._holder = got, holder
                break
            if time.monotonic() > deadline:   # lost every race for a free lease
                raise StoreBusyError(f"store {self.location.url}: another run took the lease first; "
                                     "two runs on one store are refused")
            time.sleep(0.1)
        self._stop.clear()
        self._interrupts = threading.current_thread() is threading.main_thread()
        if self._interrupts:
            self._old_handler = signal.signal(signal.SIGUSR1, _raise_lease_lost)
        self._thread = threading.Thread(target=self._renew_loop, name="ntkscale-lease", daemon=True)
        self._thread.start()
        return self

    def renew(self) -> bool:
        """Move the expiry forward now; False (and ``lost`` set) when the lease was taken over."""
        with self._mutex:
            if self._etag is None or self.lost is not None or self._objects is None:
                return False
            now = time.time()
            holder = dict(self._holder or {}, renewed_unix=now, expires_unix=now + self.ttl)
            try:
                got = self._objects.replace(_document(holder), self._etag)
            except Exception:   # a network error: the next tick retries (expiry still ahead)
                if self._holder and now > float(self._holder["expires_unix"]):
                    self.lost = "the lease expired: it could not be renewed in time"
                return False
            if got is None:
                data, _ = self._objects.read()
                other = _holder_of(data) if data else None
                self.lost = f"the lease was taken over by {describe_holder(other)}"
                return False
            self._etag, self._holder = got, holder
            return True

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3.0):
            if not self.renew() and self.lost is not None:
                if self._interrupts and not self._stop.is_set():
                    # stop the command now rather than at its end: another run writes this
                    # store. LeaseLostInterrupt in the main thread; __exit__ names the cause.
                    _thread.interrupt_main(signal.SIGUSR1)
                return

    def release(self) -> None:
        if self._etag is None:
            return
        self._stop.set()
        try:
            if self._thread is not None:
                self._thread.join(timeout=30)
        finally:
            self._restore_handler()
        with self._mutex:
            etag, self._etag = self._etag, None
            if self.lost is None and self._objects is not None:
                if self._objects.replace(_document(None), etag) is None:
                    self.lost = "the lease was taken over by another run before this one released it"

    def _restore_handler(self) -> None:
        if self._interrupts and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGUSR1, self._old_handler if self._old_handler is not None else signal.SIG_DFL)
            self._interrupts = False

    def __enter__(self) -> "LeaseLock":
        return self.acquire()

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        try:
            self.release()
        except LeaseLostInterrupt:     # our own interrupt, landing while release joins the renewer
            exc_type = LeaseLostInterrupt
        stopped_by_us = exc_type is not None and issubclass(exc_type, LeaseLostInterrupt)
        if self.lost is not None and (exc_type is None or stopped_by_us):
            how = "it was stopped at once" if stopped_by_us else "it stopped"
            raise StoreBusyError(f"store {self.location.url}: {self.lost} while `{self.command}` ran; {how}, "
                                 "its finished blocks are kept: check the store with `ntkscale verify`") from None


def _raise_lease_lost(*_: Any) -> None:
    raise LeaseLostInterrupt()


def _holder_of(data: Optional[bytes]) -> Optional[Dict[str, Any]]:
    try:
        return (json.loads(data.decode() if data else "{}").get("attributes") or {}).get("holder")
    except (ValueError, UnicodeDecodeError, AttributeError):
        return None


def lease_holder(location: StoreLocation) -> Optional[Dict[str, Any]]:
    """The live holder of a remote store's lease (with ``lease_expires_in_s``), or ``None``
    when no run holds it (absent, released or expired). Read-only."""
    data = location.read_bytes(LEASE_REL)
    holder = _holder_of(data)
    if not holder or expired(holder):
        return None
    return dict(holder, lease_expires_in_s=round(float(holder["expires_unix"]) - time.time(), 1))
