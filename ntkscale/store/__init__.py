"""The Gram store: one Zarr group, its manifest, lock and maintenance."""

from .gram_store import GramStore, StoreError

__all__ = ["GramStore", "StoreError"]
