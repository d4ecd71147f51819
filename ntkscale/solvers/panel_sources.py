"""Where a :class:`~ntkscale.solvers.operator.GramOperator` gets its entries: row panels
of an in-memory array, of a stored Zarr Gram, or recomputed from ``kernel_fn``; and the
per-panel product tasks that run in the driver or on a worker."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ..errors import InputError


# --------------------------------------------------------------------------- sources
class ArraySource:
    """Panels of an in-memory (or memory-mapped) array."""

    def __init__(self, array: Any):
        self.array = array
        self.shape = tuple(array.shape)
        self.dtype = np.dtype(array.dtype)
        self.chunk_rows = None

    def read(self, i0: int, i1: int) -> np.ndarray:
        return np.asarray(self.array[i0:i1])

    def rows(self, idx: np.ndarray) -> np.ndarray:
        return np.asarray(self.array[np.asarray(idx)])

    def diagonal(self) -> np.ndarray:
        return np.array(np.diagonal(self.array))


class ZarrSource:
    """Panels of a 2-D Zarr array (e.g. the store's ``gram/train``).

    Pickles as the array (store URL + path), so a worker opens it itself.
    ``diagonal`` may be given (the store keeps ``k(x, x)``); otherwise it is
    read from the diagonal chunks only.
    """

    def __init__(self, array: Any, diagonal: Optional[np.ndarray] = None, mirrored: bool = False):
        if getattr(array, "ndim", None) != 2:
            raise InputError(f"the Gram array must be 2-D; got shape {getattr(array, 'shape', None)}")
        if mirrored and array.shape[0] != array.shape[1]:
            raise InputError(f"a mirrored Gram is square; got shape {tuple(array.shape)}")
        self.array = array
        #: the lower triangle holds exact transposes of the upper blocks: read only the upper
        self.mirrored = bool(mirrored)
        self.shape = tuple(int(s) for s in array.shape)
        self.dtype = np.dtype(array.dtype)
        self.chunk_rows = int(array.chunks[0])
        self._diagonal = None if diagonal is None else np.asarray(diagonal)

    def read(self, i0: int, i1: int) -> np.ndarray:
        return np.asarray(self.array[i0:i1, :])

    def read_right(self, i0: int, i1: int) -> np.ndarray:
        """Rows ``i0:i1`` from column ``i0`` on: the diagonal block and the blocks right of it."""
        return np.asarray(self.array[i0:i1, i0:])

    def rows(self, idx: np.ndarray) -> np.ndarray:
        # Zarr decodes whole chunks: one row costs a chunk-row of I/O. Pivoted
        # Cholesky (few rows) is therefore better fed by KernelSource.
        return np.asarray(self.array.get_orthogonal_selection((np.asarray(idx), slice(None))))

    def diagonal(self) -> np.ndarray:
        if self._diagonal is not None:
            return self._diagonal.copy()
        n = min(self.shape)
        c = int(self.array.chunks[0])
        return np.concatenate([np.diagonal(np.asarray(self.array[i:min(i + c, n), i:min(i + c, n)]))
                               for i in range(0, n, c)])


class KernelSource:
    """Panels recomputed on the fly: ``kernel_fn(x1[i0:i1], x2, get=get)``.

    ``x2=None`` means the symmetric train Gram ``K(x1, x1)``. Nothing is read
    from disk; every product recomputes the blocks ("streamed" mode).
    """

    def __init__(self, kernel_fn: Any, x1: Any, x2: Any = None, get: str = "ntk",
                 dtype: Any = None, memory_budget: Optional[int] = None):
        self.kernel_fn = kernel_fn
        self.x1 = np.asarray(x1)
        self.x2 = None if x2 is None else np.asarray(x2)
        self.get = get
        self.dtype = np.dtype(dtype or self.x1.dtype)
        self.shape = (len(self.x1), len(self.x1 if self.x2 is None else self.x2))
        self.chunk_rows = None
        self.memory_budget = memory_budget

    def _cols(self) -> np.ndarray:
        return self.x1 if self.x2 is None else self.x2

    def read(self, i0: int, i1: int) -> np.ndarray:
        k = self.kernel_fn(self.x1[i0:i1], self._cols(), get=self.get, memory_budget=self.memory_budget)
        return np.asarray(k, dtype=self.dtype)

    def rows(self, idx: np.ndarray) -> np.ndarray:
        k = self.kernel_fn(self.x1[np.asarray(idx)], self._cols(), get=self.get, memory_budget=self.memory_budget)
        return np.asarray(k, dtype=self.dtype)

    def diagonal(self) -> np.ndarray:
        return np.asarray(self.kernel_fn.diag(self.x1, get=self.get), dtype=self.dtype)


def _panel_matmat(source: Any, i0: int, i1: int, x: np.ndarray) -> np.ndarray:
    """Worker task: read (or compute) one row panel and return ``panel @ x``."""
    panel = source.read(i0, i1)
    return panel @ x if panel.dtype == x.dtype else panel.astype(x.dtype, copy=False) @ x


def _half_panel_matmat(source: Any, i0: int, i1: int, x: np.ndarray) -> np.ndarray:
    """Worker task for a mirrored symmetric Gram: read ``P = K[i0:i1, i0:]`` only and
    return rows ``i0:`` of its share of ``K @ x``: ``P @ x[i0:]`` in the first
    ``i1 - i0`` rows, ``P[:, i1 - i0:]^T @ x[i0:i1]`` (the mirrored blocks) below."""
    panel = source.read_right(i0, i1)
    if panel.dtype != x.dtype:
        panel = panel.astype(x.dtype, copy=False)
    w = i1 - i0
    out = np.empty((panel.shape[1], x.shape[1]), dtype=x.dtype)
    out[:w] = panel @ x[i0:]
    out[w:] = panel[:, w:].T @ x[i0:i1]
    return out
