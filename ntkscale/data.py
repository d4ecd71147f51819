"""Load and validate input arrays: memory-mapped ``.npy`` or Zarr arrays.

Inputs are never read whole: ``.npy`` files are memory-mapped
(``allow_pickle=False``), Zarr arrays are read lazily, and every check
(finite values, fingerprints) streams over row chunks. Problems are reported
before any work starts, naming the config key and the file.

A *fingerprint* is the SHA-256 of an array's dtype, shape and C-order bytes.
It is hand-written rather than ``dask.base.tokenize`` because tokenize hashes
a memory-mapped file by its name and modification time, not its content, and
its output is not promised stable across Dask versions; a store must be able
to compare fingerprints years later.

Graph networks (``stax.Aggregate``) take a *pattern* per input row (neural-tangents'
``pattern=``): ``data.<set>.pattern`` names its array next to ``x``. It is checked
(one pattern per row, finite numbers) and folded into the fingerprint of ``x``
(:func:`combined_fingerprint`), so a store made with other patterns is refused like
one made from other inputs; without a pattern the fingerprint is exactly what it was.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np

from .errors import InputError

#: Bytes per chunk when streaming over an array's rows.
STREAM_BYTES = 64 << 20


def open_array(path: str, what: str = "input") -> Any:
    """Open ``path`` lazily: ``.npy`` -> read-only memmap, Zarr -> ``zarr.Array``."""
    import zarr  # heavy import, kept out of `import ntkscale` and `ntkscale --help`

    p = Path(path)
    if not p.exists():
        raise InputError(f"{what}: file not found: {p}")
    if p.is_file():
        if p.suffix.lower() != ".npy":
            raise InputError(f"{what}: {p} is not a .npy file or a Zarr array; save it with numpy.save")
        try:
            return np.load(p, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise InputError(f"{what}: cannot read {p} without pickle ({exc}); save a numeric array") from None
        except OSError as exc:
            raise InputError(f"{what}: cannot read {p}: {exc}") from None
    try:
        arr = zarr.open_array(p, mode="r")
    except Exception as exc:  # zarr raises several types for "not an array here"
        raise InputError(f"{what}: {p} is neither a .npy file nor a Zarr array ({type(exc).__name__}: {exc})") from None
    return arr


def iter_row_chunks(arr: Any, max_bytes: int = STREAM_BYTES) -> Iterator[Tuple[int, np.ndarray]]:
    """Yield ``(start_row, np.ndarray)`` over ``arr`` in chunks of about ``max_bytes``."""
    n = int(arr.shape[0])
    row_bytes = max(1, int(np.prod(arr.shape[1:], dtype=np.int64)) * np.dtype(arr.dtype).itemsize)
    step = max(1, max_bytes // row_bytes)
    for start in range(0, n, step):
        yield start, np.ascontiguousarray(arr[start:start + step])


def fingerprint(arr: Any) -> str:
    """``"sha256:<hex>"`` of dtype, shape and bytes (streamed)."""
    h = hashlib.sha256(f"{np.dtype(arr.dtype).str}|{tuple(int(s) for s in arr.shape)}|".encode())
    for _, chunk in iter_row_chunks(arr):
        h.update(memoryview(chunk).cast("B"))
    return "sha256:" + h.hexdigest()


#: dtype kinds accepted for inputs ``x`` (real numbers) and labels ``y`` (also strings, as scikit-learn).
X_KINDS, Y_KINDS = "biuf", "biufUS"


def _check_dtype(arr: Any, what: str, kinds: str = X_KINDS) -> None:
    kind = np.dtype(arr.dtype).kind
    if kind not in kinds:
        if kinds == X_KINDS:
            raise InputError(f"{what} has dtype {arr.dtype}; inputs must be real numbers (float or integer)")
        raise InputError(f"{what} has dtype {arr.dtype}; labels must be numbers or strings "
                         "(save them with np.save as a numeric or str array)")


def scan(arr: Any, what: str, kinds: str = X_KINDS) -> str:
    """Fingerprint ``arr`` and check it is finite, in one streaming pass; ``kinds``
    are the dtype kinds accepted (:data:`X_KINDS` or, for labels, :data:`Y_KINDS`)."""
    _check_dtype(arr, what, kinds)
    h = hashlib.sha256(f"{np.dtype(arr.dtype).str}|{tuple(int(s) for s in arr.shape)}|".encode())
    bad_rows: list = []
    n_nan = n_inf = 0
    check = np.dtype(arr.dtype).kind == "f"
    for start, chunk in iter_row_chunks(arr):
        h.update(memoryview(chunk).cast("B"))
        if check:
            finite = np.isfinite(chunk)
            if not finite.all():
                n_nan += int(np.isnan(chunk).sum())
                n_inf += int(np.isinf(chunk).sum())
                rows = np.nonzero(~finite.reshape(len(chunk), -1).all(axis=1))[0] + start
                bad_rows.extend(int(r) for r in rows[:10])
    if n_nan or n_inf:
        shown = ", ".join(str(r) for r in bad_rows[:5]) + (", ..." if len(bad_rows) > 5 else "")
        raise InputError(f"{what} has {n_nan} NaN and {n_inf} infinite values (rows {shown}); "
                         "clean or impute them")
    return "sha256:" + h.hexdigest()


@dataclasses.dataclass
class InputSet:
    """One validated input set (``train`` or ``test``) with its fingerprints."""

    name: str
    x: Any
    y: Optional[Any]
    x_path: Optional[str]
    y_path: Optional[str]
    x_fingerprint: str
    y_fingerprint: Optional[str]
    #: the graph patterns of the rows (``Aggregate``), their file and fingerprint; the
    #: pattern fingerprint is already folded into ``x_fingerprint``
    pattern: Optional[Any] = None
    pattern_path: Optional[str] = None
    pattern_fingerprint: Optional[str] = None

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def sample_shape(self) -> Tuple[int, ...]:
        return tuple(int(s) for s in self.x.shape[1:])

    def fingerprints(self) -> Dict[str, Optional[str]]:
        out = {"x": self.x_fingerprint, "y": self.y_fingerprint}
        if self.pattern_fingerprint is not None:
            out["pattern"] = self.pattern_fingerprint
        return out

    def sources(self) -> Dict[str, Optional[str]]:
        out = {"x": self.x_path, "y": self.y_path}
        if self.pattern_path is not None:
            out["pattern"] = self.pattern_path
        return out


def combined_fingerprint(x_fingerprint: str, pattern_fingerprint: Optional[str]) -> str:
    """The fingerprint of inputs ``x`` together with their graph patterns (``x``'s own
    fingerprint when there are none, so stores without patterns keep theirs)."""
    if pattern_fingerprint is None:
        return x_fingerprint
    h = hashlib.sha256(f"{x_fingerprint}|pattern|{pattern_fingerprint}".encode())
    return "sha256:" + h.hexdigest()


def label_codes(y: Any) -> Tuple[np.ndarray, np.ndarray]:
    """String labels as ``(codes, classes)``: ``classes`` sorted (``np.unique``),
    ``classes[codes] == y``; codes are int32 (how the store keeps string labels)."""
    classes, codes = np.unique(np.asarray(y), return_inverse=True)
    return codes.reshape(np.shape(y)).astype(np.int32), classes


def _load_pattern(key: str, path: str, n: int) -> Tuple[Any, str]:
    """Open and fingerprint ``data.<set>.pattern``: one pattern per input row."""
    pattern = open_array(path, f"{key}.pattern")
    what = f"{key}.pattern ({path})"
    if pattern.ndim < 2 or int(pattern.shape[0]) != n:
        got = f"shape {tuple(pattern.shape)}"
        raise InputError(f"{what} has {got} but {key}.x has {n} samples; give one graph pattern per "
                         "sample (leading axis = samples), as neural-tangents' pattern=")
    return pattern, scan(pattern, what)


def load_input_set(name: str, x_path: str, y_path: Optional[str], kernel_fn: Any = None,
                   pattern_path: Optional[str] = None) -> InputSet:
    """Open, check and fingerprint one input set; errors name ``data.<name>.x|y|pattern``."""
    key = f"data.{name}"
    x = open_array(x_path, f"{key}.x")
    what_x = f"{key}.x ({x_path})"
    if x.ndim < 2:
        raise InputError(f"{what_x} has shape {tuple(x.shape)}; inputs are (n_samples, features...) arrays"
                         + ("; use x.reshape(-1, 1) for one feature" if x.ndim == 1 else ""))
    if x.shape[0] == 0 or any(int(s) == 0 for s in x.shape[1:]):
        raise InputError(f"{what_x} is empty (shape {tuple(x.shape)})")
    fx = scan(x, what_x)
    pattern = fp = None
    if pattern_path is not None:
        pattern, fp = _load_pattern(key, pattern_path, int(x.shape[0]))
    if kernel_fn is not None:
        # Let the kernel engine check rank/shape rules (flat, NHWC images, NWC sequences,
        # graph patterns) on two rows.
        extra = {} if pattern is None else {"pattern": (np.asarray(pattern[:2], dtype=np.float64), None)}
        try:
            kernel_fn(np.asarray(x[:2], dtype=np.float64), get="nngp", **extra)
        except InputError as exc:
            what = what_x if pattern is None else f"{what_x} with {key}.pattern ({pattern_path})"
            raise InputError(f"{what} does not fit the kernel: {exc}") from None
    y = fy = None
    if y_path is not None:
        y = open_array(y_path, f"{key}.y")
        what_y = f"{key}.y ({y_path})"
        if y.ndim == 0 or int(y.shape[0]) != int(x.shape[0]):
            got = "a scalar" if y.ndim == 0 else f"{int(y.shape[0])} rows"
            raise InputError(f"{what_y} has {got} but {key}.x has {int(x.shape[0])} samples; "
                             "y needs one row per sample")
        fy = scan(y, what_y, Y_KINDS)
    return InputSet(name, x, y, x_path, y_path, combined_fingerprint(fx, fp), fy, pattern,
                    pattern_path, fp)


def load_inputs(data_config: Any, kernel_fn: Any = None) -> Dict[str, InputSet]:
    """Validate ``data.train`` and optional ``data.test`` of a run config."""
    train_pattern = getattr(data_config.train, "pattern", None)
    if train_pattern is None and kernel_fn is not None and kernel_fn.uses_patterns:
        raise InputError("the network has Aggregate layers but data.train has no pattern; name the graph "
                         "patterns next to x (data.train.pattern: p.npy), one per sample (without "
                         "patterns Aggregate would be the identity)")
    sets = {"train": load_input_set("train", data_config.train.x, data_config.train.y, kernel_fn,
                                    train_pattern)}
    if data_config.test is not None:
        test_pattern = getattr(data_config.test, "pattern", None)
        if (train_pattern is None) != (test_pattern is None):
            have, lack = ("train", "test") if test_pattern is None else ("test", "train")
            raise InputError(f"data.{have}.pattern is given but data.{lack}.pattern is not; a graph "
                             "network needs the patterns of both sets")
        test = load_input_set("test", data_config.test.x, data_config.test.y, kernel_fn, test_pattern)
        train = sets["train"]
        if test.sample_shape != train.sample_shape:
            raise InputError(
                f"data.test.x ({test.x_path}) has per-sample shape {test.sample_shape} but data.train.x "
                f"({train.x_path}) has {train.sample_shape}; train and test need the same features")
        if train.y is not None and test.y is not None and tuple(train.y.shape[1:]) != tuple(test.y.shape[1:]):
            raise InputError(f"data.test.y has per-sample shape {tuple(test.y.shape[1:])} but data.train.y "
                             f"has {tuple(train.y.shape[1:])}")
        sets["test"] = test
    return sets
