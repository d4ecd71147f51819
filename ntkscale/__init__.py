"""ntkscale: exact infinite-width NNGP/NTK kernels at scale, and kernel regression.

``stax`` (kernels) imports eagerly; the scikit-learn estimators and the Dask/Zarr
pipeline objects (``GramPipeline``, ``GramStore``, ``RunPipeline``,
``load_config``) load on first use, so ``import ntkscale`` and the CLI stay light.
"""

import importlib
from typing import Any

__version__ = "0.1.0"

from . import stax  # noqa: E402
from .errors import (ConfigError, InputError, NotPSDError, NtkscaleError, NumericalWarning,
    SpecError, SpecMismatchError, UnsupportedOptionError)

_LAZY = {
    "NTKClassifier": "ntkscale.estimator",
    "NTKRegressor": "ntkscale.estimator",
    "default_layers": "ntkscale.estimator",
    "GramPipeline": "ntkscale.stages.gram",
    "GramStore": "ntkscale.store.gram_store",
    "RunPipeline": "ntkscale.stages.run",
    "load_config": "ntkscale.config.run",
    "RunConfig": "ntkscale.config.run",
}

__all__ = [
    "ConfigError", "InputError", "NotPSDError", "NtkscaleError", "NumericalWarning", "SpecError",
    "SpecMismatchError", "UnsupportedOptionError", "__version__", "stax",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ntkscale' has no attribute {name!r}")
