"""The report of a solved store, as ``ntkscale report`` writes it: PNG plots of the
CG residuals, a spectrum estimate of the train Gram, the test metrics per ridge and
the training dynamics (``ntkscale predict --time``), and ``report.json`` listing the files written and why any plot was left out."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import InputError
from ..report import Report, spectrum_estimate, write_report
from ..solvers.operator import GramOperator
from ..store.gram_store import GramStore
from .dynamics import stored_dynamics


def store_report(store_path: os.PathLike | str, output: Optional[str] = None, *, rank: int = 256) -> Report:
    """Write the plots of the solve in ``store_path`` into ``output`` (default
    ``STORE-report/`` next to the store) and ``report.json`` (``written``, ``skipped``:
    file -> reason); returns the PNG paths written, with ``.skipped``."""
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
    op = GramOperator.from_zarr(store.train_array(kind), diagonal=store.diag("train", kind), mirrored=True)
    eig = spectrum_estimate(op, rank=min(rank, store.n_train))
    try:
        metrics = dict(store.group("predict").attrs).get("metrics") or {}
    except KeyError:
        metrics = {}
    rows = metrics.get("ridges") or ([{k: v for k, v in metrics.items() if k.startswith(("test_", "val_"))}]
                                     if metrics else None)
    out = Path(output) if output else store.path.parent / f"{store.path.name}-report"
    report = write_report(str(out), history=history, ridges=rec.get("ridges_absolute"),
                          rtol=rec.get("tol") if rec.get("method") == "cg" else None, eigenvalues=eig,
                          ridge_metrics=rows, chosen=rec.get("chosen_index"),
                          relative_ridges=rec.get("ridges_relative"), method=rec.get("method"),
                          dynamics=stored_dynamics(store))
    summary = {"store": str(store.path), "method": rec.get("method"), "ridges": rec.get("ridges_relative"),
               "written": [Path(p).name for p in report], "skipped": report.skipped}
    (out / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    return report
