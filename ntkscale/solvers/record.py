"""Save and load a solve in a Zarr group (the store's reserved ``solver/`` group).

Layout written by :func:`save_solution` into ``group``::

    alpha        (s, n, k) one solution per ridge (uncompressed, chunk per ridge)
    history      (T+1, s, k) CG relative residuals (CG only; NaN where a column idled)
    attrs        {"solve": SolveResult.summary(), plus anything passed as ``attrs``}

``ntkscale report`` reads ``history`` and the ridge metrics back from here.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np

from .api import SolveResult


def save_solution(group: Any, result: SolveResult, attrs: Optional[Dict[str, Any]] = None) -> None:
    alpha = np.ascontiguousarray(result.alpha)
    arr = group.create_array("alpha", shape=alpha.shape, dtype=alpha.dtype,
                             chunks=(1,) + alpha.shape[1:], compressors=None, overwrite=True)
    arr[...] = alpha
    if result.info is not None:
        h = np.asarray(result.info.history, dtype=np.float64)
        if h.ndim == 2:
            h = h[:, None, :]
        harr = group.create_array("history", shape=h.shape, dtype="float64", compressors=None, overwrite=True,
                                  chunks=h.shape if h.size else None)
        if h.size:
            harr[...] = h
    group.attrs.update({"solve": result.summary(), **(attrs or {})})


def load_solution(group: Any) -> Dict[str, Any]:
    """``{"alpha": (s,n,k), "history": (T+1,s,k) or None, "attrs": {...}}``."""
    out: Dict[str, Any] = {"alpha": np.asarray(group["alpha"][...]), "attrs": dict(group.attrs)}
    try:
        out["history"] = np.asarray(group["history"][...])
    except KeyError:
        out["history"] = None
    return out
