"""Records of the later stages in a Gram store's reserved ``solver/`` and ``predict/`` groups.

Layout (docs/store.md reserves the groups)::

    solver/alpha       (s, n, k) one solution per ridge (uncompressed, chunk per ridge)
    solver/history     (T+1, s, k) CG relative residuals (CG only; NaN where a column idled)
    solver attrs       {"solve": the solve's summary, "run": the run's solve record, ...}
    predict/scores     (s, m, k) raw predictions, one per ridge
    predict/labels     (m,) decoded predictions of the chosen ridge; string labels as int32
                       codes with the class names in its attributes (``classes``), read
                       back as strings by :func:`load_labels`
    predict attrs      {"metrics": ..., "test_fingerprint": ...}
    solver/lanczos_<kind>   the Lanczos basis and tridiagonal of ``predict --time`` (resumable;
                            independent of the times and the learning rate)
    predict/dynamics_<kind> predictions and error estimates at the requested training times

``ntkscale report`` reads ``history`` and the ridge metrics back from here.
Every value written to attributes goes through :func:`jsonable` first.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np


def jsonable(value: Any) -> Any:
    """``value`` with NumPy scalars and arrays turned into Python numbers and lists,
    tuples into lists and mapping keys into strings (what JSON and Zarr attributes take)."""
    if isinstance(value, dict):
        return {str(k): jsonable(x) for k, x in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(x) for x in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def save_solution(group: Any, result: Any, attrs: Optional[Dict[str, Any]] = None) -> None:
    """Write a solve (a :class:`~ntkscale.solvers.api.SolveResult`: ``alpha``,
    ``info`` with the CG ``history`` or None, ``summary()``) into ``group``."""
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
    """``{"alpha": (s,n,k), "history": (T+1,s,k) or None, "attrs": {...}}``; KeyError without alpha."""
    out: Dict[str, Any] = {"alpha": np.asarray(group["alpha"][...]), "attrs": dict(group.attrs)}
    try:
        out["history"] = np.asarray(group["history"][...])
    except KeyError:
        out["history"] = None
    return out


def save_predictions(group: Any, scores: np.ndarray, labels: Any, attrs: Dict[str, Any]) -> None:
    """Write raw ``scores`` (one per ridge), the decoded ``labels`` (when numeric) and
    ``attrs`` (metrics, test fingerprint) into the ``predict`` group."""
    s = np.ascontiguousarray(scores, dtype=np.float64)
    arr = group.create_array("scores", shape=s.shape, dtype="float64", chunks=(1,) + s.shape[1:],
                             compressors=None, overwrite=True)
    arr[...] = s
    lab = np.asarray(labels)
    classes = None
    if lab.dtype.kind in "US":   # Zarr 3 has no stable spec for fixed-length strings
        classes, codes = np.unique(lab, return_inverse=True)
        lab = codes.reshape(lab.shape).astype(np.int32)
    if lab.dtype.kind in "biuf":
        la = group.create_array("labels", shape=lab.shape, dtype=lab.dtype, compressors=None, overwrite=True)
        la[...] = lab
        if classes is not None:
            la.attrs.update({"classes": classes.tolist(), "label_dtype": classes.dtype.str})
    group.attrs.update(jsonable(attrs))


def load_labels(group: Any) -> np.ndarray:
    """The ``predict`` group's decoded predictions: string labels as the original
    strings, numbers as they are; KeyError without predictions."""
    arr = group["labels"]
    values = np.asarray(arr[...])
    attrs = dict(arr.attrs)
    if "classes" not in attrs:
        return values
    classes = np.asarray(attrs["classes"], dtype=np.dtype(attrs.get("label_dtype") or "U"))
    return classes[values.astype(np.intp)]
