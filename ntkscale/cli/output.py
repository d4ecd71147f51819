"""What the commands print: progress lines, JSON, sizes and durations."""

from __future__ import annotations

import json
from typing import Any

from ..gram.progress import say

__all__ = ["duration", "human_bytes", "npy_path", "print_json", "say"]


def npy_path(path: str, flag: str = "-o") -> str:
    """``path`` with ``.npy`` appended when it lacks it (NumPy's ``np.load`` and ``np.save``
    expect the suffix), saying so on stderr."""
    if path.endswith(".npy"):
        return path
    say(f"{flag} {path}: writing {path}.npy (.npy files carry the suffix)")
    return path + ".npy"


def print_json(obj: Any, indent: int = 2) -> None:
    """``obj`` as JSON on stdout (non-JSON values as strings)."""
    print(json.dumps(obj, indent=indent, default=str))


def human_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def duration(seconds: float, *, days: bool = False) -> str:
    """Seconds, minutes or hours (and, with ``days``, days past 72 h) with one decimal."""
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    hours = seconds / 3600
    if days and hours >= 72:
        return f"{hours / 24:.1f} days"
    return f"{hours:.1f} h"
