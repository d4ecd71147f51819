"""The report of a solved store, as ``ntkscale report`` writes it: PNG plots of the
CG residuals, a spectrum estimate of the train Gram and the test metric per ridge."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import numpy as np

from ..errors import InputError
from ..report import spectrum_estimate, write_report
from ..solvers.operator import GramOperator
from ..store.gram_store import GramStore


def store_report(store_path: os.PathLike | str, output: Optional[str] = None, *, rank: int = 256) -> List[str]:
    """Write the plots of the solve in ``store_path`` into ``output`` (default
    ``STORE-report/`` next to the store); returns the paths written."""
    store = GramStore.open(store_path, "r")
    try:
        group = store.group("solver")
        rec = dict(group.attrs).get("run") or {}
    except KeyError:
        rec = {}
    if not rec:
        raise InputError(f"{store.path} has no solve yet: run `ntkscale solve CONFIG` or `ntkscale run CONFIG`")
    history = np.asarray(group["history"][...]) if "history" in group else None
    kind = rec.get("kind") or store.kinds[0]
    op = GramOperator.from_zarr(store.train_array(kind), diagonal=store.diag("train", kind))
    eig = spectrum_estimate(op, rank=min(rank, store.n_train))
    try:
        metrics = dict(store.group("predict").attrs).get("metrics") or {}
    except KeyError:
        metrics = {}
    rows = metrics.get("ridges") or ([{k: v for k, v in metrics.items() if k.startswith(("test_", "val_"))}]
                                     if metrics else None)
    out = Path(output) if output else store.path.parent / f"{store.path.name}-report"
    return write_report(str(out), history=history, ridges=rec.get("ridges_absolute"),
                        rtol=rec.get("tol") if rec.get("method") == "cg" else None, eigenvalues=eig,
                        ridge_metrics=rows, chosen=rec.get("chosen_index"),
                        relative_ridges=rec.get("ridges_relative"))
