"""Where a Gram store lives: a local directory or an object-storage URL (fsspec).

``store: run.zarr`` is a directory; ``store: s3://bucket/run.zarr`` (and ``gs://``,
``az://``/``abfs://``, any URL with an fsspec implementation) is a prefix in a bucket,
read and written through zarr's :class:`zarr.storage.FsspecStore`. Credentials and
the endpoint come from the backend's standard environment variables
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ...;
``GOOGLE_APPLICATION_CREDENTIALS``; ``AZURE_STORAGE_CONNECTION_STRING``) or from a
``store_options:`` mapping, passed to fsspec as is (s3fs: ``endpoint_url``, ``key``,
``secret``, ``client_kwargs``, ...).

A URL is never taken for a path: a string that starts with ``SCHEME://`` is a URL,
and an unknown scheme, or a scheme whose fsspec implementation is not installed,
is refused with one line naming the fix (:func:`check_url`).

:class:`StoreLocation` is what the store modules use instead of ``pathlib``:
listing, sizes and modification times, small whole-object reads and writes, and
the conditional writes the lease needs (:mod:`ntkscale.store.lease`). A local
location keeps the POSIX code paths unchanged (flock, rename-based chunk writes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple, Union

from ..errors import StoreError

#: ``SCHEME://...``: a URL (RFC 3986 scheme characters), never a path.
URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
#: Schemes that are local paths.
LOCAL_SCHEMES = ("file", "local")
#: Backends that are not object storage a cluster can share (refused as stores).
NOT_SHARED = ("memory", "cached", "simplecache", "filecache", "blockcache", "reference", "zip", "tar")
#: The pip package that brings each common scheme (the fix named in the error).
PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs",
            "abfss": "adlfs", "adl": "adlfs", "hf": "huggingface_hub", "oci": "ocifs", "oss": "ossfs"}
#: fsspec options per URL, for this process (:func:`register_options`).
_REGISTERED: Dict[str, Dict[str, Any]] = {}


def is_url(value: Union[str, os.PathLike]) -> bool:
    """``value`` starts with ``SCHEME://`` (a URL, not a path)."""
    return isinstance(value, str) and URL.match(value) is not None


def scheme(value: str) -> str:
    m = URL.match(value)
    return m.group(1).lower() if m else ""


def _fsspec() -> Any:
    """fsspec, imported when a URL is used (an optional dependency: ``pip install ntkscale[s3]``)."""
    try:
        return importlib.import_module("fsspec")
    except ImportError:
        raise StoreError("object-storage stores need fsspec and the backend's package: "
                         "pip install 'ntkscale[s3]' (S3), or fsspec with gcsfs / adlfs") from None


def check_url(url: str, where: str = "store") -> None:
    """Refuse a URL the store cannot honour: an unknown scheme, a backend that is
    not shared storage, or a scheme whose fsspec implementation is not installed.
    Cheap (no network, the backend package is found, not imported)."""
    proto = scheme(url)
    if proto in LOCAL_SCHEMES:
        return
    if proto in NOT_SHARED:
        raise StoreError(f"{where}: {url}: {proto}:// is not storage that a run's processes share; "
                         "use a local directory or an object-storage URL (s3://, gs://, az://)")
    fsspec = _fsspec()
    known = importlib.import_module("fsspec.registry").known_implementations
    registered = dict(getattr(fsspec, "registry", {}))
    if proto not in known and proto not in registered:
        common = ", ".join(f"{p}://" for p in ("s3", "gs", "az", "abfs", "hdfs", "http"))
        raise StoreError(f"{where}: {url}: unknown URL scheme {proto!r} (fsspec has no implementation "
                         f"for it); use a local path or a URL such as {common}")
    if proto in registered:
        return
    target = known[proto]["class"]
    module = target.rsplit(".", 1)[0]
    if importlib.util.find_spec(module.split(".")[0]) is None:
        package = PACKAGES.get(proto, module.split(".")[0])
        extra = " (or pip install 'ntkscale[s3]')" if package == "s3fs" else ""
        raise StoreError(f"{where}: {url} needs the {package} package, which is not installed: "
                         f"pip install {package}{extra}")


def register_options(url: str, options: Optional[Mapping[str, Any]]) -> None:
    """Remember the fsspec options of ``url`` for this process, so code that only
    has the URL (``StoreLock(config.store)``) opens it with them."""
    if is_url(url) and options:
        _REGISTERED[url.rstrip("/")] = dict(options)


@dataclasses.dataclass(frozen=True)
class StoreLocation:
    """A store's root: a local directory (``url`` is its absolute path) or a URL with fsspec options."""

    url: str
    options: Tuple[Tuple[str, str], ...] = ()    # JSON text of each value: hashable, picklable

    # -- making one ------------------------------------------------------------
    @classmethod
    def parse(cls, value: Union[str, os.PathLike, "StoreLocation"],
              options: Optional[Mapping[str, Any]] = None, where: str = "store") -> "StoreLocation":
        """A location from a path or URL (checked, :func:`check_url`); ``options`` default
        to those registered for the URL (:func:`register_options`)."""
        if isinstance(value, StoreLocation):
            return value if options is None else cls(value.url, _freeze(options))
        if hasattr(value, "fs") and hasattr(value, "path") and not isinstance(value, (str, os.PathLike)):
            return cls.from_zarr_store(value)
        text = os.fspath(value)
        if not is_url(text):
            return cls(str(Path(text)))
        if scheme(text) in LOCAL_SCHEMES:
            return cls(str(Path(text.split("://", 1)[1])))
        check_url(text, where)
        url = text.rstrip("/")
        opts = dict(options) if options is not None else _REGISTERED.get(url, {})
        return cls(url, _freeze(opts))

    @classmethod
    def from_zarr_store(cls, store: Any) -> "StoreLocation":
        """The location of a zarr ``FsspecStore`` (a block task's handle on its store)."""
        fs = store.fs
        url = fs.unstrip_protocol(store.path) if hasattr(fs, "unstrip_protocol") else store.path
        opts = {k: v for k, v in getattr(fs, "storage_options", {}).items() if k != "asynchronous"}
        return cls(url.rstrip("/"), _freeze(opts))

    # -- facts -------------------------------------------------------------------
    @property
    def remote(self) -> bool:
        return is_url(self.url)

    @property
    def path(self) -> Union[Path, str]:
        """A :class:`~pathlib.Path` for a local store, the URL for a remote one."""
        return self.url if self.remote else Path(self.url)

    @property
    def storage_options(self) -> Dict[str, Any]:
        return {k: json.loads(v) for k, v in self.options}

    def __str__(self) -> str:
        return self.url

    # -- zarr ----------------------------------------------------------------------
    def zarr_store(self, read_only: bool = False) -> Any:
        """What zarr opens: the directory path (zarr's LocalStore), or an ``FsspecStore``
        (picklable: a block task carries it to the worker, options included)."""
        if not self.remote:
            return self.url
        import zarr  # heavy import, kept out of `import ntkscale` and `ntkscale --help`

        return zarr.storage.FsspecStore.from_url(self.url, storage_options=self._fs_options(),
                                                 read_only=read_only)

    def task_root(self) -> Any:
        """What a block task gets as its store (``Job.store``): the directory path,
        or the picklable ``FsspecStore`` that carries the URL and its options to the worker."""
        return self.zarr_store() if self.remote else self.url

    def check_bucket(self) -> None:
        """A remote store's bucket (container) exists, or a one-line error naming it."""
        if not self.remote:
            return
        bucket = self.key().split("/", 1)[0]
        try:
            with reaching(self.url):
                found = self.fs.exists(bucket)
        except (PermissionError, OSError) as exc:
            raise StoreError(f"store {self.url}: cannot reach bucket {bucket!r} ({type(exc).__name__}: "
                             f"{exc}); check the endpoint and credentials (environment variables or "
                             "store_options)") from None
        if not found:
            raise StoreError(f"store {self.url}: bucket {bucket!r} does not exist (or these credentials "
                             "cannot see it); create the bucket first (e.g. `aws s3 mb s3://BUCKET` on S3)")

    def _fs_options(self) -> Dict[str, Any]:
        # listings are always fresh: `status` and resume must see blocks other processes wrote
        return {"use_listings_cache": False, **self.storage_options}

    @property
    def fs(self) -> Any:
        """The (synchronous) fsspec filesystem of a remote location."""
        fsspec = _fsspec()
        try:
            return fsspec.filesystem(scheme(self.url), **self._fs_options())
        except ImportError as exc:
            raise StoreError(f"store {self.url}: {exc}") from None

    def key(self, rel: str = "") -> str:
        """The full path of ``rel`` inside the store: a filesystem path, or the
        fsspec path (``bucket/prefix/rel``) of a remote store."""
        if not self.remote:
            return os.path.join(self.url, rel) if rel else self.url
        base = self.fs._strip_protocol(self.url).rstrip("/")
        return f"{base}/{rel}" if rel else base

    def write_bandwidth(self, nbytes: int = 16 << 20) -> float:
        """Bytes/s of one object PUT (then deleted) next to a remote store, for ``plan``'s estimate."""
        rel = f".ntkscale-plan-{os.getpid()}-{time.time_ns()}"
        data = bytes(nbytes)
        t = time.perf_counter()
        self.write_bytes(rel, data)
        seconds = time.perf_counter() - t
        self.remove(rel)
        return nbytes / max(seconds, 1e-9)

    # -- objects ---------------------------------------------------------------------
    def read_bytes(self, rel: str) -> Optional[bytes]:
        """The whole object/file ``rel``, or ``None`` when it does not exist."""
        try:
            if not self.remote:
                return Path(self.key(rel)).read_bytes()
            with reaching(self.url):
                return self.fs.cat_file(self.key(rel))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def read_json(self, rel: str) -> Optional[Dict[str, Any]]:
        data = self.read_bytes(rel)
        try:
            return None if data is None else json.loads(data.decode())
        except (ValueError, UnicodeDecodeError):
            return None

    def exists(self, rel: str = "") -> bool:
        if not self.remote:
            return os.path.exists(self.key(rel))
        with reaching(self.url):
            return bool(self.fs.exists(self.key(rel)))

    def children(self, rel: str = "") -> set:
        """Names directly under ``rel`` (remote: the common prefixes and objects)."""
        try:
            if not self.remote:
                return set(os.listdir(self.key(rel)))
            return {p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.key(rel), detail=False)}
        except (FileNotFoundError, NotADirectoryError):
            return set()

    def objects(self, rel: str) -> Dict[str, Dict[str, Any]]:
        """Every object under ``rel`` (recursively, one listing) as
        ``{relative path: {"size": bytes, "mtime": unix seconds}}``."""
        if not self.remote:
            out = {}
            top = self.key(rel)
            for dirpath, _, files in os.walk(top):
                for name in files:
                    full = os.path.join(dirpath, name)
                    try:
                        st = os.stat(full)
                    except FileNotFoundError:
                        continue
                    out[os.path.relpath(full, top).replace(os.sep, "/")] = {"size": st.st_size,
                                                                            "mtime": st.st_mtime}
            return out
        base = self.key(rel).rstrip("/") + "/"
        try:
            with reaching(self.url):
                found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        out = {}
        for name, info in found.items():
            if info.get("type") == "directory" or not name.startswith(base):
                continue
            mtime = info.get("LastModified") or info.get("mtime") or info.get("last_modified")
            out[name[len(base):]] = {"size": int(info.get("size") or 0), "mtime": _unix(mtime)}
        return out

    def size(self, rel: str) -> Optional[int]:
        try:
            if not self.remote:
                return os.stat(self.key(rel)).st_size
            return int(self.fs.size(self.key(rel)))
        except FileNotFoundError:
            return None

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write ``rel`` whole (one PUT remotely; a local write is not atomic)."""
        if not self.remote:
            Path(self.key(rel)).parent.mkdir(parents=True, exist_ok=True)
            Path(self.key(rel)).write_bytes(data)
            return
        with reaching(self.url):
            self.fs.pipe_file(self.key(rel), data)

    def remove(self, rel: str) -> None:
        """Delete the object/file ``rel`` (absent: nothing happens)."""
        try:
            if not self.remote:
                os.remove(self.key(rel))
            else:
                self.fs.rm_file(self.key(rel))
        except FileNotFoundError:
            pass


def probe_remote(location: "StoreLocation") -> str:
    """Worker side: read the store's ``zarr.json`` through ``location`` ('' when it works,
    else why not): the worker has the backend package, reaches the endpoint, and its
    credentials may read the bucket."""
    try:
        StoreLocation(location.url, location.options).fs    # the worker's own filesystem instance
        if location.read_bytes("zarr.json") is None and location.read_bytes("lock/zarr.json") is None:
            return f"{location.url} has no zarr.json there (another endpoint or bucket?)"
    except Exception as exc:  # noqa: BLE001 - reported, naming the worker
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return ""


def check_remote_visible(client: Any, location: "StoreLocation") -> int:
    """Fail fast unless every worker of ``client`` can read the remote store (the driver
    created it already); returns the number of workers checked."""
    results = client.run(probe_remote, location)
    bad = {w: why for w, why in results.items() if why}
    if bad:
        shown = "; ".join(f"{w}: {why}" for w, why in sorted(bad.items())[:3])
        raise StoreError(f"store {location.url}: {len(bad)} of {len(results)} workers cannot read it: {shown}. "
                         "Give the workers the backend package (pip install 'ntkscale[s3]'), network access to "
                         "the endpoint and credentials (environment variables, or store_options in the config)")
    return len(results)


#: Exception class names (botocore, aiohttp, google-auth, azure) that mean "cannot reach or sign in".
UNREACHABLE = ("Connect", "Endpoint", "Credentials", "Timeout", "ClientOSError", "NoRegion", "Auth")


@contextlib.contextmanager
def reaching(url: str) -> Iterator[None]:
    """Turn a backend's "cannot connect / no credentials" exception into one line naming the fix."""
    try:
        yield
    except (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError):
        raise
    except Exception as exc:
        names = " ".join(c.__name__ for c in type(exc).__mro__)
        if not any(word in names for word in UNREACHABLE):
            raise
        raise StoreError(f"store {url}: cannot reach the object store ({type(exc).__name__}: {exc}); check the "
                         "endpoint (AWS_ENDPOINT_URL or store_options endpoint_url), the network and the "
                         "credentials") from None


def _freeze(options: Mapping[str, Any]) -> Tuple[Tuple[str, str], ...]:
    try:
        return tuple(sorted((str(k), json.dumps(v, sort_keys=True)) for k, v in dict(options).items()))
    except TypeError as exc:
        raise StoreError(f"store_options must be JSON-like values (strings, numbers, mappings): {exc}") from None


def _unix(value: Any) -> float:
    if value is None:
        return 0.0
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0
