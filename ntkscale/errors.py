"""Typed errors and warnings raised by ntkscale.

Every error message names the problem, the numbers behind it and the fix.
"""

from __future__ import annotations


class NtkscaleError(Exception):
    """Base class of every error ntkscale raises on purpose."""


class InputError(NtkscaleError, ValueError):
    """Input arrays have the wrong rank, shape, dtype or non-finite values."""


class SpecError(NtkscaleError, ValueError):
    """A layer list or network description is invalid (unknown layer, bad keyword)."""


class UnsupportedOptionError(SpecError):
    """A neural-tangents keyword is set to a value ntkscale does not support yet."""


class SpecMismatchError(NtkscaleError):
    """An existing store was made with a different kernel spec, data or dtype."""


class NotPSDError(NtkscaleError, ValueError):
    """A matrix that must be positive definite is not, even after jitter retries."""


class ConfigError(NtkscaleError, ValueError):
    """A run configuration is invalid; the message names the key."""


class NumericalWarning(RuntimeWarning):
    """A numerical fallback was taken (jitter added, non-convergence, precision loss)."""


# store and gram


class StoreError(NtkscaleError):
    """A path is not a Gram store, or a store is incomplete for what was asked."""


class LeaseLostInterrupt(BaseException):
    """Raised in the main thread by a store lease's renewer when another run took the lease
    over: it stops the command at once, like Ctrl-C, and the lease's ``with`` block turns it
    into :class:`StoreBusyError`. A BaseException, so no ``except Exception`` swallows it."""


class StoreBusyError(NtkscaleError):
    """Another run holds the store's lock."""


class BlockFailedError(NtkscaleError):
    """Some blocks failed after retries; the finished ones are kept."""


# costs


class CalibrationError(NtkscaleError):
    """No usable cost-model calibration for the requested device kind."""


# gram faults, preflight, damaged and read-only stores, cluster connections (issue 15, rel2)


class PersistentBlockError(BlockFailedError):
    """A block failed for a reason no retry fixes (disk full, read-only or forbidden
    store, missing backend, bad spec); the run stopped at once, finished blocks kept."""


class BackendUnavailableError(NtkscaleError):
    """The requested array backend (CuPy) is not installed or has no usable device."""


class PreflightError(ConfigError):
    """A run cannot work as configured here (free disk, worker memory, task count,
    worker count, backend, store path); refused before any work."""


class StoreDamagedError(StoreError):
    """Blocks a command reads are missing on disk or fail their checksums."""


class StoreReadOnlyError(StoreError):
    """A command that writes was given a store on a read-only filesystem."""


class ClusterUnreachableError(ConfigError):
    """No Dask scheduler answered within the connect deadline."""


class ClusterStartError(NtkscaleError):
    """A local Dask cluster did not start (after a retry)."""


# GPU workers (issue 16)


class GpuConfigError(ConfigError):
    """A GPU cluster config this machine cannot honour: no CuPy, no CUDA device, or
    more (or other) GPUs asked for than are present."""
