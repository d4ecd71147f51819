"""Compute one Gram tile or one diagonal segment (pure: no Dask, no I/O).

The kernel engine runs on the array namespace it is given (NumPy, or CuPy on
a GPU worker); results always come back as C-contiguous NumPy arrays in the
run's dtype, keyed by kernel name (``"nngp"``, ``"ntk"``).

A block task receives the network in one form, the canonical spec JSON
(``GramStore.spec_json``); :func:`kernel_fn_for` builds the ``kernel_fn`` from
it once per process (so once per worker) and reuses it for every block.
"""

from __future__ import annotations

import functools
from typing import Any, Dict, Optional, Sequence, Tuple

import numba
import numpy as np

from .. import stax
from ..backend import default_backend_name, is_numpy_namespace, namespace_by_name, to_numpy
from ..errors import BackendUnavailableError


@functools.lru_cache(maxsize=8)
def kernel_fn_for(spec_json: str) -> Any:
    """The ``kernel_fn`` of a canonical spec JSON text, built once per process.

    A Dask worker imports numba before Dask applies the worker's environment
    (``NUMBA_NUM_THREADS=1``); numba's config is re-read here, once per worker
    process and before any kernel runs, so that loading some kernels from the
    cache and compiling others sees one consistent thread count (numba refuses
    a changed ``NUMBA_NUM_THREADS`` once its threads are running)."""
    numba.core.config.reload_config()
    return stax.from_spec(spec_json)[2]


def backend_for(name: str) -> Tuple[str, Any]:
    """``(name, namespace)`` of a backend name (``auto``: this process's default);
    :class:`~ntkscale.errors.BackendUnavailableError` when it cannot run here."""
    name = default_backend_name() if name == "auto" else name
    try:
        return name, namespace_by_name(name)
    except RuntimeError as exc:   # CuPy missing or no CUDA device: no retry fixes that
        raise BackendUnavailableError(f"{exc} (backend: {name})") from None


def _to_backend(x: Any, dtype: str, xp: Any) -> Any:
    x = np.asarray(x, dtype=dtype)
    return x if is_numpy_namespace(xp) else xp.asarray(x)


def _to_host(out: Sequence[Any], get: Sequence[str], dtype: str) -> Dict[str, np.ndarray]:
    return {name: np.ascontiguousarray(to_numpy(a), dtype=dtype) for name, a in zip(get, out, strict=True)}


def _pattern_kwargs(patterns: Optional[Tuple[Any, Any]], dtype: str, xp: Any) -> Dict[str, Any]:
    """``pattern=(rows, cols)`` for ``kernel_fn`` (graph networks), or nothing."""
    if patterns is None or patterns[0] is None:
        return {}
    p1, p2 = patterns
    return {"pattern": (_to_backend(p1, dtype, xp), None if p2 is None else _to_backend(p2, dtype, xp))}


def compute_block(kernel_fn: Any, x_rows: Any, x_cols: Optional[Any], *, get: Sequence[str],
                  dtype: str, xp: Any, memory_budget: Optional[int] = None,
                  patterns: Optional[Tuple[Any, Any]] = None) -> Dict[str, np.ndarray]:
    """``kernel_fn(x_rows, x_cols)`` for every name in ``get``.

    ``x_cols=None`` is a diagonal block of a symmetric Gram (x2 = x1): the
    engine then treats the pairs (i, i) as exactly parallel. ``patterns``: the
    graph patterns of the block's rows and columns (``(rows, None)`` with
    ``x_cols=None``), sliced with the inputs (``stax.Aggregate``).
    """
    x1 = _to_backend(x_rows, dtype, xp)
    x2 = None if x_cols is None else _to_backend(x_cols, dtype, xp)
    out = kernel_fn(x1, x2, get=tuple(get), memory_budget=memory_budget,
                    **_pattern_kwargs(patterns, dtype, xp))
    return _to_host(out, get, dtype)


def compute_diag(kernel_fn: Any, x: Any, *, get: Sequence[str], dtype: str, xp: Any,
                 pattern: Optional[Any] = None) -> Dict[str, np.ndarray]:
    """``k(x_i, x_i)`` for every row and every name in ``get`` (``pattern``: the rows'
    graph patterns)."""
    extra = {} if pattern is None else {"pattern": _to_backend(pattern, dtype, xp)}
    out = kernel_fn.diag(_to_backend(x, dtype, xp), get=tuple(get), **extra)
    return _to_host(out, get, dtype)
