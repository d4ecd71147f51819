"""Where things live in a Gram store: node paths, format version, constants.

The on-disk layout is described in :mod:`ntkscale.store.gram_store`; this
module only names it, so the store, the manifest and the block writer agree.
"""

from __future__ import annotations

import datetime
from typing import Optional

import numpy as np

#: Store format this code writes and reads up to.
FORMAT_VERSION = 1
#: Root attribute that holds the store's metadata (:class:`~ntkscale.store.meta.StoreMeta`).
ATTR = "ntkscale"
#: Groups a store reserves for later stages; the Gram engine leaves them alone.
RESERVED_GROUPS = ("solver", "predict")
#: Group of finished-block records.
MANIFEST = "manifest"
#: Every block is written whole, so zarr's "is this chunk all fill value?" scan
#: (a full pass over 64 MiB per chunk, slower than the write itself) is skipped.
WRITE_CONFIG = {"write_empty_chunks": True}


def gram_path(part: str, kind: str) -> str:
    """``gram/<part>/<kind>``: the (rows, n_train) Gram of ``train`` or ``test``."""
    return f"gram/{part}/{kind}"


def diag_path(which: str, kind: str) -> str:
    """``diag/<which>/<kind>``: k(x_i, x_i) for every row of ``which``."""
    return f"diag/{which}/{kind}"


def input_path(which: str, name: str) -> str:
    """``inputs/<which>/<name>``: the copied inputs (``x``) or labels (``y``)."""
    return f"inputs/{which}/{name}"


def now() -> str:
    """UTC time stamp as the store records it (ISO 8601, seconds)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def transpose(a: np.ndarray, tile: int = 128, out: Optional[np.ndarray] = None) -> np.ndarray:
    """C-contiguous ``a.T``, copied tile by tile (into ``out`` when given: the block
    writer transposes a mirror chunk straight into its write buffer).

    Hand-written because ``np.ascontiguousarray(a.T)`` walks one side with a
    stride of a whole row and is about twice as slow on a 4096² block, and zarr
    given the strided view ``a.T`` is slower still (measured: 1.3 s vs 0.12 s).
    """
    n, m = a.shape
    out = np.empty((m, n), dtype=a.dtype) if out is None else out
    for i in range(0, n, tile):
        for j in range(0, m, tile):
            out[j:j + tile, i:i + tile] = a[i:i + tile, j:j + tile].T
    return out
