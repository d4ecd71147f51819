"""The run configuration: parsed and validated once, frozen."""

from .run import RunConfig, load_config

__all__ = ["RunConfig", "load_config"]
