"""Preflight: refuse a Gram run that cannot work, before any file is written.

:func:`preflight` takes the plain facts of a planned run (:class:`Facts`: where
the store goes, how many bytes and tasks the plan has, the workers' memory and
count, the backend) and returns typed :class:`Finding` s, errors and warnings,
each naming the numbers behind it and the fix. ``ntkscale plan`` shows them and
``ntkscale gram`` refuses on any error (:class:`~ntkscale.errors.PreflightError`).

Memory follows Dask's worker memory model: a worker pauses at 80 % of its
``memory_limit`` (``distributed.worker.memory.pause``) and spills managed data
from 60 % (``target``); the blocks a worker holds at once must stay well under
the pause threshold, so the planner budgets :data:`TARGET_FRACTION` of the
limit after a :data:`WORKER_BASELINE` for the interpreter and its imports.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
from pathlib import Path
from typing import Dict, List, Optional

from ..backend import namespace_by_name
from .plan import ENGINE_STRIP_ROWS

#: Dask pauses a worker at this fraction of its memory_limit.
PAUSE_FRACTION = 0.8
#: The planner keeps a worker's blocks under this fraction (Dask's "target").
TARGET_FRACTION = 0.6
#: Memory of an idle worker process (interpreter, NumPy, numba, distributed).
WORKER_BASELINE = 256 << 20
#: Above this many block tasks the scheduler overhead shows (~1 ms a task): warn.
WARN_TASKS = 10_000
#: Above this many block tasks the run is refused (scheduler memory, hours of overhead).
MAX_TASKS = 1_000_000
#: A local cluster with more worker processes than this many per core is refused.
MAX_WORKERS_PER_CORE = 4
#: Bytes a store file takes beyond its data (a filesystem block), for the disk estimate.
FILE_OVERHEAD = 4096
#: Keep this fraction of the free space free: warn above it.
DISK_WARN_FRACTION = 0.9


@dataclasses.dataclass(frozen=True)
class Finding:
    """One preflight result: ``level`` is ``"error"`` (refused) or ``"warning"``."""

    level: str
    check: str          # "store", "disk", "memory", "tasks", "workers", "backend"
    message: str
    numbers: Dict[str, float] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> Dict[str, object]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Facts:
    """What the checks need to know about a planned run (no config objects)."""

    store: str
    store_exists: bool
    bytes_todo: int                      # Gram/diagonal bytes still to write (data only)
    files_todo: int                      # chunk files and manifest entries still to write
    input_bytes: int                     # the inputs copied into a new store
    tasks: int                           # block tasks still to run
    block_size: int
    block_size_fixed: bool               # the config (or the store) fixed it; else planned
    block_bytes: int                     # one task's outputs plus its transposed copy
    engine_bytes_per_entry: float        # the kernel path's temporaries per entry
    engine_budget: int                   # memory budget the task hands the engine
    local: bool                          # a LocalCluster on this machine
    n_workers: Optional[int] = None
    blocks_per_worker: int = 1           # block tasks a worker holds at once (threads + io threads)
    memory_limit: Optional[int] = None   # per worker, when known
    backend: str = "auto"
    cores: int = dataclasses.field(default_factory=lambda: os.cpu_count() or 1)


def task_peak_bytes(block_bytes: int, block_size: int, engine_bytes_per_entry: float, engine_budget: int) -> int:
    """Peak memory of one block task: its outputs (and transposed copy) plus the engine's
    temporaries, which it tiles to ``engine_budget`` but never below one strip of
    ``ENGINE_STRIP_ROWS`` rows across the block."""
    full = block_size * block_size * engine_bytes_per_entry
    strip = ENGINE_STRIP_ROWS * block_size * engine_bytes_per_entry
    return int(block_bytes + min(full, max(engine_budget, strip)))


def _existing_ancestor(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_store(f: Facts) -> List[Finding]:
    if "://" in f.store:
        return []
    path = Path(f.store)
    if path.exists() and not path.is_dir():
        return [Finding("error", "store", f"store: {path} is a file, not a directory; choose another path")]
    if f.store_exists:
        if not os.access(path, os.W_OK):
            return [Finding("error", "store", f"store: {path} is read-only here; `gram` must write into it: make "
                            "it writable, or use the read-only commands (status, verify, export, predict -o)")]
        return []
    parent = path.parent
    if not parent.is_dir():
        return [Finding("error", "store", f"store: the parent directory {parent} does not exist; create it "
                        f"(mkdir -p {parent}) or choose another path")]
    if not os.access(parent, os.W_OK | os.X_OK):
        return [Finding("error", "store", f"store: cannot create {path.name} in {parent} (not writable by this "
                        "user or a read-only filesystem); choose a writable directory")]
    return []


def check_disk(f: Facts) -> List[Finding]:
    if "://" in f.store:
        return []
    where = _existing_ancestor(Path(f.store))
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return []
    need = f.bytes_todo + f.files_todo * FILE_OVERHEAD + (0 if f.store_exists else f.input_bytes)
    nums = {"bytes_needed": need, "bytes_free": free}
    if need > free:
        return [Finding("error", "disk", f"the plan writes {_size(need)} into the store but only {_size(free)} "
                        f"are free at {where}; free space, put the store on a larger disk, or shrink the run "
                        "(fewer rows, one kernel in kernel.get, dtype float32)", nums)]
    if need > DISK_WARN_FRACTION * free:
        return [Finding("warning", "disk", f"the plan writes {_size(need)} into the store, "
                        f"{100 * need / free:.0f}% of the {_size(free)} free at {where}", nums)]
    return []


def check_memory(f: Facts) -> List[Finding]:
    if not f.memory_limit:
        return []
    peak = task_peak_bytes(f.block_bytes, f.block_size, f.engine_bytes_per_entry, f.engine_budget)
    worker = f.blocks_per_worker * peak + WORKER_BASELINE
    pause = PAUSE_FRACTION * f.memory_limit
    nums = {"task_peak_bytes": peak, "worker_bytes": worker, "pause_bytes": pause, "memory_limit": f.memory_limit,
            "block_size": f.block_size}
    if worker <= pause:
        return []
    if f.block_size_fixed:
        return [Finding("error", "memory", f"block_size {f.block_size} needs ~{_size(peak)} per task x "
                        f"{f.blocks_per_worker} tasks per worker + {_size(WORKER_BASELINE)} = {_size(worker)}, "
                        f"above Dask's pause threshold {_size(pause)} (80% of memory_limit {_size(f.memory_limit)}): "
                        "workers would stall; lower block_size (or leave it out to plan one) or raise "
                        "cluster.memory_limit", nums)]
    # a planned block already shrank to the budget: only the limit itself is too small
    return [Finding("warning", "memory", f"even the planned block size {f.block_size} needs ~{_size(worker)} per "
                    f"worker (~{_size(peak)} per task x {f.blocks_per_worker} + {_size(WORKER_BASELINE)} for the "
                    f"worker itself), above Dask's pause threshold {_size(pause)} (80% of memory_limit "
                    f"{_size(f.memory_limit)}): raise cluster.memory_limit", nums)]


def check_tasks(f: Facts) -> List[Finding]:
    nums = {"tasks": f.tasks, "block_size": f.block_size}
    if f.tasks > MAX_TASKS:
        return [Finding("error", "tasks", f"block size {f.block_size} plans {f.tasks:,} block tasks (over "
                        f"{MAX_TASKS:,}: the scheduler overhead alone would take hours); raise block_size or "
                        "leave it out to plan one", nums)]
    if f.tasks > WARN_TASKS:
        return [Finding("warning", "tasks", f"block size {f.block_size} plans {f.tasks:,} block tasks and as many "
                        f"files (~{f.tasks / 1000 / 60:.0f} min of scheduler overhead at ~1 ms a task); a larger "
                        "block_size runs faster", nums)]
    return []


def check_workers(f: Facts) -> List[Finding]:
    if not f.local or not f.n_workers:
        return []
    most = MAX_WORKERS_PER_CORE * f.cores
    if f.n_workers > most:
        return [Finding("error", "workers", f"cluster.n_workers {f.n_workers:,} is more than {MAX_WORKERS_PER_CORE}x "
                        f"the {f.cores} cores of this machine (at most {most}); leave n_workers out (one per "
                        "core) or use a cluster kind that spans machines", {"n_workers": f.n_workers,
                                                                            "cores": f.cores})]
    return []


def check_backend(f: Facts) -> List[Finding]:
    """``backend: cupy`` on a local cluster needs CuPy and a GPU here (a remote
    cluster's workers are checked by their first block)."""
    if f.backend != "cupy" or not f.local:
        return []
    if importlib.util.find_spec("cupy") is None:
        return [Finding("error", "backend", "backend: cupy, but CuPy is not installed; install ntkscale[gpu] "
                        "(cupy-cuda12x) on a machine with an NVIDIA GPU, or set backend: numpy (or auto)")]
    try:
        namespace_by_name("cupy")
    except RuntimeError as exc:
        return [Finding("error", "backend", f"{exc}")]
    return []


CHECKS = (check_store, check_disk, check_memory, check_tasks, check_workers, check_backend)


def preflight(facts: Facts) -> List[Finding]:
    """Every finding for ``facts`` (errors and warnings), in the order of :data:`CHECKS`."""
    out: List[Finding] = []
    for check in CHECKS:
        out.extend(check(facts))
    return out


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n} B"
