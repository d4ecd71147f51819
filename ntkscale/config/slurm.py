"""The ``cluster: {kind: slurm, ...}`` section: SLURM jobs of Dask workers (dask-jobqueue).

Parsed and validated here (every error names its key); the ``SLURMCluster`` is
made from these options by :mod:`ntkscale.cluster.slurm`.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Optional, Tuple, Union

from .sections import Section, parse_memory

SLURM_KEYS = ("kind", "jobs", "cores", "processes", "memory", "walltime", "partition", "account",
              "gpus_per_job", "interface", "scheduler_interface", "python", "extra_sbatch",
              "prologue", "job_name", "log_directory", "local_directory", "dashboard_address",
              "gpu_workers")

#: How a GPU job starts its workers (one per GPU): ``dask-cuda`` runs ``dask cuda worker``
#: (dask-cuda on the nodes), ``preload`` runs ``dask worker --nworkers N`` with the
#: ntkscale.cluster.gpu preload, ``auto`` picks dask-cuda when the driver has it.
GPU_WORKER_MODES = ("auto", "dask-cuda", "preload")

# minutes | minutes:seconds | hours:minutes:seconds | days-hours[:minutes[:seconds]]
_WALLTIME = re.compile(r"^(\d+(:\d{1,2}){0,2}|\d+-\d{1,2}(:\d{1,2}){0,2})$")


@dataclasses.dataclass(frozen=True)
class SlurmOptions:
    """``cluster: {kind: slurm, ...}``: one SLURM job per ``jobs``, ``processes`` workers each."""

    kind: str = "slurm"
    jobs: int = 1
    cores: int = 1                 # CPUs per job (split between its worker processes)
    processes: int = 1             # Dask worker processes per job
    memory: str = "4GB"            # per job (split between its worker processes)
    walltime: str = "01:00:00"
    partition: Optional[str] = None
    account: Optional[str] = None
    gpus_per_job: int = 0          # --gres=gpu:N; one worker process per GPU
    interface: Optional[str] = None            # workers' (and by default the scheduler's) NIC
    scheduler_interface: Optional[str] = None  # scheduler's NIC when it differs (login node)
    python: Optional[str] = None               # python on the compute nodes (a venv's)
    extra_sbatch: Tuple[str, ...] = ()         # extra '#SBATCH' options, e.g. --constraint=h100
    prologue: Tuple[str, ...] = ()             # shell lines before the worker starts
    job_name: str = "ntkscale-worker"
    log_directory: Optional[str] = None
    local_directory: Optional[str] = None      # worker scratch (spill) directory on the node
    dashboard_address: str = ":8787"
    gpu_workers: str = "auto"                  # GPU_WORKER_MODES

    @property
    def slots(self) -> int:
        """Task slots once every job runs (threads over all workers)."""
        return self.jobs * self.cores


def parse_slurm_options(options: Any, base_dir: Union[str, Path] = ".", *,
                        where: str = "cluster", source: str = "<config>") -> SlurmOptions:
    """Validate ``cluster: {kind: slurm, ...}`` (a mapping or a :class:`Section`);
    relative paths are taken from ``base_dir``; every error names its key."""
    sec = Section.of(options, where, source)
    sec.check_keys(SLURM_KEYS)
    if sec.get("kind", "slurm") != "slurm":
        raise sec.error(f"must be 'slurm' here, got {sec.get('kind')!r}", "kind")
    jobs, cores = sec.int("jobs", 1), sec.int("cores", 1)
    processes = sec.int("processes", 1)
    if processes > cores:
        raise sec.error(f"{processes} worker processes need at least as many cores; "
                        f"cores is {cores}", "processes")
    gpus = sec.int("gpus_per_job", 0, minimum=0)
    if gpus and processes != gpus:
        raise sec.error(f"with gpus_per_job: {gpus} use processes: {gpus} (one worker process "
                        f"per GPU), got {processes}", "processes")
    gpu_workers = sec.get("gpu_workers", "auto")
    if gpu_workers not in GPU_WORKER_MODES:
        raise sec.error(f"must be one of {', '.join(GPU_WORKER_MODES)}, got {gpu_workers!r}",
                        "gpu_workers")
    walltime = sec.get("walltime", "01:00:00")
    if not isinstance(walltime, str) or not _WALLTIME.match(walltime):
        raise sec.error(f"must be a SLURM time such as '01:00:00' or '1-12:00:00' (quote it in "
                        f"YAML), got {walltime!r}", "walltime")
    memory = sec.memory_string("memory", "4GB")
    if parse_memory(memory) // processes < 2**27:
        raise sec.error(f"{memory} split between {processes} worker processes leaves less than "
                        "128 MiB each", "memory")
    extra = sec.string_list("extra_sbatch")
    for item in extra:
        if not item.startswith("-"):
            raise sec.error(f"each entry is an sbatch option such as '--constraint=h100', "
                            f"got {item!r}", "extra_sbatch")
    base = Path(base_dir)

    def path(key: str) -> Optional[str]:
        value = sec.string(key)
        return None if value is None else str((base / value).resolve())

    return SlurmOptions(
        jobs=jobs, cores=cores, processes=processes, memory=memory, walltime=walltime,
        partition=sec.string("partition"), account=sec.string("account"), gpus_per_job=gpus,
        interface=sec.string("interface"), scheduler_interface=sec.string("scheduler_interface"),
        python=sec.string("python"), extra_sbatch=extra, prologue=sec.string_list("prologue"),
        job_name=sec.string("job_name", "ntkscale-worker"),
        log_directory=path("log_directory"), local_directory=sec.string("local_directory"),
        dashboard_address=sec.string("dashboard_address", ":8787"), gpu_workers=gpu_workers,
    )
