"""Read-only store operations: ``status``, ``verify`` and ``export``.

``status`` and ``verify`` (without repair) never write to the store and are
safe while a run is going; ``export`` writes only its output file (to a
temporary name first, renamed into place when complete). Repair recomputes
blocks and lives in :mod:`ntkscale.stages.gram`.
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np

from ..data import fingerprint
from ..errors import StoreDamagedError, StoreError
from .blocks import Plan
from .gram_store import GramStore
from .layout import input_path
from .location import StoreLocation
from .lock import lock_holder

StoreOrPath = Union[GramStore, os.PathLike, str]


def _open(store: StoreOrPath) -> GramStore:
    """An already open store as is; a path opened read-only."""
    return store if isinstance(store, GramStore) else GramStore.open(store, "r")


def status(path: os.PathLike | str) -> Dict[str, Any]:
    """Progress of a store: blocks done/total per part, the running run (if any),
    its rate and an ETA. Never writes, takes no lock (works on a read-only store).

    ``complete`` means every block is in the manifest *and* its chunk files are on
    disk with their full size (one ``stat`` a chunk, :meth:`GramStore.chunk_problem`);
    blocks whose chunks are deleted or truncated are listed in ``damaged``. Altered
    bytes are found by the checksums of ``ntkscale verify`` (``checked`` says so).
    """
    loc = StoreLocation.parse(path)
    if not loc.remote and Path(loc.url).exists() and not Path(loc.url).is_dir():
        raise StoreError(f"{path} is a file, not a Gram store (a store is a directory, e.g. run.zarr)")
    if not GramStore.is_store(loc):
        holder = lock_holder(loc)
        if holder is not None:   # a first run is creating the store right now
            return {"store": str(loc.path), "running": True, "holder": holder, "state": "creating",
                    "blocks_done": 0, "blocks_total": None, "complete": False}
    store = GramStore.open(loc, "r")
    plan = store.plan()
    keys = store.manifest.keys()
    parts = {}
    for part, blocks in plan.by_part().items():
        parts[part] = {"blocks_done": sum(b.key in keys for b in blocks), "blocks_total": len(blocks)}
    done = sum(p["blocks_done"] for p in parts.values())
    holder = lock_holder(store.location)
    damaged = {} if holder is not None else store.damaged_chunks(b for b in plan.blocks if b.key in keys)
    out: Dict[str, Any] = {
        "store": str(store.path), "running": holder is not None, "holder": holder,
        "state": "running" if holder is not None else "idle",
        "blocks_done": done, "blocks_total": plan.n_blocks,
        "complete": done == plan.n_blocks and not damaged, "damaged": damaged,
        "checked": "manifest entries and chunk files (presence, size); `ntkscale verify` checks the checksums",
        "parts": parts, "n_train": store.n_train, "n_test": store.n_test,
        "block_size": store.block_size, "dtype": store.dtype, "get": list(store.kinds),
        "spec_hash": store.spec_hash, "storage_bytes": plan.storage_bytes(np.dtype(store.dtype).itemsize,
                                                                          len(store.kinds)),
        "inputs_ready": {w: f"inputs-{w}" in keys for w in ("train", "test")
                         if w == "train" or store.n_test},
    }
    if holder and holder.get("started_unix"):
        out.update(_rate(store, plan, keys, float(holder["started_unix"])))
    return out


def eta_seconds(entries_done: int, entries_todo: int, elapsed: float) -> float:
    """The ETA: entries left at this run's measured rate (NaN before the first entry).

    Blocks are weighed by their kernel entries, so cheap diagonal segments do
    not make the run look faster than it is. The one ETA of ntkscale: the progress
    line of ``ntkscale gram`` (:mod:`ntkscale.gram.progress`) and ``ntkscale status``
    both compute it here.
    """
    rate = entries_done / elapsed if elapsed > 0 else 0.0
    return (entries_todo - entries_done) / rate if rate > 0 else float("nan")


def _rate(store: GramStore, plan: Plan, keys: set, since: float) -> Dict[str, Any]:
    """The running run's rate and ETA from the blocks it finished (manifest
    entries written since the run took the lock), measured from its first to its
    last finished block, so cluster start-up and planning before the first block
    do not slow the rate down. A manifest entry is written once, when its block
    finishes, so its file time is the finish time (sub-second, one ``stat``; the
    record's ISO ``finished`` field has whole seconds; on object storage the object's
    LastModified, one listing for all). The ETA is
    :func:`eta_seconds` of the blocks after the first over that interval, the
    same function as the progress line's."""
    entries = {b.key: b.entries for b in plan.blocks}
    finished = [(t, entries[key]) for key, t in store.manifest.finish_times(keys & set(entries)).items()
                if t >= since]
    finished.sort()
    remaining = sum(n for k, n in entries.items() if k not in keys)
    out: Dict[str, Any] = {"run_blocks_done": len(finished), "run_elapsed_s": round(max(time.time() - since, 0.0), 1),
                           "entries_per_s": None, "eta_s": None}
    if len(finished) >= 2:
        span = finished[-1][0] - finished[0][0]
        measured = sum(n for _, n in finished[1:])     # entries computed between the first and last finish
        eta = eta_seconds(measured, measured + remaining, span)
        if span > 0:
            out["entries_per_s"] = measured / span
        out["eta_s"] = None if math.isnan(eta) else eta
    return out


def verify(path: StoreOrPath, *, threads: Optional[int] = None,
           check_inputs: bool = True) -> Dict[str, Any]:
    """Check every block against its manifest checksum (and the inputs against
    their fingerprints). Returns ``{"ok", "missing", "bad", "inputs"}``.
    ``path`` may be an open :class:`GramStore` (it is not reopened)."""
    store = _open(path)
    plan = store.plan()
    records = store.manifest.records()
    missing = [b.key for b in plan.blocks if b.key not in records]
    present = [b for b in plan.blocks if b.key in records]
    bad: Dict[str, str] = {}
    with concurrent.futures.ThreadPoolExecutor(threads or min(8, os.cpu_count() or 1)) as pool:
        problems = pool.map(lambda b: store.check_block(b, records[b.key]), present)
        for block, problem in zip(present, problems, strict=True):
            if problem is not None:
                bad[block.key] = problem
    inputs: Dict[str, str] = {}
    if check_inputs:
        for which in ("train", "test") if store.n_test else ("train",):
            want = store.fingerprint(which) or {}
            if f"inputs-{which}" not in records:
                inputs[which] = "not copied into the store yet"
                continue
            problems = []
            for name in ("x", "y"):
                if want.get(name) is None:
                    continue
                try:
                    got = fingerprint(store._node(input_path(which, name)))
                except Exception as exc:
                    got = f"unreadable ({type(exc).__name__})"
                if got != want[name]:
                    problems.append(f"{name} does not match its fingerprint")
            inputs[which] = "; ".join(problems) or "ok"
    return {"store": str(store.path), "blocks_total": plan.n_blocks, "ok": len(present) - len(bad),
            "missing": missing, "bad": bad, "inputs": inputs,
            "clean": not missing and not bad and all(v == "ok" for v in inputs.values())}


def missing_blocks(store: GramStore, part: str) -> List[str]:
    """Keys of the blocks of ``part`` without a manifest entry."""
    keys = store.manifest.keys()
    return [b.key for b in store.plan().blocks if b.part == part and b.key not in keys]


def export(path: StoreOrPath, which: str, out: os.PathLike | str, *, kind: Optional[str] = None,
           force: bool = False) -> Path:
    """Write the dense ``train`` (n×n) or ``test`` (m×n) Gram to a ``.npy`` file.

    Every block is checked against its manifest checksum as it is read; any bad
    block fails the export naming it (:class:`StoreDamagedError`) and no file is
    left at ``out``. Reads only: works on a read-only store, takes no lock."""
    store = _open(path)
    if which not in ("train", "test"):
        raise StoreError(f"export takes 'train' or 'test', got {which!r}")
    if kind is None and len(store.kinds) > 1:
        raise StoreError(f"{store.path} holds both nngp and ntk; pick one with --get nngp|ntk")
    if which == "test" and not store.n_test:
        raise StoreError(f"{store.path} has no test set")
    arr = store.array(which, kind or store.kinds[0])
    missing = missing_blocks(store, which)
    if missing:
        shown = ", ".join(missing[:8]) + (", ..." if len(missing) > 8 else "")
        total = sum(b.part == which for b in store.plan().blocks)
        raise StoreError(f"the {which} Gram in {store.path} is incomplete: {len(missing)} of {total} "
                         f"blocks are missing ({shown}); finish it with `ntkscale gram CONFIG` "
                         f"or `ntkscale verify --repair {store.path}`")
    out = Path(out)
    if out.exists() and not force:
        raise StoreError(f"{out} exists; pass --force to overwrite it")
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=arr.dtype, shape=arr.shape)
        bad = _copy_verified(store, which, kind or store.kinds[0], mm)
        mm.flush()
        del mm
        if bad:
            shown = "; ".join(f"{k}: {v}" for k, v in list(bad.items())[:5]) + ("; ..." if len(bad) > 5 else "")
            raise StoreDamagedError(
                f"{len(bad)} {which} blocks of {store.path} fail their checksums ({shown}); nothing was "
                f"written to {out}: repair them with `ntkscale verify --repair {store.path}`")
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def _copy_verified(store: GramStore, which: str, kind: str, mm: np.ndarray) -> Dict[str, str]:
    """Copy every block of ``which`` into ``mm``, each checked against its manifest
    checksum as it is read (a mirrored train block: both chunks); returns the bad ones."""
    records = store.manifest.records()
    bad: Dict[str, str] = {}
    for block in store.plan().blocks:
        if block.part != which:
            continue
        (r0, r1), (c0, c1) = block.rows, block.cols
        for mirror in ((False, True) if block.mirrored else (False,)):
            values, problem = store.read_verified(block, kind, records.get(block.key), mirror)
            if problem is not None:
                bad.setdefault(block.key, problem)
                continue
            if mirror:
                mm[c0:c1, r0:r1] = values.T
            else:
                mm[r0:r1, c0:c1] = values
    return bad