"""Blocks -> Dask futures: one task per block, written from the worker.

Each task (:func:`run_block`) reads its input rows from the store, computes
the block with the kernel engine on the worker's backend (CuPy on a GPU
worker, NumPy otherwise), writes its chunk(s), checksum and manifest entry
(:func:`ntkscale.store.manifest.write_block`) and returns only a small record; blocks
never travel through the scheduler. Worker deaths are handled by Dask (the
scheduler reschedules the task on another worker, up to
``distributed.scheduler.allowed-failures`` times); exceptions raised by a task
are retried ``retries`` times (``Client.submit(retries=...)``), unless they are
persistent (:mod:`ntkscale.gram.faults`: disk full, read-only store, missing
backend, bad spec): those come back as a record, and :func:`run_blocks` stops
the run at once, cancelling the blocks not yet finished.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..store.layout import input_path, now
from ..store.manifest import write_block
from ..store.blocks import Block
from .compute import backend_for, compute_block, compute_diag, kernel_fn_for
from .faults import Fault, persistent_fault
from .progress import Progress

#: Fault-injection hook for tests: seconds each block task sleeps before computing.
FAULT_DELAY_ENV = "NTKSCALE_FAULT_BLOCK_DELAY"


@dataclasses.dataclass(frozen=True)
class Job:
    """What every block task needs; small, pickled into each task."""

    store: Any                            # the store's directory, or zarr's FsspecStore for a URL
    spec_json: str                        # canonical spec JSON: the one form a task gets
    get: Tuple[str, ...]
    dtype: str
    backend: str = "auto"
    checksum: str = "crc32"
    memory_budget: Optional[int] = None
    run_id: str = ""
    io_threads: int = 0                   # worker threads that only write (see compute_gate)
    patterns: bool = False                # inputs/<set>/pattern: graph patterns sliced with x


_GATES: Dict[int, threading.BoundedSemaphore] = {}
_GATES_LOCK = threading.Lock()


def _worker_threads() -> int:
    from distributed import get_worker  # heavy import, kept out of `import ntkscale` and `ntkscale --help`

    try:
        return int(get_worker().state.nthreads)
    except (ValueError, AttributeError):
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


def _worker_address() -> str:
    from distributed import get_worker  # heavy import, kept out of `import ntkscale` and `ntkscale --help`

    try:
        return get_worker().address
    except ValueError:
        return f"{socket.gethostname()}:{os.getpid()}"


def run_block(job: Job, block: Block, token: str) -> Dict[str, Any]:
    """Dask task: compute one block and write it into the store; return its record.

    A persistent failure (:func:`~ntkscale.gram.faults.persistent_fault`) is
    returned as ``{"block": key, "fault": {...}}`` instead of raised: Dask
    would retry it in vain and log a traceback on the worker for each try.
    """
    try:
        return _run_block(job, block, token)
    except Exception as exc:
        fault = persistent_fault(exc)
        if fault is None:
            raise                       # transient: Dask retries it
        return {"block": block.key, "fault": fault.as_dict()}


def _run_block(job: Job, block: Block, token: str) -> Dict[str, Any]:
    t0, w0 = time.perf_counter(), time.time()
    delay = float(os.environ.get(FAULT_DELAY_ENV) or 0)
    if delay:
        time.sleep(delay)
    backend, xp = backend_for(job.backend)
    kernel_fn = kernel_fn_for(job.spec_json)

    def rows(which: str, r: Tuple[int, int], name: str = "x") -> Any:
        import zarr  # heavy import, kept out of `import ntkscale` and `ntkscale --help`

        return zarr.open_array(store=job.store, path=input_path(which, name), mode="r",
                               zarr_format=3)[r[0]:r[1]]

    x_rows = rows(block.row_set, block.rows)
    x_cols = None if block.is_diag or block.symmetric else rows("train", block.cols)
    p_rows = rows(block.row_set, block.rows, "pattern") if job.patterns else None
    p_cols = rows("train", block.cols, "pattern") if job.patterns and x_cols is not None else None
    t_read = time.perf_counter()
    with compute_gate(job.io_threads):
        t1, c1 = time.perf_counter(), time.thread_time()
        if block.is_diag:
            values = compute_diag(kernel_fn, x_rows, get=job.get, dtype=job.dtype, xp=xp, pattern=p_rows)
        else:
            values = compute_block(kernel_fn, x_rows, x_cols, get=job.get, dtype=job.dtype, xp=xp,
                                   memory_budget=job.memory_budget, patterns=(p_rows, p_cols))
        t2, c2 = time.perf_counter(), time.thread_time()
    record = {"block": block.key, "token": token, "run_id": job.run_id, "worker": _worker_address(),
              "backend": backend, "read_s": round(t_read - t0, 6), "wait_s": round(t1 - t_read, 6),
              "compute_s": round(t2 - t1, 6),
              # CPU time of the computing thread: below compute_s when it waited for a core
              "compute_cpu_s": round(c2 - c1, 6),
              # wall-clock (unix) times of the task's start and its compute phase: a run's
              # timeline (where each worker's time went) is rebuilt from them
              "t_start": round(w0, 6), "t_compute": [round(w0 + t1 - t0, 6), round(w0 + t2 - t0, 6)],
              "finished": now()}
    record = write_block(job.store, block, values, record, job.checksum)
    t3 = time.perf_counter()
    record["write_s"] = round(t3 - t2, 6)
    record["t_end"] = round(w0 + t3 - t0, 6)
    record["entries"] = block.entries
    record["stored_bytes"] = sum(int(v.nbytes) for v in values.values()) * (2 if block.mirrored else 1)
    return record


@dataclasses.dataclass
class BlockResults:
    records: List[Dict[str, Any]]
    failed: Dict[str, str]
    fault: Optional[Tuple[str, Fault]] = None   # (block, fault): the persistent failure that stopped the run
    cancelled: int = 0                          # blocks not run because of it


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


#: After a persistent failure, how long the run waits for its tasks already running
#: to end (they fail fast on the same fault) before it closes the cluster and the lock.
DRAIN_S = 30.0


def stop_blocks(client: Any, futures: List[Any], timeout: float = DRAIN_S) -> None:
    """Cancel the blocks not started yet and wait for the running ones to end.

    Cancelling does not interrupt a running task: left alone it would write
    after the lock is released, or be killed noisily when the cluster closes
    under it. So only queued tasks are cancelled; running ones are awaited
    (up to ``timeout``), and cancelled at the end if they are still running.
    """
    from distributed import wait  # heavy import, kept out of `import ntkscale` and `ntkscale --help`

    deadline = time.monotonic() + timeout
    left = list(futures)
    while left and time.monotonic() < deadline:
        try:
            running = {k for ks in client.processing().values() for k in ks}
        except Exception:  # the scheduler is gone: nothing runs any more
            return
        queued = [f for f in left if f.key not in running and not f.done()]
        if queued:
            client.cancel(queued)
        left = [f for f in left if f.key in running and not f.done()]
        if left:
            try:
                wait(left, timeout=max(0.1, min(1.0, deadline - time.monotonic())))
            except Exception:  # distributed's TimeoutError: look again
                pass
            left = [f for f in left if not f.done()]
    if left:
        client.cancel(left)


def run_blocks(client: Any, job: Job, blocks: Sequence[Block], tokens: Dict[str, str], *,
               progress: Optional[Progress] = None, retries: int = 2,
               on_record: Optional[Callable[[Dict[str, Any]], None]] = None) -> BlockResults:
    """Submit one task per block and wait; a failed block does not stop the others."""
    from dask.base import tokenize  # heavy import, kept out of `import ntkscale` and `ntkscale --help`
    from distributed import as_completed  # heavy import, kept out of `import ntkscale` and `ntkscale --help`

    futures = {}
    for block in submission_order(blocks):
        # Keys are unique per run (run_id): a shared scheduler never hands back a
        # result cached for an earlier run of the same block.
        key = f"ntkscale-{block.key}-{tokenize(job.store, tokens[block.key], job.run_id)}"
        futures[client.submit(run_block, job, block, tokens[block.key], key=key, retries=retries,
                              pure=False)] = block
    records: List[Dict[str, Any]] = []
    failed: Dict[str, str] = {}
    fault: Optional[Tuple[str, Fault]] = None
    for fut in as_completed(list(futures)):
        block = futures.pop(fut, None)
        if block is None:               # cancelled after a persistent failure
            continue
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
            if "fault" in record:       # persistent: no other block can succeed either
                fault = (block.key, Fault.from_dict(record["fault"]))
                failed[block.key] = fault[1].detail
                record = None
            else:
                records.append(record)
                if on_record:
                    on_record(record)
        if progress:
            progress.update(record)
        fut.release()
        if fault is not None:
            break
    cancelled = len(futures)
    if futures:
        stop_blocks(client, list(futures))
        futures.clear()
    if progress:
        progress.close()
    return BlockResults(records, failed, fault, cancelled)
