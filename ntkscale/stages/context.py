"""One run's shared state: the config, the store (opened once), the Dask client, progress output.

The solve and predict stages (:mod:`ntkscale.stages.solve`, :mod:`ntkscale.stages.predict`)
are functions over a :class:`RunContext`; :class:`~ntkscale.stages.run.RunPipeline` holds one.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Optional, TextIO

import numpy as np

from ..cluster.client import open_client
from ..config.run import RunConfig
from ..config.solver import SolverConfig
from ..costs.measure import measure_flop_rate, measure_read_bandwidth
from ..errors import InputError, StoreDamagedError
from ..gram.progress import say
from ..solvers.operator import GramOperator, choose_mode, make_operator
from ..store.gram_store import GramStore, StoreError
from ..store.location import StoreLocation, register_options
from ..targets import TargetEncoder, encode_targets
from .gram import security, wait_until_ready


def kernel_kind(store: GramStore) -> str:
    """The kernel the solver uses: the NTK when the store holds it, else its only kernel."""
    return "ntk" if "ntk" in store.kinds else store.kinds[0]


def check_complete(store: GramStore, part: str) -> None:
    """Every block (and diagonal) of ``part`` in the manifest, its chunk files on disk
    with their full size, and the diagonal blocks matching their checksums; or a
    clear error naming the blocks and the repair (never NaNs deep inside a solve).
    Gram blocks are checked by presence and size only (one ``stat`` a chunk); their
    checksums take a full read, which ``ntkscale verify`` does."""
    keys = store.manifest.keys()
    blocks = [b for b in store.plan().blocks if b.part in (part, f"diag-{part}")]
    missing = [b.key for b in blocks if b.key not in keys]
    if not blocks and part == "test":
        raise InputError(f"{store.path} has no test part; add data.test to the config and run "
                         "`ntkscale gram CONFIG`")
    if missing:
        raise InputError(
            f"{store.path} lacks {len(missing)} of the {len(blocks)} {part} Gram blocks the solver needs "
            f"({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}); compute them with "
            "`ntkscale gram CONFIG` (or `ntkscale run CONFIG`), or check them with `ntkscale verify`")
    bad = store.damaged_chunks(blocks)
    records = store.manifest.records([b.key for b in blocks if b.is_diag and b.key not in bad])
    for b in blocks:
        if b.is_diag and b.key not in bad:
            problem = store.check_block(b, records.get(b.key))
            if problem is not None:
                bad[b.key] = problem
    if bad:
        shown = "; ".join(f"{k}: {v}" for k, v in sorted(bad.items())[:4]) + ("; ..." if len(bad) > 4 else "")
        raise StoreDamagedError(
            f"{len(bad)} {part} blocks of {store.path} are damaged ({shown}); recompute them with "
            f"`ntkscale verify --repair {store.path}`")


def labels(store: GramStore, which: str) -> Optional[np.ndarray]:
    """The stored targets of ``which`` (train or test), or None."""
    y = store.y(which)
    return None if y is None else np.asarray(y[...])


def encoder(store: GramStore, task: str) -> TargetEncoder:
    """The target encoder fitted on the stored training targets."""
    y = labels(store, "train")
    if y is None:
        raise InputError("the solver needs training targets: set data.train.y in the config "
                         "(and rerun `ntkscale gram CONFIG --replace-y`)")
    return encode_targets(y, task)


class RunContext:
    """What the stages of one run share: ``config``, its ``solver`` settings and ``task``,
    the store (opened on first use, once), and the Dask ``client`` when one is open."""

    def __init__(self, config: RunConfig, *, progress: bool = True, stream: Optional[TextIO] = None,
                 client: Any = None):
        self.config = config
        self.solver: SolverConfig = config.solver or SolverConfig()
        self.task: str = config.task or "auto"
        self.progress, self.stream, self.client = progress, stream, client
        self._store: Optional[GramStore] = None
        register_options(config.store, config.store_options)   # `StoreLock(config.store)` finds them
        self.location = StoreLocation.parse(config.store, config.store_options or None)  # a bad URL: here

    def say(self, message: str) -> None:
        if self.progress:
            say(message, self.stream)

    @property
    def store(self) -> GramStore:
        """The run's store, opened once: read-only until a stage needs to write
        (:meth:`writable_store`), then that handle."""
        if self._store is None:
            self._store = GramStore.open(self._store_path(), "r")
        return self._store

    def writable_store(self) -> GramStore:
        """The store opened for writing the ``solver``/``predict`` records (the caller
        holds the store's lock); later reads use this handle too."""
        if self._store is None or self._store.read_only:
            self._store = GramStore.open(self._store_path(), "r+")
        return self._store

    def _store_path(self) -> StoreLocation:
        if not GramStore.is_store(self.location):
            raise StoreError(f"no Gram store at {self.location.path}: compute it first with `ntkscale gram "
                             "CONFIG` (or `ntkscale run CONFIG`, which does every stage)")
        return self.location

    def forget_store(self) -> None:
        """The Gram stage changed the store: open it afresh on next use."""
        self._store = None

    @property
    def products_on_cluster(self) -> bool:
        """Gram products and Cholesky tiles run as tasks on the run's cluster (``solver.products``)."""
        return self.solver.on_cluster(self.config.cluster.kind)

    @contextlib.contextmanager
    def cluster(self) -> Iterator[Any]:
        """The run's Dask client for the solver stage: the one given, else one opened
        from ``cluster:`` (and closed again) when the products run on the cluster,
        else None (the driver does them)."""
        if self.client is not None or not self.products_on_cluster:
            yield self.client
            return
        with open_client(self.config.cluster, security=security(self.config)) as client:
            if self.config.cluster.kind != "local" and self.location.exists():
                where = self.location if self.location.remote else Path(self.location.url).resolve()
                wait_until_ready(client, where)
            self.client = client
            try:
                yield client
            finally:
                self.client = None

    def operator(self, store: Optional[GramStore] = None) -> GramOperator:
        """The train Gram as an operator: Zarr panels (``mode: stored``) or recomputed
        from the kernel (``streamed``), its products on the cluster when configured."""
        store = store or self.store
        kind = kernel_kind(store)
        recompute = self.solver.mode == "streamed" or (self.solver.mode != "stored" and not store.has_patterns)
        x = np.asarray(store.inputs("train")[...]) if recompute else None
        kfn = recompute_kernel_fn(store, "solver.mode: streamed") if recompute else None
        array = store.train_array(kind)
        mode = self.solver.mode
        if mode == "auto" and kfn is not None:
            mode = self._measured_mode(array, kfn, x, store.path)
        return make_operator(mode=mode, array=array, diagonal=store.diag("train", kind),
                             kernel_fn=kfn, x=x, get=kind, mirrored=True,
                             client=self.client if self.products_on_cluster else None)

    def _measured_mode(self, array: Any, kernel_fn: Any, x: np.ndarray, where: str) -> str:
        """``solver.mode: auto``: read the stored Gram or recompute it, from this store's
        read bandwidth (a few chunks read now: local disk and object storage differ by
        orders of magnitude) and this machine's kernel flop rate, both measured here."""
        bandwidth = measure_read_bandwidth(array)
        flops = measure_flop_rate(kernel_fn, x)
        choice = choose_mode(kernel_fn, x.shape[1:], len(x), itemsize=np.dtype(array.dtype).itemsize,
                             read_bandwidth=bandwidth, flop_rate=flops, read_fraction=0.5)
        self.say(f"solve: Gram products {choice.mode}: {choice.reason} (read {bandwidth / 1e6:.0f} MB/s "
                 f"measured on {where}, kernel {flops / 1e9:.2f} GFLOP/s measured here)")
        return choice.mode


def recompute_kernel_fn(store: GramStore, what: str) -> Any:
    """The kernel for a path that recomputes entries from bare inputs (``what``);
    refused for graph networks, whose entries also need the rows' patterns."""
    if store.has_patterns:
        raise InputError(f"{what} recomputes kernel entries from the inputs alone, but {store.location} holds a "
                         "graph network's Gram (its inputs carry patterns, data.train.pattern) and that path "
                         "does not pass them: use solver.mode: stored and predict the configured test set")
    return store.kernel_fn()
