"""The Gram pipeline: config -> validated inputs -> store -> plan -> blocks.

Python API (the CLI maps onto it one to one)::

    from ntkscale.config.run import load_config
    from ntkscale.stages.gram import GramPipeline, repair
    from ntkscale.store.gram_store import GramStore

    pipe = GramPipeline(load_config("config.yaml"))
    pipe.describe()                 # the plan, as `ntkscale plan` prints it (no Dask)
    report = pipe.run()             # computes only what the store is missing
    store = GramStore.open(report.store)
    K = store.train_array("ntk")[...]

A run validates the config and every input first (before any work), refuses
an incompatible store without touching it, takes the store's lock, copies the
inputs in, and submits one Dask task per missing block.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import sys
import time
import uuid
from typing import Any, Dict, List, Optional, TextIO

import numpy as np

from .. import __version__
from ..cluster import check_store_visible, dashboard_link, open_client, security_from_tls, total_threads
from ..cluster.gpu import check_gpus
from ..config.run import LocalClusterConfig, RunConfig
from ..data import InputSet, load_inputs
from ..errors import BlockFailedError, NtkscaleError, PersistentBlockError, PreflightError, StoreError
from ..stax.engine import Explanation
from ..gram.plan import choose_block_size, describe, effective_block_size
from ..gram.preflight import Facts, Finding, preflight
from ..store.blocks import Plan, make_plan
from ..gram.progress import Progress, say
from ..gram.schedule import Job, run_blocks
from ..store.gram_store import GramStore
from ..store.location import StoreLocation, check_remote_visible, is_url, register_options
from ..store.layout import FORMAT_VERSION, now
from ..store.lock import StoreLock
from ..store.maintenance import verify
from ..store.manifest import DEFAULT_CHECKSUM, block_token
from ..store.meta import StoreDiff
from .budget import (DEFAULT_TASK_MEMORY, MIN_TASK_MEMORY, blocks_per_worker, io_threads, planned_slots,  # noqa: F401
                     task_memory, worker_memory)

#: How long a run waits for the first worker of an existing cluster.
WAIT_FOR_WORKERS_S = 120

@dataclasses.dataclass
class RunReport:
    """What a run did (``GramPipeline.run`` and ``repair``)."""

    store: str
    blocks_total: int
    blocks_done_before: int
    blocks_computed: int
    seconds: float
    entries_computed: int = 0
    stored_bytes: int = 0
    task_seconds: float = 0.0     # read + compute + write, summed over blocks
    compute_seconds: float = 0.0  # kernel time alone, summed over blocks
    blocks_seconds: float = 0.0   # wall time from the first submit to the last block
    slots: int = 0
    dashboard: Optional[str] = None
    run_id: str = ""
    records: List[Dict[str, Any]] = dataclasses.field(default_factory=list, repr=False)

    def summary(self) -> str:
        rate = self.entries_computed / self.seconds if self.seconds else 0.0
        return (f"{self.store}: computed {self.blocks_computed} blocks, {self.blocks_done_before} were "
                f"already finished ({self.blocks_total} in all) in {self.seconds:.1f} s "
                f"({rate:.3g} entries/s)")


class GramPipeline:
    """Compute a run's Gram store. ``recompute_test`` replaces a store's test
    part made from other test inputs; ``replace_y`` stores changed labels."""

    def __init__(self, config: RunConfig, *, recompute_test: bool = False, replace_y: bool = False,
                 progress: bool = True, stream: Optional[TextIO] = None):
        self.config = config
        self.recompute_test, self.replace_y = recompute_test, replace_y
        self.progress, self.stream = progress, stream
        self.kernel_fn = config.kernel.kernel_fn()
        self._inputs: Optional[Dict[str, InputSet]] = None
        register_options(config.store, config.store_options)   # `StoreLock(config.store)` finds them
        self.location = StoreLocation.parse(config.store, config.store_options or None)  # a bad URL: here

    # -- validation and planning (no Dask) ------------------------------------
    def inputs(self) -> Dict[str, InputSet]:
        """Open, check and fingerprint every input (once)."""
        if self._inputs is None:
            self._inputs = load_inputs(self.config.data, self.kernel_fn)
        return self._inputs

    def wanted(self) -> Dict[str, Any]:
        sets = self.inputs()
        return {
            "spec": self.kernel_fn.spec, "spec_hash": self.kernel_fn.spec_hash,
            "dtype": self.config.dtype, "get": list(self.config.kernel.get),
            "fingerprints": {k: s.fingerprints() for k, s in sets.items()},
            "sources": {k: s.sources() for k, s in sets.items()},
            "n_train": sets["train"].n, "n_test": sets["test"].n if "test" in sets else 0,
            "sample_shape": list(sets["train"].sample_shape),
        }

    def _existing_store(self, mode: str = "r") -> Optional[GramStore]:
        """The store at ``config.store`` opened in ``mode``, or ``None`` when there is none yet."""
        loc = self.location
        if GramStore.is_store(loc):
            return GramStore.open(loc, mode)
        if loc.exists() and (not loc.remote and not os.path.isdir(loc.url) or loc.children() - {"lock"}):
            raise StoreError(f"store: {loc.path} exists and is not a Gram store; choose another path")
        loc.check_bucket()
        return None

    def _check(self, store: GramStore, want: Dict[str, Any]) -> StoreDiff:
        """The one compatibility check of a stage call (raises SpecMismatchError)."""
        return store.diff(want, recompute_test=self.recompute_test, replace_y=self.replace_y)

    def explain(self, rows: int = 1) -> Explanation:
        """How a block of ``rows × rows`` train pairs is evaluated: the kernel path and
        its cost (``kernel_fn.explain`` for this run's shapes, device and dtype)."""
        shape = (rows,) + tuple(self.inputs()["train"].sample_shape)
        device = "gpu" if self.config.backend == "cupy" else "cpu"
        return self.kernel_fn.explain(shape, shape, device=device, dtype=self.config.dtype,
                                      memory_budget=task_memory(self.config) // 2)

    def bytes_per_entry(self) -> float:
        """Memory per kernel entry the chosen kernel path holds, in bytes (the spec's
        declared cost, see :meth:`explain`)."""
        return self.explain().bytes_per_entry

    def block_size(self, n_train: int, n_test: int) -> int:
        """Block size of a new store: the config's, or one from the memory budget and the spec's cost."""
        if self.config.block_size:
            return effective_block_size(self.config.block_size, n_train, n_test)
        return choose_block_size(n_train, n_test, itemsize=np.dtype(self.config.dtype).itemsize,
                                 n_kernels=len(self.config.kernel.get),
                                 memory_per_task=task_memory(self.config), slots=planned_slots(self.config),
                                 bytes_per_entry=self.bytes_per_entry())

    def _plan(self, store: Optional[GramStore], want: Dict[str, Any]) -> Plan:
        if store is not None:
            return make_plan(want["n_train"], want["n_test"] or store.n_test, store.block_size)
        return make_plan(want["n_train"], want["n_test"], self.block_size(want["n_train"], want["n_test"]))

    def plan(self) -> Plan:
        """The block plan; an existing store's block size (and test set) win."""
        want = self.wanted()
        store = self._existing_store()
        if store is not None:
            self._check(store, want)
        return self._plan(store, want)

    def describe(self) -> Dict[str, Any]:
        """The plan as ``ntkscale plan`` prints it (no Dask)."""
        want = self.wanted()
        store = self._existing_store()
        if store is not None:
            self._check(store, want)
        plan = self._plan(store, want)
        done = store.manifest.keys() if store is not None else ()
        shape = self.inputs()["train"].sample_shape
        flops = float(self.kernel_fn.cost(shape)["flops"])
        out = describe(plan, np.dtype(self.config.dtype).itemsize, self.config.kernel.get, flops, done)
        out.update(store=self.config.store, store_exists=store is not None, flops_per_entry=flops,
                   task_memory=task_memory(self.config), slots=planned_slots(self.config),
                   kernel=self.explain(plan.block_size).as_dict())
        out["preflight"] = [f.as_dict() for f in self.check(store, plan)]
        return out

    def findings(self, store: Optional[GramStore], plan: Plan) -> List[Finding]:
        """The preflight findings of this run (:mod:`ntkscale.gram.preflight`): free disk,
        worker memory, task count, worker count, backend and store path."""
        c, itemsize, nk = self.config.cluster, np.dtype(self.config.dtype).itemsize, len(self.config.kernel.get)
        done = store.manifest.keys() if store is not None else set()
        todo = [b for b in plan.blocks if b.key not in done]
        chunk = {p: int(np.prod(plan.chunk_shape(p))) for p in plan.by_part()}
        copies = [(2 if b.mirrored else 1) for b in todo]
        sets = self.inputs()
        b = plan.block_size
        facts = Facts(
            store=self.config.store, store_exists=store is not None,
            bytes_todo=sum(chunk[blk.part] * k for blk, k in zip(todo, copies)) * itemsize * nk,
            files_todo=sum(k * nk + 1 for k in copies),
            input_bytes=sum(int(np.prod(s.x.shape)) * itemsize for s in sets.values()),
            tasks=len(todo), block_size=b, block_size_fixed=bool(self.config.block_size) or store is not None,
            block_bytes=(nk + 1) * b * b * itemsize, engine_bytes_per_entry=self.bytes_per_entry(),
            engine_budget=task_memory(self.config) // 2, local=isinstance(c, LocalClusterConfig),
            n_workers=getattr(c, "n_workers", None), blocks_per_worker=blocks_per_worker(self.config),
            memory_limit=worker_memory(self.config), backend=self.config.backend)
        return preflight(facts)

    def check(self, store: Optional[GramStore], plan: Plan) -> List[Finding]:
        """Run the preflight once: raise :class:`PreflightError` naming every error,
        else return the warnings."""
        found = self.findings(store, plan)
        errors = [f.message for f in found if f.level == "error"]
        if errors:
            raise PreflightError(f"refused before any work: {'; '.join(errors)}")
        return found

    # -- running ---------------------------------------------------------------
    def _prepare(self, store: Optional[GramStore], diff: Optional[StoreDiff], want: Dict[str, Any]) -> GramStore:
        """Under the lock: create the store or apply ``diff`` to it, copy missing inputs."""
        sets = self.inputs()
        if store is None:
            meta = dict(want, format_version=FORMAT_VERSION, ntkscale_version=__version__, created=now(),
                        block_size=self.block_size(want["n_train"], want["n_test"]),
                        checksum=DEFAULT_CHECKSUM)
            store = GramStore.create(self.location, meta)
            store.create_part_arrays("train")
            if want["n_test"]:
                store.create_part_arrays("test")
        else:
            assert diff is not None
            if self.config.block_size and self.block_size(store.n_train, store.n_test) != store.block_size:
                self._say(f"using the store's block size {store.block_size} (the config says "
                          f"{self.config.block_size})")
            if diff.drop_test:
                self._say(f"recomputing the test part of {store.path} (new test inputs)")
                store.drop_part("test")
            if diff.new_test:
                fps, src = dict(store.meta["fingerprints"]), dict(store.meta.get("sources") or {})
                fps["test"], src["test"] = want["fingerprints"]["test"], want["sources"]["test"]
                store.set_meta(n_test=want["n_test"], fingerprints=fps, sources=src)
                store.create_part_arrays("test")
            for which in diff.replace_y:
                store.write_inputs(which, None, sets[which].y)
                fps = dict(store.meta["fingerprints"])
                fps[which] = dict(fps[which], y=want["fingerprints"][which]["y"])
                store.set_meta(fingerprints=fps)
        store.remove_partial_writes()        # chunk writes cut short by a killed run
        for part in ("train", "test") if store.n_test else ("train",):
            store.ensure_part_arrays(part)   # a run killed while creating the store
        keys = store.manifest.keys()
        for which, s in sets.items():
            if f"inputs-{which}" not in keys:
                store.write_inputs(which, s.x, s.y, s.pattern)
                store.manifest.put(f"inputs-{which}", {"fingerprints": s.fingerprints(), "finished": now()})
        return store

    def run(self, client: Any = None) -> RunReport:
        """Compute every block the store is missing; returns a :class:`RunReport`.

        The store is opened once and checked once, before the lock, so an
        incompatible store is refused untouched; under the lock it is only
        reopened and rechecked if another run changed it in between.
        """
        t0 = time.perf_counter()
        want = self.wanted()  # every input is checked before any work starts
        c = self.config.cluster
        if isinstance(c, LocalClusterConfig) and c.gpus:
            check_gpus(c.gpus)   # no CuPy, no device, absent ids: refused before the store exists
        store = self._existing_store("r")
        diff = self._check(store, want) if store is not None else None
        for finding in self.check(store, self._plan(store, want)):   # hopeless configs: refused here
            self._say(f"warning: {finding.message}")
        run_id = uuid.uuid4().hex[:12]
        with contextlib.ExitStack() as stack:
            if client is None and self.config.cluster.kind != "local":   # a cluster that does not
                client = stack.enter_context(                           # answer fails before the store
                    open_client(self.config.cluster, security(self.config)))
            return self._run_locked(store, diff, want, run_id, client, t0)

    def _run_locked(self, store: Optional[GramStore], diff: Optional[StoreDiff], want: Dict[str, Any],
                    run_id: str, client: Any, t0: float) -> RunReport:
        with StoreLock(self.location, extra={"run_id": run_id}):
            if GramStore.read_attributes(self.location) != (store.meta if store is not None else None):
                store = self._existing_store("r+")   # another run changed it while this one waited
                diff = self._check(store, want) if store is not None else None
            elif store is not None:
                store = GramStore.open(store.location, "r+")   # checked read-only; written under the lock
            store = self._prepare(store, diff, want)
            job = Job(store=store.location.task_root(), spec_json=store.spec_json, get=store.kinds,
                      dtype=store.dtype, backend=self.config.backend, checksum=store.checksum,
                      memory_budget=task_memory(self.config) // 2, run_id=run_id,
                      io_threads=io_threads(self.config), patterns=store.has_patterns)
            report = compute_missing(store, job, self.config.cluster, client=client,
                                     progress=self.progress, stream=self.stream,
                                     security=security(self.config))
        report.seconds = time.perf_counter() - t0
        return report

    def _say(self, message: str) -> None:
        if self.progress:
            say(message, self.stream)


def security(config: RunConfig) -> Any:
    """``tls:`` -> ``distributed.security.Security`` (None without a tls section)."""
    if config.tls is None:
        return None
    return security_from_tls(config.tls)


def wait_until_ready(client: Any, store_path: Any) -> None:
    """A remote cluster is usable: a worker has joined (within ``WAIT_FOR_WORKERS_S``)
    and every worker sees the store at ``store_path`` (fail fast, naming them)."""
    try:
        client.wait_for_workers(1, timeout=WAIT_FOR_WORKERS_S)
    except (TimeoutError, OSError) as exc:
        raise NtkscaleError(f"no Dask worker joined the scheduler within {WAIT_FOR_WORKERS_S} s "
                            f"({type(exc).__name__}); start workers with `dask worker ADDRESS`") from None
    if isinstance(store_path, StoreLocation) or is_url(str(store_path)):   # object storage: each worker
        check_remote_visible(client, StoreLocation.parse(store_path))      # reads it with its credentials
    else:
        check_store_visible(client, store_path)


def compute_missing(store: GramStore, job: Job, cluster: Any, *, client: Any = None,
                    progress: bool = True, stream: Optional[TextIO] = None,
                    security: Any = None) -> RunReport:
    """Submit every block without a valid manifest entry (the caller holds the lock)."""
    t0 = time.perf_counter()
    plan = store.plan()
    records = store.manifest.records()
    tokens = {b.key: block_token(store.meta, b) for b in plan.blocks}
    pending = [b for b in plan.blocks if (records.get(b.key) or {}).get("token") != tokens[b.key]]
    report = RunReport(str(store.path), plan.n_blocks, plan.n_blocks - len(pending), 0, 0.0,
                       run_id=job.run_id)
    stream = stream or sys.stderr

    def tell(message: str) -> None:
        if progress:
            say(message, stream)

    if not pending:
        tell(f"{store.path}: all {plan.n_blocks} blocks are already finished")
        report.seconds = time.perf_counter() - t0
        return report
    given = client is not None
    with (contextlib.nullcontext(client) if given else open_client(cluster, security)) as dask_client:
        client = dask_client
        remote = given or getattr(cluster, "kind", "local") != "local"
        if remote:
            wait_until_ready(client, store.location if store.location.remote else store.path)
        report.dashboard = dashboard_link(client)
        report.slots = total_threads(client)
        if job.io_threads:   # the io threads write, they do not compute
            report.slots = sum(max(1, t - job.io_threads) for t in client.nthreads().values())
        tell(f"Dask dashboard: {report.dashboard or 'not served'}"
            + ("" if _has_bokeh() else " (install bokeh to see it)"))
        tell(f"computing {len(pending)} of {plan.n_blocks} blocks ({report.blocks_done_before} already "
            f"finished) on {report.slots} task slots, block size {store.block_size}")
        bar = Progress(plan.n_blocks, report.blocks_done_before, plan.computed_entries(pending),
                       stream=stream, enabled=progress)
        t_blocks = time.perf_counter()
        results = run_blocks(client, job, pending, tokens, progress=bar)
        report.blocks_seconds = time.perf_counter() - t_blocks
    report.records = results.records
    report.blocks_computed = len(results.records)
    report.entries_computed = sum(r["entries"] for r in results.records)
    report.stored_bytes = sum(r["stored_bytes"] for r in results.records)
    report.task_seconds = sum(r["read_s"] + r["compute_s"] + r["write_s"] for r in results.records)
    report.compute_seconds = sum(r["compute_s"] for r in results.records)
    report.seconds = time.perf_counter() - t0
    kept = report.blocks_done_before + report.blocks_computed
    if results.fault is not None:
        key, fault = results.fault
        raise PersistentBlockError(
            f"block {key} failed: {fault.message} [{fault.detail}]; stopped at once without retrying "
            f"({results.cancelled} blocks cancelled, {kept} of {plan.n_blocks} finished blocks kept): "
            f"{fault.fix}")
    if results.failed:
        shown = "; ".join(f"{k}: {v}" for k, v in list(results.failed.items())[:5])
        raise BlockFailedError(f"{len(results.failed)} blocks failed ({shown}); the "
                               f"{kept} finished blocks are "
                               "kept: rerun the same command to retry only the failed ones")
    return report


def _has_bokeh() -> bool:
    return importlib.util.find_spec("bokeh") is not None


def repair(path: os.PathLike | str | StoreLocation, cluster: Any = None, *, client: Any = None, backend: str = "auto",
           progress: bool = True, stream: Optional[TextIO] = None) -> Dict[str, Any]:
    """``verify --repair``: recompute bad and missing blocks from the store alone.

    Bad blocks lose their manifest entry first, so an interrupted repair leaves
    them missing (never passing as finished). Inputs that fail their
    fingerprint cannot be repaired from the store and are an error.
    """
    cluster = cluster or LocalClusterConfig()
    run_id = uuid.uuid4().hex[:12]
    with StoreLock(path, extra={"run_id": run_id}):
        store = GramStore.open(path, "r+")
        before = verify(store)
        broken = {w: v for w, v in before["inputs"].items() if v != "ok"}
        if broken:
            raise StoreError(f"{path}: the stored inputs are damaged or incomplete "
                             f"({'; '.join(f'{w}: {v}' for w, v in broken.items())}); they cannot be "
                             "recomputed from the store: rerun `ntkscale gram CONFIG` with the original data")
        store.manifest.delete(before["bad"])
        job = Job(store=store.location.task_root(), spec_json=store.spec_json, get=store.kinds, dtype=store.dtype,
                  backend=backend, checksum=store.checksum, run_id=run_id, patterns=store.has_patterns)
        report = compute_missing(store, job, cluster, client=client, progress=progress, stream=stream)
        after = verify(store, check_inputs=False)
    after["inputs"] = before["inputs"]
    after["clean"] = not after["missing"] and not after["bad"]
    return {"before": before, "after": after, "repaired": sorted(before["bad"]) + before["missing"],
            "blocks_computed": report.blocks_computed}
