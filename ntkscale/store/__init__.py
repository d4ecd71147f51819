"""The Gram store: one Zarr group, its manifest, metadata, lock and maintenance."""

from ..errors import StoreBusyError, StoreError
from .gram_store import GramStore
from .meta import StoreDiff, StoreMeta

__all__ = ["GramStore", "StoreBusyError", "StoreDiff", "StoreError", "StoreMeta"]
