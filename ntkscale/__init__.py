"""ntkscale: exact infinite-width NNGP/NTK kernels at scale, and kernel regression.

``stax`` (kernels) imports eagerly; the scikit-learn estimators and the Dask/Zarr
pipeline objects (``GramPipeline``, ``GramStore``, ``RunPipeline``,
``load_config``) load on first use, so ``import ntkscale`` and the CLI stay light.

Before anything imports numba, ``NUMBA_CACHE_DIR`` is pointed at a per-user cache
directory (:func:`numba_cache_dir`), so numba's ``cache=True`` never writes ``.nbi``/``.nbc``
files next to the installed package: files left there by an installed copy survive
``pip uninstall`` and shadow a later editable install as an empty namespace package.
"""

import importlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

__version__ = "0.1.0"


def _writable_dir(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def cache_home() -> Path:
    """ntkscale's per-user cache directory: ``$XDG_CACHE_HOME/ntkscale`` (``~/.cache/ntkscale``
    without it), or ``<tmp>/ntkscale-<user>`` when that cannot be written (read-only home)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = Path(base) / "ntkscale"
    if os.path.isabs(base) and _writable_dir(path):
        return path
    user = str(os.getuid()) if hasattr(os, "getuid") else (os.environ.get("USERNAME") or "user")
    return Path(tempfile.gettempdir()) / f"ntkscale-{user}"


def numba_cache_dir() -> str:
    """Where numba caches ntkscale's compiled kernels: ``$NUMBA_CACHE_DIR`` when the user set
    it, else ``numba/<version>`` under :func:`cache_home`."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return os.environ["NUMBA_CACHE_DIR"]
    return str(cache_home() / "numba" / __version__)


def _set_numba_cache_dir() -> None:
    """``os.environ.setdefault("NUMBA_CACHE_DIR", ...)``; Dask workers inherit it and import
    ntkscale themselves. When numba was imported first (its config already read), its
    ``CACHE_DIR`` is set directly, unless the user chose one."""
    user_set = bool(os.environ.get("NUMBA_CACHE_DIR"))
    os.environ["NUMBA_CACHE_DIR"] = numba_cache_dir()
    config = getattr(sys.modules.get("numba.core.config"), "CACHE_DIR", None)
    if not user_set and config is not None and not config:
        sys.modules["numba.core.config"].CACHE_DIR = os.environ["NUMBA_CACHE_DIR"]


_set_numba_cache_dir()

from . import stax  # noqa: E402
from .errors import (ConfigError, InputError, NotPSDError, NtkscaleError, NumericalWarning,
    SpecError, SpecMismatchError, UnsupportedOptionError)

_LAZY = {
    "NTKClassifier": "ntkscale.estimator",
    "NTKRegressor": "ntkscale.estimator",
    "default_layers": "ntkscale.estimator",
    "empirical_kernel_fn": "ntkscale.stax.empirical",
    "empirical_nngp_fn": "ntkscale.stax.empirical",
    "empirical_ntk_fn": "ntkscale.stax.empirical",
    "GramPipeline": "ntkscale.stages.gram",
    "GramStore": "ntkscale.store.gram_store",
    "RunPipeline": "ntkscale.stages.run",
    "load_config": "ntkscale.config.run",
    "RunConfig": "ntkscale.config.run",
}

__all__ = [
    "ConfigError", "InputError", "NotPSDError", "NtkscaleError", "NumericalWarning", "SpecError",
    "SpecMismatchError", "UnsupportedOptionError", "__version__", "cache_home", "numba_cache_dir", "stax",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ntkscale' has no attribute {name!r}")
