"""ntkscale: exact infinite-width NNGP/NTK kernels at scale, and kernel regression."""

__version__ = "0.1.0"

from . import stax  # noqa: E402
from .errors import (  # noqa: E402
    ConfigError, InputError, NotPSDError, NtkscaleError, NumericalWarning, SpecError,
    SpecMismatchError, UnsupportedOptionError,
)

__all__ = [
    "ConfigError", "InputError", "NotPSDError", "NtkscaleError", "NumericalWarning", "SpecError",
    "SpecMismatchError", "UnsupportedOptionError", "__version__", "stax",
]

from .estimator import NTKClassifier, NTKRegressor, default_layers  # noqa: E402

__all__ += ["NTKClassifier", "NTKRegressor", "default_layers"]
