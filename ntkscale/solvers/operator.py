"""Blocked Gram operators: ``(K + ridge I) @ X`` by row panels.

A :class:`GramOperator` is a :class:`scipy.sparse.linalg.LinearOperator`
(``scipy.sparse.linalg.cg(op, b)`` works) that never needs the whole matrix
in one process. Its entries come from a *panel source*:

* :class:`ArraySource`  - an in-memory array (one BLAS call per product);
* :class:`ZarrSource`   - a Zarr array read by row panels (the stored Gram); a
  ``mirrored`` one (the store's train Gram, whose lower blocks are exact transposes
  of its upper ones) is read only from the diagonal rightwards: each product reads
  about half the bytes and uses every block twice (``K[a, b] x_b`` and
  ``K[a, b]^T x_a``);
* :class:`KernelSource` - blocks recomputed on the fly from ``kernel_fn`` and
  the inputs ("streamed" mode, for Grams larger than the disk).

With a ``distributed.Client`` each product is one task per row panel: the
source is scattered once, the worker reads (or computes) its panel and
returns only ``panel @ X``. Panel ``p`` is pinned to worker ``p mod W`` (soft
restriction) so that a worker keeps re-reading the same rows, which its page
cache (or a node-local disk) already holds.

The operator is rectangular (``m x n``, e.g. ``K(test, train)``) or square
and symmetric, in which case it carries a ``ridge`` (shift) and a diagonal.
:func:`choose_mode` decides between reading and recomputing from the kernel's
cost model (``kernel_fn.cost(input_shape)["flops"]`` per entry) and the
store's read bandwidth.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import scipy.sparse.linalg

from ..errors import InputError
from .panel_sources import ArraySource, KernelSource, ZarrSource, _half_panel_matmat, _panel_matmat

#: Default bytes of one row panel held in memory by a product.
DEFAULT_PANEL_BYTES = 256 * 2**20


# --------------------------------------------------------------------------- operator
class GramOperator(scipy.sparse.linalg.LinearOperator):
    """``K + ridge I`` (square, symmetric) or ``K`` (rectangular), by row panels.

    Parameters
    ----------
    source : ArraySource | ZarrSource | KernelSource
    ridge : diagonal shift (square operators only), absolute units.
    block_rows : rows per panel; default: the source's chunk rows, grown to
        about ``panel_bytes``.
    client : a ``distributed.Client``; products then run as one task per panel.
    symmetric : whether the matrix is the symmetric train Gram (default: square).
    """

    def __init__(self, source: Any, *, ridge: float = 0.0, block_rows: Optional[int] = None,
                 client: Any = None, symmetric: Optional[bool] = None,
                 panel_bytes: int = DEFAULT_PANEL_BYTES):
        m, n = source.shape
        super().__init__(source.dtype, (m, n))
        self.source = source
        self.symmetric = (m == n) if symmetric is None else bool(symmetric)
        if ridge and not self.symmetric:
            raise InputError(f"a ridge only applies to a square symmetric Gram; this one is {m}x{n}")
        self.ridge = float(ridge)
        self.client = client
        self.block_rows = int(block_rows) if block_rows else _default_block_rows(source, panel_bytes)
        # shared by with_ridge() copies: sweeps over the matrix, columns multiplied
        self._stats = {"passes": 0, "columns": 0}
        self._diag_cache: Optional[np.ndarray] = None
        self._scattered = None

    # -- constructors -----------------------------------------------------------
    @classmethod
    def from_array(cls, k: Any, **kw: Any) -> "GramOperator":
        k = np.asarray(k) if not hasattr(k, "shape") else k
        if getattr(k, "ndim", 2) != 2:
            raise InputError(f"the Gram must be a 2-D array; got shape {k.shape}")
        return cls(ArraySource(k), **kw)

    @classmethod
    def from_zarr(cls, array: Any, *, diagonal: Optional[np.ndarray] = None, mirrored: bool = False,
                  **kw: Any) -> "GramOperator":
        """A stored Gram; ``mirrored``: square, its lower blocks exact transposes of the
        upper ones (the store's train Gram), so products read only the upper half."""
        return cls(ZarrSource(array, diagonal=diagonal, mirrored=mirrored), **kw)

    @classmethod
    def from_kernel(cls, kernel_fn: Any, x1: Any, x2: Any = None, *, get: str = "ntk",
                    dtype: Any = None, **kw: Any) -> "GramOperator":
        return cls(KernelSource(kernel_fn, x1, x2, get=get, dtype=dtype), **kw)

    @property
    def n_passes(self) -> int:
        """Products done so far (each one sweeps the whole matrix once)."""
        return self._stats["passes"]

    @property
    def n_columns(self) -> int:
        """Right-hand-side columns multiplied so far."""
        return self._stats["columns"]

    # -- views ------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return {ArraySource: "memory", ZarrSource: "stored", KernelSource: "streamed"}.get(
            type(self.source), type(self.source).__name__)

    def with_ridge(self, ridge: float) -> "GramOperator":
        """The same matrix with another shift (shares the source and caches)."""
        if ridge and not self.symmetric:
            raise InputError("a ridge only applies to a square symmetric Gram")
        other = copy.copy(self)
        other.ridge = float(ridge)
        return other

    def panels(self) -> Iterator[Tuple[int, int]]:
        m = self.shape[0]
        for i0 in range(0, m, self.block_rows):
            yield i0, min(i0 + self.block_rows, m)

    # -- entries ----------------------------------------------------------------
    def diagonal(self) -> np.ndarray:
        """``diag(K) + ridge`` (square operators)."""
        if not self.symmetric:
            raise InputError("diagonal() needs a square symmetric Gram")
        if self._diag_cache is None:
            self._diag_cache = np.asarray(self.source.diagonal())
        return self._diag_cache + self.ridge

    def mean_diagonal(self) -> float:
        """Mean of ``diag(K)`` without the ridge: the unit of relative ridges."""
        return float(np.mean(self.with_ridge(0.0).diagonal()))

    def row_panel(self, i0: int, i1: int) -> np.ndarray:
        """Rows ``i0:i1`` of ``K + ridge I`` as a dense ``(i1-i0, n)`` array."""
        panel = np.array(self.source.read(i0, i1), copy=True)
        if self.ridge:
            idx = np.arange(i0, min(i1, self.shape[1]))
            panel[idx - i0, idx] += self.ridge
        return panel

    def rows(self, idx: Sequence[int]) -> np.ndarray:
        """Selected rows of ``K + ridge I`` (pivoted Cholesky)."""
        idx = np.asarray(idx, dtype=np.int64)
        out = np.array(self.source.rows(idx), copy=True)
        if self.ridge:
            out[np.arange(len(idx)), idx] += self.ridge
        return out

    # -- products ---------------------------------------------------------------
    def _matvec(self, x: np.ndarray) -> np.ndarray:
        return self._matmat(np.asarray(x).reshape(-1, 1)).reshape(-1)

    def _matmat(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        dtype = np.result_type(self.dtype, x.dtype)
        x = np.ascontiguousarray(x, dtype=dtype)
        self._stats["passes"] += 1
        self._stats["columns"] += x.shape[1]
        if isinstance(self.source, ArraySource) and self.client is None and self.source.dtype == dtype:
            y = np.asarray(self.source.array @ x)  # one BLAS call
        elif self.client is None and self._half:
            y = np.zeros((self.shape[0], x.shape[1]), dtype=dtype)
            for i0, i1 in self.panels():
                y[i0:] += _half_panel_matmat(self.source, i0, i1, x)
        elif self.client is None:  # by panels (also bounds the upcast copy of a float32 Gram)
            y = np.empty((self.shape[0], x.shape[1]), dtype=dtype)
            for i0, i1 in self.panels():
                y[i0:i1] = _panel_matmat(self.source, i0, i1, x)
        else:
            y = self._distributed_matmat(x)
        if self.ridge:
            y += self.ridge * x
        if not np.all(np.isfinite(y)) and np.all(np.isfinite(x)):
            # NaN fill marks Gram blocks not computed yet; O(m k) to check, not O(m n)
            bad = np.nonzero(~np.all(np.isfinite(y), axis=1))[0]
            raise InputError(
                f"the Gram ({self.mode}) has NaN/inf entries in {len(bad)} row(s) (first rows {bad[:5].tolist()}); "
                "its blocks are not all computed: finish the Gram (ntkscale gram) or check the kernel inputs")
        return y

    def _distributed_matmat(self, x: np.ndarray) -> np.ndarray:
        client = self.client
        if self._scattered is None:
            # One copy of the (small) source description per worker, reused
            # by every product; Zarr sources carry only the store URL.
            self._scattered = client.scatter(self.source, broadcast=True, hash=False)
        xf = client.scatter(x, broadcast=True, hash=False)
        workers = sorted(client.scheduler_info(n_workers=-1)["workers"]) if _n_workers(client) else []
        task = _half_panel_matmat if self._half else _panel_matmat
        futures = []
        for p, (i0, i1) in enumerate(self.panels()):
            kw = {"workers": [workers[p % len(workers)]], "allow_other_workers": True} if workers else {}
            futures.append(client.submit(task, self._scattered, i0, i1, xf, pure=False, **kw))
        if not self._half:
            return np.concatenate(client.gather(futures), axis=0)
        # a half panel's share spans rows i0: (up to n x k): add each as it arrives, so the
        # driver holds y and a result or two, never all of them (n^2 k / 2 values at once)
        from distributed import as_completed

        y = np.zeros((self.shape[0], x.shape[1]), dtype=x.dtype)
        start = {f.key: i0 for f, (i0, _) in zip(futures, self.panels())}
        for fut in as_completed(futures):
            y[start[fut.key]:] += fut.result()
            fut.release()
        return y

    @property
    def _half(self) -> bool:
        """Products read only the upper half (a mirrored symmetric stored Gram)."""
        return self.symmetric and bool(getattr(self.source, "mirrored", False))

    def _adjoint(self) -> "GramOperator":
        if not self.symmetric:
            return super()._adjoint()
        return self

    def __copy__(self) -> "GramOperator":
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        return other

    def __reduce__(self):
        # Never ship a client with the operator (e.g. into a task).
        return (_rebuild, (self.source, self.ridge, self.block_rows, self.symmetric))

    def __repr__(self) -> str:
        return (f"GramOperator({self.shape[0]}x{self.shape[1]}, {self.dtype}, mode={self.mode}, "
                f"ridge={self.ridge:g}, block_rows={self.block_rows}"
                f"{', distributed' if self.client is not None else ''})")


def _rebuild(source: Any, ridge: float, block_rows: int, symmetric: bool) -> GramOperator:
    return GramOperator(source, ridge=ridge, block_rows=block_rows, symmetric=symmetric)


def _n_workers(client: Any) -> int:
    try:
        return len(client.scheduler_info(n_workers=-1)["workers"])
    except TypeError:  # older distributed without n_workers=
        return len(client.scheduler_info()["workers"])


def _default_block_rows(source: Any, panel_bytes: int) -> int:
    m, n = source.shape
    row_bytes = max(1, n * np.dtype(source.dtype).itemsize)
    rows = max(1, panel_bytes // row_bytes)
    chunk = getattr(source, "chunk_rows", None)
    if chunk:  # whole chunks only: a panel never decodes a chunk twice
        rows = max(chunk, (rows // chunk) * chunk)
    return int(min(m, rows)) or 1


def as_operator(a: Any, **kw: Any) -> Any:
    """``GramOperator`` for arrays (NumPy or Zarr); operators pass through."""
    if isinstance(a, GramOperator) or isinstance(a, scipy.sparse.linalg.LinearOperator):
        return a
    if hasattr(a, "matmat") and hasattr(a, "shape"):
        return a
    if type(a).__module__.startswith("zarr"):
        return GramOperator.from_zarr(a, **kw)
    if hasattr(a, "shape"):
        return GramOperator.from_array(a, **kw)
    return GramOperator.from_array(np.asarray(a), **kw)


# --------------------------------------------------------------------------- cost model
@dataclass(frozen=True)
class ModeChoice:
    """The operator mode the cost model picked, with the numbers behind it."""

    mode: str                     # "stored" or "streamed"
    read_seconds_per_pass: float  # n^2 * itemsize / read bandwidth
    compute_seconds_per_pass: float  # n^2 * flops per entry / flop rate
    reason: str


def choose_mode(kernel_fn: Any, input_shape: Sequence[int], n: int, *, itemsize: int = 8,
                read_bandwidth: float = 500e6, flop_rate: float = 2e9,
                gram_stored: bool = True, free_disk: Optional[float] = None,
                passes: int = 100, m: Optional[int] = None, read_fraction: float = 1.0) -> ModeChoice:
    """Pick "stored" (read the Gram) or "streamed" (recompute its blocks).

    Per pass over an ``m x n`` Gram (``m = n`` by default) reading costs
    ``m n itemsize / read_bandwidth`` seconds and recomputing costs
    ``m n flops / flop_rate`` with ``flops = kernel_fn.cost(input_shape)["flops"]``.
    A Gram not yet stored is worth storing when computing it once plus
    ``passes`` reads is cheaper than ``passes`` recomputations, and it fits on
    the disk (``free_disk`` bytes). ``read_fraction``: the share of the Gram one pass
    reads (0.5 for a mirrored train Gram, read from the diagonal rightwards). Bandwidth
    and flop rate are per cluster;
    ``ntkscale.costs.measure.measure_read_bandwidth`` and ``measure_flop_rate`` calibrate them.
    """
    m = n if m is None else m
    entries = float(m) * float(n)
    flops = float(kernel_fn.cost(tuple(input_shape))["flops"])
    read_s = entries * itemsize * read_fraction / read_bandwidth
    compute_s = entries * flops / flop_rate
    nbytes = entries * itemsize
    if not gram_stored and free_disk is not None and nbytes > free_disk:
        return ModeChoice("streamed", read_s, compute_s,
                          f"the Gram needs {nbytes / 2**30:.1f} GiB but only {free_disk / 2**30:.1f} GiB are free")
    stored_cost = passes * read_s + (0.0 if gram_stored else compute_s)
    streamed_cost = passes * compute_s
    if stored_cost <= streamed_cost:
        return ModeChoice("stored", read_s, compute_s,
                          f"reading a pass ({read_s:.3g} s) beats recomputing it ({compute_s:.3g} s)")
    return ModeChoice("streamed", read_s, compute_s,
                      f"recomputing a pass ({compute_s:.3g} s) beats reading it ({read_s:.3g} s)")


def make_operator(*, mode: str = "auto", array: Any = None, kernel_fn: Any = None, x: Any = None,
                  get: str = "ntk", client: Any = None, diagonal: Optional[np.ndarray] = None,
                  choice_kw: Optional[dict] = None, mirrored: bool = False, **kw: Any) -> GramOperator:
    """Build the train-Gram operator in ``mode`` memory|stored|streamed|auto.

    ``mirrored``: a stored ``array`` is the store's train Gram, whose lower blocks are
    exact transposes of its upper ones (products then read half of it).

    ``auto`` uses :func:`choose_mode` when both a stored array and
    ``kernel_fn``/``x`` are available; otherwise whichever exists.
    """
    if mode == "auto":
        if array is not None and kernel_fn is not None and x is not None:
            choice = choose_mode(kernel_fn, np.shape(x)[1:], np.shape(x)[0],
                                 itemsize=np.dtype(array.dtype).itemsize, **(choice_kw or {}))
            mode = choice.mode
        elif array is not None:
            mode = "memory" if isinstance(array, np.ndarray) else "stored"
        elif kernel_fn is not None and x is not None:
            mode = "streamed"
        else:
            raise InputError("make_operator needs a Gram array or kernel_fn and x")
    if mode == "memory":
        return GramOperator.from_array(np.asarray(array), client=client, **kw)
    if mode == "stored":
        if array is None:
            raise InputError("mode 'stored' needs the Gram array (the store has no train Gram yet?)")
        if isinstance(array, np.ndarray):
            return GramOperator.from_array(array, client=client, **kw)
        return GramOperator.from_zarr(array, diagonal=diagonal, mirrored=mirrored, client=client, **kw)
    if mode == "streamed":
        if kernel_fn is None or x is None:
            raise InputError("mode 'streamed' needs kernel_fn and the inputs x")
        return GramOperator.from_kernel(kernel_fn, x, get=get, client=client, **kw)
    raise InputError(f"unknown operator mode {mode!r}; choose auto, memory, stored or streamed")


__all__: List[str] = [
    "ArraySource", "GramOperator", "KernelSource", "ModeChoice", "ZarrSource", "as_operator",
    "choose_mode", "make_operator",
]
