"""Validation of kernel inputs: clear errors that name the problem and the fix."""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from ..backend import namespace_of, to_numpy
from ..errors import InputError


def _describe_positions(bad: np.ndarray, limit: int = 5) -> str:
    rows = np.unique(np.nonzero(bad.reshape(bad.shape[0], -1))[0]) if bad.ndim > 1 else np.nonzero(bad)[0]
    shown = ", ".join(str(int(r)) for r in rows[:limit])
    more = f", ... ({len(rows)} rows in all)" if len(rows) > limit else ""
    return f"row{'s' if len(rows) != 1 else ''} {shown}{more}"


def as_float_array(x: Any, name: str) -> Tuple[Any, Any]:
    """Return ``(array, xp)``: lists become NumPy; integers become float64."""
    if x is None:
        raise InputError(f"{name} is None; pass an array of shape (n_samples, ...)")
    if isinstance(x, (list, tuple)) or np.isscalar(x):
        x = np.asarray(x)
    if isinstance(x, np.ndarray):
        kind = x.dtype.kind
        if kind in "biu":
            x = x.astype(np.float64)
        elif kind == "c":
            raise InputError(f"{name} has complex dtype {x.dtype}; kernels need real floating-point inputs")
        elif kind != "f":
            raise InputError(
                f"{name} has non-numeric dtype {x.dtype}; convert it with "
                f"{name}.astype(numpy.float32) or numpy.float64"
            )
        elif x.dtype == np.float16:
            x = x.astype(np.float32)
        return x, namespace_of(x)
    try:
        xp = namespace_of(x)
    except TypeError as exc:
        raise InputError(f"{name} of type {type(x).__name__} is not an array; pass a NumPy, CuPy or array-API array") from exc
    if not xp.isdtype(x.dtype, "real floating"):
        if xp.isdtype(x.dtype, ("integral", "bool")):
            x = xp.astype(x, xp.float64)
        else:
            raise InputError(f"{name} has dtype {x.dtype}; kernels need real floating-point inputs")
    return x, xp


def check_finite(x: Any, xp: Any, name: str) -> None:
    finite = xp.isfinite(x)
    if not bool(xp.all(finite)):
        bad = ~to_numpy(finite)
        n_nan = int(np.isnan(to_numpy(x)).sum()) if isinstance(x, np.ndarray) else int(bad.sum())
        n_bad = int(bad.sum())
        what = f"{n_bad} non-finite value{'s' if n_bad != 1 else ''}"
        if isinstance(x, np.ndarray):
            what = f"{n_nan} NaN and {n_bad - n_nan} infinite value{'s' if n_bad != 1 else ''}"
        raise InputError(f"{name} has {what} ({_describe_positions(bad)}); clean or impute them")


def validate_pair(x1: Any, x2: Optional[Any], image: bool) -> Tuple[Any, Optional[Any], Any]:
    """Check ranks, shapes, dtypes and values; return ``(x1, x2, xp)`` with a
    common floating dtype."""
    x1, xp = as_float_array(x1, "x1")
    arrays = [("x1", x1)]
    if x2 is not None:
        x2, xp2 = as_float_array(x2, "x2")
        if xp2 is not xp and type(x1) is not type(x2):
            raise InputError(
                f"x1 ({type(x1).__module__}) and x2 ({type(x2).__module__}) live in different array "
                "libraries; convert both to the same one"
            )
        arrays.append(("x2", x2))
    for name, x in arrays:
        if image:
            if x.ndim not in (3, 4):
                raise InputError(
                    f"{name} must be a 4-D NHWC image batch (n, height, width, channels) or a 3-D "
                    f"NWC sequence batch (n, length, channels) for a network with spatial layers; "
                    f"got shape {tuple(x.shape)}"
                    + ("; add a channel axis with x[..., None] or x[:, :, None]" if x.ndim == 2 else "")
                )
        elif x.ndim != 2:
            hint = (
                f"; flatten it with {name}.reshape(len({name}), -1)" if x.ndim > 2
                else f"; use {name}.reshape(-1, 1) for one feature or {name}[None] for one sample"
            )
            raise InputError(
                f"{name} must be 2-D (n_samples, n_features) for a fully-connected network; "
                f"got shape {tuple(x.shape)}{hint}"
            )
        if x.shape[0] == 0 or any(s == 0 for s in x.shape[1:]):
            raise InputError(f"{name} is empty (shape {tuple(x.shape)}); give at least one sample and one feature")
        check_finite(x, xp, name)
    if x2 is not None:
        if tuple(x1.shape[1:]) != tuple(x2.shape[1:]):
            what = "channels/spatial shape" if image else "features"
            raise InputError(
                f"x1 and x2 disagree in {what}: x1 has per-sample shape {tuple(x1.shape[1:])}, "
                f"x2 has {tuple(x2.shape[1:])}"
            )
        if x1.dtype != x2.dtype:
            dtype = xp.result_type(x1.dtype, x2.dtype)
            x1, x2 = xp.astype(x1, dtype), xp.astype(x2, dtype)
    return x1, x2, xp
