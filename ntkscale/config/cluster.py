"""The ``cluster:`` section: which Dask cluster a run uses, one parser per kind.

``kind: local``       :class:`LocalClusterConfig`: a ``distributed.LocalCluster`` of worker
                      processes (the default; with ``gpus``, one worker per CUDA device).
``kind: address``     :class:`AddressClusterConfig`: a scheduler someone started
                      (``address: tcp://host:8786`` or ``scheduler_file: path``).
``kind: slurm``       :class:`~ntkscale.config.slurm.SlurmOptions` (dask-jobqueue).
``kind: kubernetes``  :class:`~ntkscale.config.kubernetes.KubernetesOptions` (the Dask operator).

:data:`CLUSTER_PARSERS` lists the kinds; :data:`ntkscale.cluster.client.OPENERS` opens a
Dask client for each of the same kinds (a test checks that both list the same ones).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

from .kubernetes import KubernetesOptions, parse_kubernetes_options
from .sections import Section
from .slurm import SlurmOptions, parse_slurm_options

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
    """``io_threads: auto``: two writer threads per worker.

    A block's write is fsync'd (:mod:`ntkscale.store.durable`), so a writer
    largely waits for the disk; without one every block's write stalls the
    worker's next block, and with one a fast kernel still waits for its writes.
    Measured in benchmarks/bench_gram.py (2 workers on 2 cores, FC3 NNGP+NTK,
    n = 16384, float32, store on disk, fsync'd): block phase 11.3 s with no
    writer, 7.3 s with one (single runs). With the fused FC pass of 2026-12-02,
    two runs of 3 rounds each: the write time not hidden behind compute was
    0.45–1.11 s per worker with two writers against 1.32–2.06 s with one, and
    the median efficiency against the roofline 0.94 / 0.86 with two against
    0.80 / 0.87 with one (the disk's fsync'd bandwidth varied 0.43–0.51 GB/s
    between rounds). Each writer holds one more block per worker, which the
    planner counts. For a conv kernel, where compute binds, the count does not
    matter (issue 14, benchmarks/README.md "Gram engine").
    ``n_workers``, ``threads_per_worker`` and ``cores`` are kept for callers
    that pass them.
    """
    return 2


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


def visible_gpus(env: Optional[Mapping[str, str]] = None) -> Tuple[str, ...]:
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


def parse_local_cluster(sec: Section) -> LocalClusterConfig:
    """``cluster: {kind: local, ...}``."""
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


def parse_address_cluster(sec: Section, base: Path) -> AddressClusterConfig:
    """``cluster: {kind: address, ...}``; ``scheduler_file`` is taken from ``base``."""
    sec.check_keys(("kind", "address", "scheduler_file", "slots", "io_threads"))
    address, sched_file = sec.string("address"), sec.string("scheduler_file")
    if (address is None) == (sched_file is None):
        raise sec.error("give exactly one of 'address' (e.g. tcp://host:8786) or 'scheduler_file'")
    if sched_file is not None:
        sched_file = str((base / sched_file).resolve())
    return AddressClusterConfig(address=address, scheduler_file=sched_file, slots=sec.int("slots"),
                                io_threads=sec.int("io_threads", 0, minimum=0))


ClusterConfig = Union[LocalClusterConfig, AddressClusterConfig, SlurmOptions, KubernetesOptions]

#: ``cluster.kind`` -> parser(section, base_dir) -> the frozen config of that kind.
CLUSTER_PARSERS: Dict[str, Callable[[Section, Path], ClusterConfig]] = {
    "local": lambda sec, base: parse_local_cluster(sec),
    "address": parse_address_cluster,
    "slurm": lambda sec, base: parse_slurm_options(sec, base),
    "kubernetes": lambda sec, base: parse_kubernetes_options(sec),
}


def parse_cluster(mapping: Any, base: Path, source: str) -> ClusterConfig:
    """Validate ``cluster:`` (None: a default local cluster) with the parser of its kind."""
    sec = Section({} if mapping is None else mapping, "cluster", source)
    kind = sec.get("kind", "local")
    if not isinstance(kind, str) or kind not in CLUSTER_PARSERS:
        raise sec.error(f"unknown kind {kind!r}; choose one of {', '.join(CLUSTER_PARSERS)}", "kind")
    return CLUSTER_PARSERS[kind](sec, base)
