"""Typed, frozen run configuration: loaded from YAML or JSON, validated once.

A run configuration (``config.yaml``)::

    data:
      train: {x: train_x.npy, y: train_y.npy}   # paths relative to this file; .npy or Zarr
      test:  {x: test_x.npy, y: test_y.npy}     # optional
    kernel:
      layers: [[Dense, {W_std: 1.414, b_std: 0.1}], [Relu, {}], [Dense, {W_std: 1.414}]]
      get: ntk                                  # nngp | ntk | [nngp, ntk]
    store: run.zarr                             # or s3://bucket/run.zarr, gs://..., az://...
    store_options: {endpoint_url: "http://minio:9000"}   # optional: fsspec options of a URL store
    block_size: 1024                            # optional: planned from memory when absent
    dtype: float64                              # float32 | float64
    backend: auto                               # auto (CuPy on GPU workers) | numpy | cupy
    memory_budget: 2GiB                         # optional: per block task (planning)
    cluster: {kind: local, n_workers: 2, threads_per_worker: 1, memory_limit: 4GiB}
    #   (io_threads: extra threads per worker that write blocks while the others compute;
    #    default auto: 1 per worker)
    #   or   {kind: address, address: "tcp://host:8786"}  (or scheduler_file: path)
    solver: {method: cg, ridge: 1e-6, ...}      # optional; see ntkscale.config.solver
    task: auto                                  # auto | classification | regression

Every key is checked: an unknown key is an error that names it (with the
closest known key), a missing file names the key that points to it, and
memory sizes are Dask-style strings (``2GB``, ``4GiB``; see
:func:`ntkscale.config.sections.parse_memory`). The sections have their own
modules: ``cluster:`` (:mod:`ntkscale.config.cluster`, one parser per kind in
``CLUSTER_PARSERS``), ``tls:``, ``solver:`` and ``task:``. Parsing reads the file
and checks that the files it names exist; it imports no Dask
(:mod:`ntkscale.cluster` opens the Dask client from the parsed config).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

from .. import stax
from ..choices import BACKENDS, DTYPES, KERNELS
from ..errors import ConfigError, SpecError
from .cluster import AddressClusterConfig, ClusterConfig, LocalClusterConfig, parse_cluster
from .loader import load_json, load_yaml
from .sections import Section
from .solver import SolverConfig, parse_solver, parse_task
from .tls import TLSOptions, parse_tls_options

# AddressClusterConfig and LocalClusterConfig are re-exported: callers that build a
# RunConfig by hand name them from here or from ntkscale.config.
__all__ = ["AddressClusterConfig", "ArraySpec", "DataConfig", "KernelConfig", "LocalClusterConfig",
           "RunConfig", "load_config"]


@dataclasses.dataclass(frozen=True)
class ArraySpec:
    """One input set: ``x`` and optional ``y`` (absolute paths, .npy or Zarr)."""

    x: str
    y: Optional[str] = None
    pattern: Optional[str] = None    # graph patterns of the rows (stax.Aggregate)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    train: ArraySpec
    test: Optional[ArraySpec] = None


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """The canonical layer list (JSON text, so the config stays hashable) and ``get``."""

    spec_json: str
    get: Tuple[str, ...]

    @property
    def layers(self) -> list:
        return json.loads(self.spec_json)

    def kernel_fn(self) -> stax.KernelFn:
        """The network's kernel function, rebuilt from the canonical spec."""
        return stax.from_spec(self.spec_json)[2]


# ----------------------------------------------------------------------------- the run config

TOP_LEVEL_KEYS = ("data", "kernel", "store", "store_options", "block_size", "dtype", "backend", "memory_budget",
                  "cluster", "tls", "solver", "task")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A validated run configuration; every path is absolute (``store`` may be a URL,
    kept verbatim, with its fsspec ``store_options``; see :mod:`ntkscale.store.location`)."""

    data: DataConfig
    kernel: KernelConfig
    store: str
    block_size: Optional[int] = None
    dtype: str = "float64"
    backend: str = "auto"
    memory_budget: Optional[int] = None
    cluster: ClusterConfig = LocalClusterConfig()
    solver: Optional[SolverConfig] = None        # ntkscale.config.solver (None: the defaults)
    task: Optional[str] = None                   # auto | classification | regression (None: auto)
    tls: Optional[TLSOptions] = None             # ntkscale.config.tls (None: plain tcp)
    source: str = "<dict>"
    store_options: Dict[str, Any] = dataclasses.field(default_factory=dict, hash=False)

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_mapping(cls, mapping: Any, base_dir: Union[str, Path] = ".", source: str = "<dict>",
                     *, check_files: bool = True) -> "RunConfig":
        """Validate a raw mapping; relative paths are taken from ``base_dir``."""
        base = Path(base_dir).resolve()
        top = Section(mapping, "", source)
        top.check_keys(TOP_LEVEL_KEYS)
        return cls(
            data=_parse_data(top.get("data", required=True), base, source, check_files),
            kernel=_parse_kernel(top.get("kernel", required=True), source),
            store=_store_value(top, base),
            store_options=_store_options(top),
            block_size=top.int("block_size"),
            dtype=top.choice("dtype", DTYPES, "float64"),
            backend=top.choice("backend", BACKENDS, "auto"),
            memory_budget=top.bytes("memory_budget"),
            cluster=parse_cluster(top.get("cluster"), base, source),
            solver=parse_solver(top.get("solver"), source),
            task=parse_task(top.get("task"), source),
            tls=_parse_tls(top.get("tls"), base, source, check_files),
            source=source,
        )

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON-able form (absolute paths)."""
        out = dataclasses.asdict(self)
        out["kernel"] = {"layers": self.kernel.layers, "get": list(self.kernel.get)}
        out["solver"] = None if self.solver is None else self.solver.to_dict()
        out["store_options"] = _redact(self.store_options)
        out.pop("source")
        return out


#: ``SCHEME://``: a URL (object storage through fsspec), never taken for a path.
URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
#: Option keys whose values are secrets: hidden in ``to_dict``.
SECRET = re.compile(r"(secret|token|key|password|credential|connection_string|sas)", re.I)


def _redact(options: Any) -> Any:
    if not isinstance(options, dict):
        return options
    return {k: "***" if SECRET.search(str(k)) else _redact(v) for k, v in options.items()}


def _store_value(top: Section, base: Path) -> str:
    """``store:`` as an absolute path, or a URL kept as written (``file://`` is a path).
    Whether the URL's backend is installed is checked when the store is opened
    (:func:`ntkscale.store.location.check_url`, before any work)."""
    value = _path_value(top, "store")
    if URL.match(value):
        scheme, rest = value.split("://", 1)
        if scheme.lower() in ("file", "local"):
            return str((base / rest).resolve())
        if not rest.strip("/"):
            raise top.error(f"{value!r} names no bucket or path after {scheme}://", "store")
        return value
    if re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*:/", value) and not re.match(r"^[A-Za-z]:[\\/]", value):
        raise top.error(f"{value!r} looks like a URL with one slash; write {value.replace(':/', '://', 1)!r}, "
                        "or ./ before a local path", "store")
    return str((base / value).resolve())


def _store_options(top: Section) -> Dict[str, Any]:
    """``store_options:`` — a mapping passed to fsspec as is (URL stores only)."""
    opts = top.get("store_options")
    if opts is None:
        return {}
    if not isinstance(opts, dict) or not all(isinstance(k, str) for k in opts):
        raise top.error(f"must be a mapping of fsspec options (e.g. {{endpoint_url: ...}}), got {opts!r}",
                        "store_options")
    if not URL.match(str(top.get("store"))):
        raise top.error("only applies to a store at a URL (s3://, gs://, az://, ...); remove it for a "
                        "local store", "store_options")
    return dict(opts)


def _parse_tls(mapping: Any, base: Path, source: str, check_files: bool) -> Optional[TLSOptions]:
    """``tls:`` -> TLSOptions (certificate files, or ``temporary: true``)."""
    if mapping is None:
        return None
    return parse_tls_options(mapping, base, source=source, check_files=check_files)


def _path_value(sec: Section, key: str) -> str:
    value = sec.get(key, required=True)
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise sec.error(f"must be a path, got {value!r}", key)
    return os.fspath(value)


def _parse_arrays(mapping: Any, where: str, base: Path, source: str, check_files: bool) -> ArraySpec:
    sec = Section(mapping, where, source)
    sec.check_keys(("x", "y", "pattern"))
    paths = {}
    for key in ("x", "y", "pattern"):
        if key != "x" and sec.get(key) is None:
            paths[key] = None
            continue
        path = (base / _path_value(sec, key)).resolve()
        if check_files and not path.exists():
            raise sec.error(f"file not found: {path}", key)
        paths[key] = str(path)
    return ArraySpec(x=paths["x"], y=paths["y"], pattern=paths["pattern"])


def _parse_data(mapping: Any, base: Path, source: str, check_files: bool) -> DataConfig:
    sec = Section(mapping, "data", source)
    sec.check_keys(("train", "test"))
    train = _parse_arrays(sec.get("train", required=True), "data.train", base, source, check_files)
    test = sec.get("test")
    return DataConfig(
        train=train,
        test=None if test is None else _parse_arrays(test, "data.test", base, source, check_files),
    )


def _parse_kernel(mapping: Any, source: str) -> KernelConfig:
    sec = Section(mapping, "kernel", source)
    sec.check_keys(("layers", "get"))
    try:
        spec = stax.canonical_spec(sec.get("layers", required=True))
    except SpecError as exc:
        raise sec.error(str(exc), "layers") from None
    get = sec.get("get", "ntk")
    names = (get,) if isinstance(get, str) else tuple(get) if isinstance(get, (list, tuple)) else None
    if not names or any(n not in KERNELS for n in names) or len(set(names)) != len(names):
        raise sec.error(f"must be 'nngp', 'ntk' or [nngp, ntk], got {get!r}", "get")
    # Canonical order: the store layout does not depend on how get was written.
    return KernelConfig(spec_json=stax.spec_to_json(spec), get=tuple(n for n in KERNELS if n in names))


def load_config(path: Union[str, Path], *, check_files: bool = True) -> RunConfig:
    """Read a YAML (``.yaml``/``.yml``) or JSON (``.json``) run configuration."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text()
    try:
        raw = load_json(text) if path.suffix.lower() == ".json" else load_yaml(text)
    except ConfigError as exc:   # a duplicate key
        raise ConfigError(f"{path}: {exc}") from None
    except Exception as exc:  # yaml.YAMLError / json.JSONDecodeError: both name line and column
        raise ConfigError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {exc}") from None
    if raw is None:
        raise ConfigError(f"{path}: the file is empty; see docs/store.md for the run configuration")
    return RunConfig.from_mapping(raw, base_dir=path.parent, source=str(path), check_files=check_files)
