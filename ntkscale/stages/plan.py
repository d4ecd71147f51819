"""The plan of a run, as ``ntkscale plan`` prints it: blocks, storage, work and an estimated time."""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, Optional

from ..config.run import RunConfig
from ..costs.measure import calibrate, write_bandwidth
from ..store.location import StoreLocation, is_url
from .gram import GramPipeline, io_threads


#: Rows (and columns) of the block ``plan`` times on one core.
CALIBRATION_BLOCK = 256
#: What ``plan`` says (on stderr) before its calibration, which takes seconds.
CALIBRATION_NOTE = ("timing one {b}x{b} block on one core for the estimate (--no-calibrate skips it) ...")


def plan_report(config: RunConfig, *, timed: bool = True,
                say: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """:meth:`GramPipeline.describe` plus, with ``timed``, an estimate from one small
    block timed on one core and one file write timed on the store's disk.

    ``say`` is told, before the timing starts, what is being timed (the CLI prints
    it on stderr). The result's ``estimated_s`` is the *plan estimate*; a running
    ``gram`` replaces it by the ETA measured on its progress line.
    """
    pipe = GramPipeline(config, progress=False)
    info: Dict[str, Any] = pipe.describe()
    if not timed:
        return info
    x = pipe.inputs()["train"].x
    if say is not None:
        say(CALIBRATION_NOTE.format(b=min(CALIBRATION_BLOCK, len(x))))
    per_entry = calibrate(pipe.kernel_fn, x, config.dtype, config.kernel.get, rows=CALIBRATION_BLOCK)
    bandwidth = (StoreLocation.parse(config.store).write_bandwidth() if is_url(config.store)
                 else write_bandwidth(os.path.dirname(config.store) or "."))
    todo = info["blocks_todo"] / max(1, info["blocks_total"])
    info["calibration_s_per_entry"] = per_entry
    info["write_bytes_per_s"] = bandwidth
    info["compute_s"] = info["entries_todo"] * per_entry / max(1, info["slots"])
    info["write_s"] = info["storage_bytes"] * todo / bandwidth
    # with io threads writes overlap compute (the slower of the two); without,
    # every task computes and then writes, so the two add up
    overlap = io_threads(config) > 0
    info["estimated_s"] = (max if overlap else (lambda a, b: a + b))(info["compute_s"], info["write_s"])
    return info
