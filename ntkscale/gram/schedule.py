"""Blocks -> Dask futures: one task per block, written from the worker.

Each task (:func:`run_block`) reads its input rows from the store, computes
the block with the kernel engine on the worker's backend (CuPy on a GPU
worker, NumPy otherwise), writes its chunk(s), checksum and manifest entry
(:func:`ntkscale.store.gram_store.write_block`) and returns only a small record; blocks
never travel through the scheduler. Worker deaths are handled by Dask (the
scheduler reschedules the task on another worker, up to
``distributed.scheduler.allowed-failures`` times); exceptions raised by a task
are retried ``retries`` times (``Client.submit(retries=...)``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import socket
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, TextIO, Tuple

from .plan import Block
from ..store.gram_store import input_path, now, write_block

#: Fault-injection hook for tests: seconds each block task sleeps before computing.
FAULT_DELAY_ENV = "NTKSCALE_FAULT_BLOCK_DELAY"


@dataclasses.dataclass(frozen=True)
class Job:
    """What every block task needs; small, pickled into each task."""

    store: str
    spec_json: str
    get: Tuple[str, ...]
    dtype: str
    backend: str = "auto"
    checksum: str = "crc32"
    memory_budget: Optional[int] = None
    run_id: str = ""
    io_threads: int = 0                   # worker threads that only write (see compute_gate)


_GATES: Dict[int, threading.BoundedSemaphore] = {}
_GATES_LOCK = threading.Lock()


def _worker_threads() -> int:
    try:
        from distributed import get_worker  # noqa: PLC0415

        return int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return 1


def compute_gate(io_threads: int) -> Any:
    """At most ``nthreads - io_threads`` block computations at once in this worker.

    A worker with ``threads_per_worker + io_threads`` Dask threads runs that
    many block tasks at once; only their compute phase is gated, so while
    some tasks compute, the others write their finished blocks to the store
    (disk time hidden behind compute, no CPU oversubscription, at most
    ``io_threads`` extra blocks in memory). Hand-written because Dask
    resources gate whole tasks, not one phase of a task.
    """
    if not io_threads:
        return contextlib.nullcontext()
    slots = max(1, _worker_threads() - io_threads)
    with _GATES_LOCK:
        return _GATES.setdefault(slots, threading.BoundedSemaphore(slots))


@functools.lru_cache(maxsize=8)
def _kernel_fn(spec_json: str) -> Any:
    from .. import stax  # noqa: PLC0415

    return stax.from_spec(spec_json)[2]


def _backend(name: str) -> Tuple[str, Any]:
    from ..backend import default_backend_name, namespace_by_name  # noqa: PLC0415

    name = default_backend_name() if name == "auto" else name
    return name, namespace_by_name(name)


def _worker_address() -> str:
    try:
        from distributed import get_worker  # noqa: PLC0415

        return get_worker().address
    except (ImportError, ValueError):
        return f"{socket.gethostname()}:{os.getpid()}"


def run_block(job: Job, block: Block, token: str) -> Dict[str, Any]:
    """Dask task: compute one block and write it into the store; return its record."""
    import zarr  # noqa: PLC0415

    from .compute import compute_block, compute_diag  # noqa: PLC0415

    t0 = time.perf_counter()
    delay = float(os.environ.get(FAULT_DELAY_ENV) or 0)
    if delay:
        time.sleep(delay)
    backend, xp = _backend(job.backend)
    kernel_fn = _kernel_fn(job.spec_json)

    def rows(which: str, r: Tuple[int, int]) -> Any:
        return zarr.open_array(store=job.store, path=input_path(which, "x"), mode="r")[r[0]:r[1]]

    x_rows = rows(block.row_set, block.rows)
    x_cols = None if block.is_diag or block.symmetric else rows("train", block.cols)
    t_read = time.perf_counter()
    with compute_gate(job.io_threads):
        t1, c1 = time.perf_counter(), time.thread_time()
        if block.is_diag:
            values = compute_diag(kernel_fn, x_rows, get=job.get, dtype=job.dtype, xp=xp)
        else:
            values = compute_block(kernel_fn, x_rows, x_cols, get=job.get, dtype=job.dtype, xp=xp,
                                   memory_budget=job.memory_budget)
        t2, c2 = time.perf_counter(), time.thread_time()
    record = {"block": block.key, "token": token, "run_id": job.run_id, "worker": _worker_address(),
              "backend": backend, "read_s": round(t_read - t0, 6), "wait_s": round(t1 - t_read, 6),
              "compute_s": round(t2 - t1, 6),
              # CPU time of the computing thread: below compute_s when it waited for a core
              "compute_cpu_s": round(c2 - c1, 6),
              "finished": now()}
    record = write_block(job.store, block, values, record, job.checksum)
    record["write_s"] = round(time.perf_counter() - t2, 6)
    record["entries"] = block.entries
    record["stored_bytes"] = sum(int(v.nbytes) for v in values.values()) * (2 if block.mirrored else 1)
    return record


class Progress:
    """One status line: blocks done, rate, ETA. Redrawn in place on a terminal,
    otherwise printed every ``every`` seconds.

    Hand-written because progress counts the blocks already in the store and
    weighs blocks by their size (diagonal segments are nearly free); Dask's
    ``progress`` bar knows only this run's tasks.
    """

    def __init__(self, total: int, done_before: int, entries_todo: int, stream: Optional[TextIO] = None,
                 every: float = 10.0, enabled: bool = True):
        self.total, self.done = total, done_before
        self.entries_todo, self.entries_done = max(1, entries_todo), 0
        self.stream, self.enabled = stream or sys.stderr, enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every = 0.2 if self.tty else every
        self.t0 = time.monotonic()
        self._last = -1e9

    def line(self) -> str:
        elapsed = time.monotonic() - self.t0
        frac = self.entries_done / self.entries_todo
        rate = self.entries_done / elapsed if elapsed > 0 else 0.0
        eta = (self.entries_todo - self.entries_done) / rate if rate > 0 else float("nan")
        pct = 100.0 * self.done / max(1, self.total)
        return (f"blocks {self.done}/{self.total} ({pct:.0f}%)  {rate:.3g} entries/s  "
                f"elapsed {_hms(elapsed)}  ETA {_hms(eta) if 0.01 <= frac < 1 else '0:00:00' if frac >= 1 else '?'}")

    def update(self, record: Optional[Dict[str, Any]]) -> None:
        self.done += 1
        if record:
            self.entries_done += int(record.get("entries", 0))
        if not self.enabled:
            return
        t = time.monotonic()
        if t - self._last >= self.every or self.done == self.total:
            self._last = t
            end = "\r" if self.tty and self.done < self.total else "\n"
            print(("\r" if self.tty else "") + self.line(), end=end, file=self.stream, flush=True)

    def close(self) -> None:
        if self.enabled and self.tty:
            print(file=self.stream, flush=True)


def _hms(seconds: float) -> str:
    if math.isnan(seconds) or math.isinf(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


@dataclasses.dataclass
class BlockResults:
    records: List[Dict[str, Any]]
    failed: Dict[str, str]


def block_cost(block: Block) -> int:
    """Relative work of a block task: entries computed plus entries written."""
    return block.entries + block.stored_entries


def submission_order(blocks: Sequence[Block]) -> List[Block]:
    """Largest block first (longest-processing-time order; ties keep plan order).

    Dask starts tasks in submission order, so the small ragged and diagonal
    blocks fill the gaps at the end instead of one big block running alone on
    one worker while the others idle.
    """
    return sorted(blocks, key=block_cost, reverse=True)


def run_blocks(client: Any, job: Job, blocks: Sequence[Block], tokens: Dict[str, str], *,
               progress: Optional[Progress] = None, retries: int = 2,
               on_record: Optional[Callable[[Dict[str, Any]], None]] = None) -> BlockResults:
    """Submit one task per block and wait; a failed block does not stop the others."""
    from dask.base import tokenize  # noqa: PLC0415
    from distributed import as_completed  # noqa: PLC0415

    futures = {}
    for block in submission_order(blocks):
        # Keys are unique per run (run_id): a shared scheduler never hands back a
        # result cached for an earlier run of the same block.
        key = f"ntkscale-{block.key}-{tokenize(job.store, tokens[block.key], job.run_id)}"
        futures[client.submit(run_block, job, block, tokens[block.key], key=key, retries=retries,
                              pure=False)] = block
    records: List[Dict[str, Any]] = []
    failed: Dict[str, str] = {}
    for fut in as_completed(list(futures)):
        block = futures.pop(fut)
        try:
            record = fut.result()
        except Exception as exc:  # KilledWorker, or the task's own error after retries
            why = f"{type(exc).__name__}: {exc}"
            if type(exc).__name__ == "KilledWorker":
                why += (" (workers died while computing it: out of memory? lower block_size or "
                        "raise cluster.memory_limit)")
            failed[block.key] = why
            record = None
        else:
            records.append(record)
            if on_record:
                on_record(record)
        if progress:
            progress.update(record)
        fut.release()
    if progress:
        progress.close()
    return BlockResults(records, failed)
