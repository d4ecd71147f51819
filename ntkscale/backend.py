"""The one place where the array backend is chosen.

The reference kernel code only calls array-API functions on the namespace it
is given (NumPy, CuPy, array-api-strict), following scikit-learn's
``utils/_array_api.py``: ``array_api_compat.array_namespace`` picks the
namespace of the inputs. CuPy is imported lazily.
"""

from __future__ import annotations

from typing import Any, List

import numpy as np

import array_api_compat


def namespace_of(*arrays: Any) -> Any:
    """Return the array-API namespace shared by ``arrays`` (NumPy for lists)."""
    arrays = tuple(a for a in arrays if a is not None)
    if not arrays:
        return array_api_compat.array_namespace(np.empty(0))
    return array_api_compat.array_namespace(*arrays)


def is_numpy_namespace(xp: Any) -> bool:
    return array_api_compat.is_numpy_namespace(xp)


def is_cupy_namespace(xp: Any) -> bool:
    return array_api_compat.is_cupy_namespace(xp)


def namespace_by_name(name: str) -> Any:
    """``"numpy"``, ``"cupy"`` or ``"array_api_strict"`` -> namespace.

    Asking for CuPy without it installed (or without a GPU) says so plainly.
    """
    if name == "numpy":
        return array_api_compat.array_namespace(np.empty(0))
    if name == "cupy":
        try:
            import cupy  # noqa: PLC0415 (optional dependency)
        except ImportError as exc:  # pragma: no cover - depends on the machine
            raise RuntimeError(
                "backend 'cupy' was requested but CuPy is not installed; install "
                "ntkscale[gpu] (cupy-cuda12x) on a machine with an NVIDIA GPU, or use 'numpy'"
            ) from exc
        try:
            n_gpus = cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:  # pragma: no cover - depends on the machine
            raise RuntimeError(f"backend 'cupy' was requested but no CUDA device is usable: {exc}") from exc
        if n_gpus == 0:  # pragma: no cover
            raise RuntimeError("backend 'cupy' was requested but no CUDA device was found; use 'numpy'")
        return array_api_compat.array_namespace(cupy.empty(0))
    if name == "array_api_strict":
        import array_api_strict  # noqa: PLC0415 (optional dependency, tests)

        return array_api_strict
    raise ValueError(f"unknown backend {name!r}; choose 'numpy', 'cupy' or 'array_api_strict'")


def default_backend_name() -> str:
    """``"cupy"`` when CuPy and a GPU are usable, else ``"numpy"``."""
    try:
        import cupy  # noqa: PLC0415 (optional dependency)

        if cupy.cuda.runtime.getDeviceCount() > 0:  # pragma: no cover - GPU only
            return "cupy"
    except Exception:
        pass
    return "numpy"


def to_numpy(array: Any) -> np.ndarray:
    """Copy any array-API array to a NumPy array (device to host for CuPy)."""
    if isinstance(array, np.ndarray):
        return array
    if hasattr(array, "get") and type(array).__module__.startswith("cupy"):
        return array.get()
    try:
        return np.asarray(array)
    except Exception:
        # array-api-strict refuses implicit conversion; go through DLPack.
        return np.from_dlpack(array)


def itemsize(array: Any) -> int:
    """Bytes per element of a floating array in any namespace."""
    return namespace_of(array).finfo(array.dtype).bits // 8


def concat(parts: List[Any], xp: Any, axis: int = 0) -> Any:
    """Concatenate arrays of namespace ``xp`` along ``axis`` (one part: itself,
    uncopied). NumPy's ``concat`` only exists from 2.0, so NumPy goes through
    ``np.concatenate``."""
    if len(parts) == 1:
        return parts[0]
    if is_numpy_namespace(xp):
        return np.concatenate(parts, axis=axis)
    return xp.concat(parts, axis=axis)
