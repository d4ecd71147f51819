"""Typed, frozen run configuration: loaded from YAML or JSON, validated once.

A run configuration (``config.yaml``)::

    data:
      train: {x: train_x.npy, y: train_y.npy}   # paths relative to this file; .npy or Zarr
      test:  {x: test_x.npy, y: test_y.npy}     # optional
    kernel:
      layers: [[Dense, {W_std: 1.414, b_std: 0.1}], [Relu, {}], [Dense, {W_std: 1.414}]]
      get: ntk                                  # nngp | ntk | [nngp, ntk]
    store: run.zarr
    block_size: 1024                            # optional: planned from memory when absent
    dtype: float64                              # float32 | float64
    backend: auto                               # auto (CuPy on GPU workers) | numpy | cupy
    memory_budget: 2GiB                         # optional: per block task (planning)
    cluster: {kind: local, n_workers: 2, threads_per_worker: 1, memory_limit: 4GiB}
    #   (io_threads: extra threads per worker that write blocks while the others compute;
    #    default auto: 1 when the computing threads leave a spare core per worker, else 0)
    #   or   {kind: address, address: "tcp://host:8786"}  (or scheduler_file: path)
    solver: {method: cg, ridge: 1e-6, ...}      # optional; see ntkscale.config.solver
    task: auto                                  # auto | classification | regression

Every key is checked: an unknown key is an error that names it (with the
closest known key), a missing file names the key that points to it, and
memory sizes are Dask-style strings (``2GB``, ``4GiB``) parsed by
``dask.utils.parse_bytes``. Cluster kinds are a registry
(:data:`CLUSTER_KINDS`): ``local`` and ``address`` now; ``slurm`` and
``kubernetes`` are reserved names that :func:`register_cluster_kind` will
fill in (ntkscale.cluster.client builds the Dask client from these).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

from ..errors import ConfigError, SpecError
from .solver import SolverConfig, parse_solver, parse_task

GET_CHOICES = ("nngp", "ntk")
DTYPES = ("float32", "float64")
BACKENDS = ("auto", "numpy", "cupy")


# ----------------------------------------------------------------------------- helpers


class FrozenMapping(Mapping):
    """Read-only, hashable, picklable mapping for raw config sections."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any]):
        self._data = dict(data)

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._data.items(), key=lambda kv: kv[0])))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self.items()) == dict(other.items())

    def __repr__(self) -> str:
        return f"FrozenMapping({self._data!r})"

    def __reduce__(self):
        return (FrozenMapping, (self._data,))


def _freeze(value: Any) -> Any:
    """Deep read-only copy of raw YAML data (mappings -> FrozenMapping, lists -> tuples)."""
    if isinstance(value, Mapping):
        return FrozenMapping({str(k): _freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """Plain ``dict``/``list`` copy of a frozen value (for JSON/YAML output)."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


class Section:
    """Checks one mapping of the config: required/optional keys, types, names."""

    def __init__(self, mapping: Any, where: str, source: str):
        self.where, self.source = where, source
        if not isinstance(mapping, Mapping):
            raise self.error(f"must be a mapping (key: value), got {type(mapping).__name__} {mapping!r}")
        self.mapping = dict(mapping)

    def error(self, message: str, key: Optional[str] = None) -> ConfigError:
        name = f"{self.where}.{key}" if self.where and key else (key or self.where or "config")
        return ConfigError(f"{self.source}: {name}: {message}")

    def check_keys(self, allowed: Tuple[str, ...]) -> None:
        for key in self.mapping:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise self.error(f"unknown key{hint} (allowed here: {', '.join(allowed)})", str(key))

    def get(self, key: str, default: Any = None, *, required: bool = False) -> Any:
        if key not in self.mapping or self.mapping[key] is None:
            if required:
                raise self.error("is required", key)
            return default
        return self.mapping[key]

    def int(self, key: str, default: Optional[int] = None, *, minimum: int = 1) -> Optional[int]:
        value = self.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(f"must be an integer >= {minimum}, got {value!r}", key)
        return int(value)

    def choice(self, key: str, choices: Tuple[str, ...], default: str) -> str:
        value = self.get(key, default)
        if value not in choices:
            raise self.error(f"must be one of {', '.join(choices)}, got {value!r}", key)
        return str(value)

    def bytes(self, key: str, default: Any = None) -> Optional[int]:
        value = self.get(key, default)
        if value is None or value == "auto":
            return None
        return parse_memory(value, lambda msg: self.error(msg, key))

    def boolean(self, key: str, default: bool) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise self.error(f"must be true or false, got {value!r}", key)
        return value

    def string(self, key: str, default: Optional[str] = None, *, required: bool = False) -> Optional[str]:
        value = self.get(key, default, required=required)
        if value is not None and not isinstance(value, str):
            raise self.error(f"must be a string, got {value!r}", key)
        return value


def parse_memory(value: Any, error: Callable[[str], Exception] = ConfigError) -> int:
    """``"4GiB"``/``"2GB"``/``1e9`` -> bytes (``dask.utils.parse_bytes``)."""
    from dask.utils import parse_bytes  # noqa: PLC0415

    if isinstance(value, bool):
        raise error(f"must be a memory size such as '2GB' or '4GiB', got {value!r}")
    try:
        out = int(parse_bytes(value))
    except (ValueError, TypeError, AttributeError):
        raise error(f"must be a memory size such as '2GB' or '4GiB', got {value!r}") from None
    if out <= 0:
        raise error(f"must be a positive memory size, got {value!r}")
    return out


# ----------------------------------------------------------------------------- sections


@dataclasses.dataclass(frozen=True)
class ArraySpec:
    """One input set: ``x`` and optional ``y`` (absolute paths, .npy or Zarr)."""

    x: str
    y: Optional[str] = None


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

    def kernel_fn(self):
        from .. import stax  # noqa: PLC0415

        return stax.from_spec(self.spec_json)[2]


@dataclasses.dataclass(frozen=True)
class LocalClusterConfig:
    """``kind: local``: a ``distributed.LocalCluster`` of worker processes."""

    kind: str = "local"
    n_workers: Optional[int] = None        # None: cores // threads_per_worker
    threads_per_worker: int = 1            # blocks computed at once per worker
    io_threads: Optional[int] = None       # extra threads per worker that write finished
                                           # blocks while the others compute (0: none;
                                           # None: "auto", see auto_io_threads)
    memory_limit: Optional[int] = None     # bytes per worker; None: Dask's "auto"
    processes: bool = True
    dashboard_address: str = ":8787"    # Dask moves to a free port if it is taken
    gpus: Tuple[str, ...] = ()             # CUDA devices: one worker process per device,
                                           # pinned to it (ntkscale.cluster.gpu)

    def __post_init__(self) -> None:
        if self.gpus and self.n_workers is None:
            object.__setattr__(self, "n_workers", len(self.gpus))
        if self.io_threads is None:
            object.__setattr__(self, "io_threads", auto_io_threads(self.n_workers, self.threads_per_worker))

    @property
    def slots(self) -> int:
        n = self.n_workers or max(1, (os.cpu_count() or 1) // self.threads_per_worker)
        return n * self.threads_per_worker


def auto_io_threads(n_workers: Optional[int], threads_per_worker: int, cores: Optional[int] = None) -> int:
    """``io_threads: auto``: one writer thread per worker when the computing
    threads leave a spare core for each worker's writer, else none.

    Measured in benchmarks/bench_gram.py (2-core machine, store on disk): one
    worker with a writer thread on the spare core runs 1.45x faster than
    without; two workers (no spare core) run no faster with writers (median
    4.02 s with vs 3.76 s without, 5 runs each) and keep one block less in
    memory per worker.
    """
    cores = cores or os.cpu_count() or 1
    workers = n_workers or max(1, cores // threads_per_worker)
    return 1 if cores - workers * threads_per_worker >= workers else 0


@dataclasses.dataclass(frozen=True)
class AddressClusterConfig:
    """``kind: address``: an existing scheduler (``address`` or ``scheduler_file``)."""

    kind: str = "address"
    address: Optional[str] = None
    scheduler_file: Optional[str] = None
    slots: Optional[int] = None            # planning hint: task slots expected on the cluster
    io_threads: int = 0                    # threads per worker that only write: start workers
                                           # with --nthreads cores + io_threads


def _io_threads(sec: Section) -> Optional[int]:
    """``io_threads``: ``auto`` (default; None here) or an integer >= 0."""
    value = sec.get("io_threads", "auto")
    if value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise sec.error(f"must be 'auto' or an integer >= 0, got {value!r}", "io_threads")
    return int(value)


def visible_gpus(env: Optional[Dict[str, str]] = None) -> Tuple[str, ...]:
    """CUDA devices this process may use: ``CUDA_VISIBLE_DEVICES`` when set,
    else every device CuPy counts (empty without CuPy or a GPU)."""
    env = os.environ if env is None else env
    if "CUDA_VISIBLE_DEVICES" in env:
        return tuple(d.strip() for d in env["CUDA_VISIBLE_DEVICES"].split(",") if d.strip())
    try:
        import cupy  # noqa: PLC0415 (only asked for gpus: all)

        return tuple(str(i) for i in range(cupy.cuda.runtime.getDeviceCount()))
    except Exception:  # no CuPy, no driver, no device
        return ()


def _gpus(sec: Section) -> Tuple[str, ...]:
    """``gpus``: ``all``, a count N (the first N visible devices) or a list of device ids."""
    value = sec.get("gpus", 0)
    if value == "all" or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        visible = visible_gpus()
        want = len(visible) if value == "all" else value
        if not visible or want > len(visible):
            raise sec.error(f"asks for {value} GPU(s) but {len(visible)} are visible (CUDA_VISIBLE_DEVICES "
                            f"or CuPy); install ntkscale[gpu] on a machine with NVIDIA GPUs, name the "
                            "devices (gpus: [0, 1]) or leave gpus out for CPU workers", "gpus")
        return visible[:want]
    if value == 0 and not isinstance(value, bool):
        return ()
    if isinstance(value, list) and value and all(
            (isinstance(d, int) and not isinstance(d, bool) and d >= 0) or (isinstance(d, str) and d.strip())
            for d in value):
        devices = tuple(str(d).strip() for d in value)
        if len(set(devices)) != len(devices):
            raise sec.error(f"lists a device twice: {value!r}", "gpus")
        return devices
    raise sec.error(f"must be 'all', a number of GPUs or a list of device ids (e.g. [0, 1]), got {value!r}",
                    "gpus")


def _local_cluster(sec: Section) -> LocalClusterConfig:
    sec.check_keys(("kind", "n_workers", "threads_per_worker", "io_threads", "memory_limit",
                    "processes", "dashboard_address", "gpus"))
    dash = sec.string("dashboard_address", ":8787")  # ":0": any free port
    gpus = _gpus(sec)
    n_workers = sec.int("n_workers")
    processes = sec.boolean("processes", True)
    if gpus and n_workers is not None and n_workers != len(gpus):
        raise sec.error(f"is {n_workers} but gpus names {len(gpus)} device(s); a GPU cluster runs one worker "
                        "per GPU: drop n_workers or make it match", "n_workers")
    if gpus and not processes:
        raise sec.error("gpus needs worker processes (each pins its own device); drop processes: false",
                        "processes")
    return LocalClusterConfig(
        n_workers=n_workers, threads_per_worker=sec.int("threads_per_worker", 1),
        io_threads=_io_threads(sec),
        memory_limit=sec.bytes("memory_limit"), processes=processes,
        dashboard_address=dash, gpus=gpus,
    )


def _address_cluster(sec: Section, base: Path) -> AddressClusterConfig:
    sec.check_keys(("kind", "address", "scheduler_file", "slots", "io_threads"))
    address, sched_file = sec.string("address"), sec.string("scheduler_file")
    if (address is None) == (sched_file is None):
        raise sec.error("give exactly one of 'address' (e.g. tcp://host:8786) or 'scheduler_file'")
    if sched_file is not None:
        sched_file = str((base / sched_file).resolve())
    return AddressClusterConfig(address=address, scheduler_file=sched_file, slots=sec.int("slots"),
                                io_threads=sec.int("io_threads", 0, minimum=0))


#: kind -> parser(section, base_dir) -> frozen config. ntkscale.cluster.client maps the
#: same kinds to client factories; slurm/kubernetes register themselves here.
CLUSTER_KINDS: Dict[str, Callable[[Section, Path], Any]] = {
    "local": lambda sec, base: _local_cluster(sec),
    "address": _address_cluster,
}
#: Documented kinds that are not implemented yet (a clear error, not "unknown").
RESERVED_CLUSTER_KINDS = {
    "slurm": "dask-jobqueue SLURMCluster (issue 6)",
    "kubernetes": "the dask-kubernetes operator (issue 6)",
}


def register_cluster_kind(kind: str, parser: Callable[[Section, Path], Any]) -> None:
    """Add a ``cluster.kind`` (its parser returns a frozen dataclass with ``kind``)."""
    CLUSTER_KINDS[kind] = parser
    RESERVED_CLUSTER_KINDS.pop(kind, None)


ClusterConfig = Union[LocalClusterConfig, AddressClusterConfig, Any]


def parse_cluster(mapping: Any, base: Path, source: str) -> ClusterConfig:
    from ..cluster import backends as cluster_backends  # noqa: F401,PLC0415 (registers slurm and kubernetes)

    sec = Section({} if mapping is None else mapping, "cluster", source)
    kind = sec.get("kind", "local")
    if kind in RESERVED_CLUSTER_KINDS and kind not in CLUSTER_KINDS:
        raise sec.error(f"kind {kind!r} ({RESERVED_CLUSTER_KINDS[kind]}) is not available in this "
                        "version; use 'local' or 'address' (a scheduler you started)", "kind")
    if kind not in CLUSTER_KINDS:
        raise sec.error(f"unknown kind {kind!r}; choose one of {', '.join(CLUSTER_KINDS)}", "kind")
    return CLUSTER_KINDS[kind](sec, base)


# ----------------------------------------------------------------------------- the run config

TOP_LEVEL_KEYS = ("data", "kernel", "store", "block_size", "dtype", "backend", "memory_budget",
                  "cluster", "tls", "solver", "task")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A validated run configuration; every path is absolute."""

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
    tls: Optional[Any] = None                    # ntkscale.cluster.backends.TLSOptions (None: plain tcp)
    source: str = "<dict>"

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
            store=str((base / _path_value(top, "store")).resolve()),
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
        out.pop("source")
        return out


def _parse_tls(mapping: Any, base: Path, source: str, check_files: bool) -> Optional[Any]:
    """``tls:`` -> TLSOptions (certificate files, or ``temporary: true``)."""
    if mapping is None:
        return None
    from ..cluster.backends import parse_tls_options  # noqa: PLC0415

    return parse_tls_options(mapping, base, source=source, check_files=check_files)


def _raw_mapping(top: Section, key: str) -> Optional[Mapping[str, Any]]:
    value = top.get(key)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise top.error(f"must be a mapping, got {type(value).__name__}", key)
    return _freeze(value)


def _path_value(sec: Section, key: str) -> str:
    value = sec.get(key, required=True)
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise sec.error(f"must be a path, got {value!r}", key)
    return os.fspath(value)


def _parse_arrays(mapping: Any, where: str, base: Path, source: str, check_files: bool) -> ArraySpec:
    sec = Section(mapping, where, source)
    sec.check_keys(("x", "y"))
    paths = {}
    for key in ("x", "y"):
        if key == "y" and sec.get("y") is None:
            paths[key] = None
            continue
        path = (base / _path_value(sec, key)).resolve()
        if check_files and not path.exists():
            raise sec.error(f"file not found: {path}", key)
        paths[key] = str(path)
    return ArraySpec(x=paths["x"], y=paths["y"])


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
    from .. import stax  # noqa: PLC0415

    sec = Section(mapping, "kernel", source)
    sec.check_keys(("layers", "get"))
    try:
        spec = stax.canonical_spec(sec.get("layers", required=True))
    except SpecError as exc:
        raise sec.error(str(exc), "layers") from None
    get = sec.get("get", "ntk")
    names = (get,) if isinstance(get, str) else tuple(get) if isinstance(get, (list, tuple)) else None
    if not names or any(n not in GET_CHOICES for n in names) or len(set(names)) != len(names):
        raise sec.error(f"must be 'nngp', 'ntk' or [nngp, ntk], got {get!r}", "get")
    # Canonical order: the store layout does not depend on how get was written.
    return KernelConfig(spec_json=stax.spec_to_json(spec), get=tuple(n for n in GET_CHOICES if n in names))


def load_config(path: Union[str, Path], *, check_files: bool = True) -> RunConfig:
    """Read a YAML (``.yaml``/``.yml``) or JSON (``.json``) run configuration."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            raw = json.loads(text)
        else:
            import yaml  # noqa: PLC0415

            raw = yaml.safe_load(text)
    except Exception as exc:  # yaml.YAMLError / json.JSONDecodeError: both name line and column
        raise ConfigError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {exc}") from None
    if raw is None:
        raise ConfigError(f"{path}: the file is empty; see docs/store.md for the run configuration")
    return RunConfig.from_mapping(raw, base_dir=path.parent, source=str(path), check_files=check_files)
