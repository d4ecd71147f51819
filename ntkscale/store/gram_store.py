"""The Gram store: one Zarr v3 directory that holds a run's inputs and kernels.

Layout (``K`` is each stored kernel, ``nngp`` and/or ``ntk``; n train rows,
m test rows, B the block size)::

    run.zarr/
      zarr.json                 attributes["ntkscale"]: spec, spec_hash, get, dtype,
                                block_size, n_train, n_test, fingerprints, sources, ...
      inputs/train/x, y         copies of the inputs (x: (n, ...), y: (n, ...)),
      inputs/test/x, y          chunked by B rows; enough to recompute any block
      gram/train/K              (n, n) symmetric, chunks (B, B), float32|float64
      gram/test/K               (m, n) = K(test, train), chunks (B, B)
      diag/train/K, diag/test/K (n,), (m,): k(x_i, x_i)
      manifest/<block>          one tiny Zarr group per finished block; its
                                attributes hold the block's checksums
      lock/                     the run lock (see ntkscale.store.lock)
      solver/, predict/         reserved for solvers and predictions: the Gram
                                engine never writes, clears or deletes them

Every Gram/diag array is plain Zarr v3 (uncompressed, NaN fill for blocks not
computed yet): ``dask.array.from_zarr("run.zarr", component="gram/train/ntk")``
opens it. A chunk is exactly one block.

Finished means *in the manifest*. A block task writes its chunk(s) (zarr's
LocalStore writes each chunk to a temporary file and renames it into place),
computes the checksum of the values, and only then writes its manifest entry.
A block killed part-way has no entry and is recomputed by the next run; a
chunk altered on disk later no longer matches its checksum (``verify``).
Replacing a finished block (repair) removes its entry first.

For solvers::

    store = GramStore.open("run.zarr")
    K = store.train_array("ntk")            # zarr.Array (n, n)
    Kx = store.test_array("ntk")            # zarr.Array (m, n)
    d = store.diag("test", "ntk")           # numpy (m,)
    X, y = store.inputs("train"), store.y("train")
    ckpt = GramStore.open("run.zarr", mode="r+").group("solver")   # your own artefacts
"""

from __future__ import annotations

import datetime
import json
import os
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple

import numpy as np

from ..errors import NtkscaleError, SpecMismatchError
from ..gram.plan import Block, Plan, chunk_shape, make_plan

FORMAT_VERSION = 1
ATTR = "ntkscale"
KINDS = ("nngp", "ntk")
#: Groups a store reserves for later stages; the Gram engine leaves them alone.
RESERVED_GROUPS = ("solver", "predict")
MANIFEST = "manifest"


class StoreError(NtkscaleError):
    """A path is not a Gram store, or a store is incomplete for what was asked."""


# ----------------------------------------------------------------------------- checksums


def _crc32(a: np.ndarray) -> str:
    return "crc32:%08x" % zlib.crc32(memoryview(np.ascontiguousarray(a)).cast("B"))


def _sha256(a: np.ndarray) -> str:
    import hashlib  # noqa: PLC0415

    return "sha256:" + hashlib.sha256(memoryview(np.ascontiguousarray(a)).cast("B")).hexdigest()


#: Checksum of a block's values (C order, the stored dtype). CRC-32 is the
#: default: it catches truncation and altered bytes (burst errors up to 32 bits
#: always, others with probability 1 - 2^-32) at ~4 GB/s, so integrity costs
#: almost nothing next to the kernel. The algorithm is recorded in the store.
CHECKSUMS: Dict[str, Callable[[np.ndarray], str]] = {"crc32": _crc32, "sha256": _sha256}
DEFAULT_CHECKSUM = "crc32"


def gram_path(part: str, kind: str) -> str:
    return f"gram/{part}/{kind}"


def diag_path(which: str, kind: str) -> str:
    return f"diag/{which}/{kind}"


def input_path(which: str, name: str) -> str:
    return f"inputs/{which}/{name}"


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- manifest


class Manifest:
    """Finished blocks: ``manifest/<key>`` Zarr groups whose attributes are records.

    Entries are written through zarr (one atomic ``zarr.json`` put each) by
    the worker that computed the block; they are listed and read with
    ``os.scandir``/``json`` because a store holds 10^4-10^5 of them and
    zarr's member listing opens each one.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.dir = self.root / MANIFEST

    def keys(self) -> Set[str]:
        try:
            with os.scandir(self.dir) as it:
                return {e.name for e in it if e.is_dir() and os.path.isfile(os.path.join(e.path, "zarr.json"))}
        except FileNotFoundError:
            return set()

    def get(self, key: str) -> Optional[Dict[str, Any]]:
        try:
            with open(self.dir / key / "zarr.json", "rb") as f:
                return json.load(f).get("attributes") or {}
        except (FileNotFoundError, ValueError):
            return None

    def records(self, keys: Optional[Iterable[str]] = None) -> Dict[str, Dict[str, Any]]:
        out = {}
        for key in (self.keys() if keys is None else keys):
            rec = self.get(key)
            if rec is not None:
                out[key] = rec
        return out

    def put(self, key: str, record: Dict[str, Any]) -> None:
        import zarr  # noqa: PLC0415

        zarr.create_group(store=str(self.root), path=f"{MANIFEST}/{key}", attributes=record, overwrite=True)

    def delete(self, keys: Iterable[str]) -> None:
        import zarr  # noqa: PLC0415

        group = zarr.open_group(str(self.root), path=MANIFEST, mode="r+")
        for key in keys:
            if (self.dir / key).exists():
                del group[key]


# ----------------------------------------------------------------------------- the store


class GramStore:
    """A Gram store on disk. ``GramStore.open(path)`` is read-only; pass
    ``mode="r+"`` to write into the reserved ``solver``/``predict`` groups."""

    def __init__(self, path: Path, group: Any):
        self.path = Path(path)
        self._group = group
        self.meta: Dict[str, Any] = dict(group.attrs[ATTR])
        self.manifest = Manifest(self.path)

    # -- opening ------------------------------------------------------------
    @staticmethod
    def is_store(path: os.PathLike | str) -> bool:
        try:
            doc = json.loads((Path(path) / "zarr.json").read_text())
        except (OSError, ValueError):
            return False
        return ATTR in (doc.get("attributes") or {})

    @classmethod
    def open(cls, path: os.PathLike | str, mode: str = "r") -> "GramStore":
        import zarr  # noqa: PLC0415

        p = Path(path)
        if not (p / "zarr.json").is_file():
            raise StoreError(f"{p} is not a Gram store (no zarr.json there); make one with `ntkscale gram CONFIG`")
        group = zarr.open_group(str(p), mode="r" if mode == "r" else "r+")
        if ATTR not in group.attrs:
            raise StoreError(f"{p} is a Zarr group but not an ntkscale Gram store (no '{ATTR}' attributes)")
        version = group.attrs[ATTR].get("format_version", 0)
        if version > FORMAT_VERSION:
            raise StoreError(f"{p} was written by a newer ntkscale (store format {version}, this "
                             f"version reads up to {FORMAT_VERSION}); upgrade ntkscale")
        return cls(p, group)

    @classmethod
    def create(cls, path: os.PathLike | str, meta: Dict[str, Any]) -> "GramStore":
        """Write the root attributes of a new store (the caller holds the lock)."""
        import zarr  # noqa: PLC0415

        group = zarr.open_group(str(path), mode="a")
        group.update_attributes({ATTR: meta})
        group.require_group(MANIFEST)
        return cls(Path(path), group)

    def set_meta(self, **changes: Any) -> None:
        """Update root attributes (one atomic zarr.json write; caller holds the lock)."""
        self.meta.update(changes)
        self._group.update_attributes({ATTR: self.meta})

    def refresh(self) -> "GramStore":
        return GramStore.open(self.path, "r" if self._group.read_only else "r+")

    # -- facts --------------------------------------------------------------
    @property
    def kinds(self) -> Tuple[str, ...]:
        return tuple(self.meta["get"])

    @property
    def dtype(self) -> str:
        return self.meta["dtype"]

    @property
    def block_size(self) -> int:
        return int(self.meta["block_size"])

    @property
    def n_train(self) -> int:
        return int(self.meta["n_train"])

    @property
    def n_test(self) -> int:
        return int(self.meta.get("n_test") or 0)

    @property
    def spec(self) -> list:
        return self.meta["spec"]

    @property
    def spec_hash(self) -> str:
        return self.meta["spec_hash"]

    def kernel_fn(self) -> Any:
        from .. import stax  # noqa: PLC0415

        return stax.from_spec(self.spec)[2]

    def plan(self) -> Plan:
        return make_plan(self.n_train, self.n_test, self.block_size)

    def fingerprint(self, which: str) -> Optional[Dict[str, Optional[str]]]:
        return (self.meta.get("fingerprints") or {}).get(which)

    def checksum_fn(self) -> Callable[[np.ndarray], str]:
        return CHECKSUMS[self.meta.get("checksum", DEFAULT_CHECKSUM)]

    # -- arrays -------------------------------------------------------------
    def _kind(self, kind: Optional[str]) -> str:
        if kind is None:
            if len(self.kinds) > 1:
                raise StoreError(f"{self.path} holds {' and '.join(self.kinds)}; say which kernel (kind='nngp' or 'ntk')")
            return self.kinds[0]
        if kind not in self.kinds:
            raise StoreError(f"{self.path} holds {', '.join(self.kinds)}, not {kind!r}")
        return kind

    def _node(self, path: str) -> Any:
        try:
            return self._group[path]
        except KeyError:
            raise StoreError(f"{self.path} has no {path!r} yet") from None

    def array(self, part: str, kind: Optional[str] = None) -> Any:
        """``zarr.Array`` of ``gram/<part>/<kind>``, part ``train`` or ``test``."""
        if part not in ("train", "test"):
            raise ValueError(f"part must be 'train' or 'test', got {part!r}")
        return self._node(gram_path(part, self._kind(kind)))

    def train_array(self, kind: Optional[str] = None) -> Any:
        return self.array("train", kind)

    def test_array(self, kind: Optional[str] = None) -> Any:
        return self.array("test", kind)

    def dask_array(self, part: str, kind: Optional[str] = None) -> Any:
        import dask.array as da  # noqa: PLC0415

        return da.from_zarr(self.array(part, kind))

    def diag_array(self, which: str, kind: Optional[str] = None) -> Any:
        return self._node(diag_path(which, self._kind(kind)))

    def diag(self, which: str, kind: Optional[str] = None) -> np.ndarray:
        """k(x_i, x_i) for every row of ``which`` (``train``/``test``) as NumPy."""
        return self.diag_array(which, kind)[...]

    def inputs(self, which: str) -> Any:
        return self._node(input_path(which, "x"))

    def y(self, which: str) -> Optional[Any]:
        try:
            return self._group[input_path(which, "y")]
        except KeyError:
            return None

    def group(self, name: str) -> Any:
        """A reserved group (``solver``, ``predict``) for later stages' artefacts;
        created on first use when the store is open for writing."""
        if name not in RESERVED_GROUPS:
            raise ValueError(f"reserved groups are {', '.join(RESERVED_GROUPS)}; got {name!r}")
        if self._group.read_only:
            return self._node(name)
        return self._group.require_group(name)

    # -- writing (engine side) ----------------------------------------------
    def create_part_arrays(self, part: str, *, only_missing: bool = False) -> None:
        """(Re)create the empty Gram and diagonal arrays of ``train`` or ``test``;
        ``only_missing`` creates just those that do not exist (never erases blocks)."""
        n, m, b = self.n_train, self.n_test, self.block_size
        rows = n if part == "train" else m
        for kind in self.kinds:
            for path, shape, chunks, dims in (
                    (gram_path(part, kind), (rows, n), chunk_shape(part, n, m, b), [f"{part}_row", "train_col"]),
                    (diag_path(part, kind), (rows,), chunk_shape(f"diag-{part}", n, m, b), [f"{part}_row"])):
                if only_missing and path in self._group:
                    continue
                self._group.create_array(path, shape=shape, chunks=chunks, dtype=self.dtype,
                                         fill_value=np.nan, compressors=None, overwrite=True,
                                         dimension_names=dims)

    def ensure_part_arrays(self, part: str) -> None:
        """Create a part's missing arrays (a run killed while creating the store)."""
        self.create_part_arrays(part, only_missing=True)

    def remove_partial_writes(self) -> int:
        """Delete the temporary files of chunk writes that a killed run left
        behind (``*.partial``; zarr renames a chunk into place only when it is
        complete). Call under the lock. Returns how many were removed."""
        removed = 0
        for top in ("gram", "diag", "inputs"):
            for dirpath, _, files in os.walk(self.path / top):
                for name in files:
                    if name.endswith(".partial"):
                        try:
                            os.remove(os.path.join(dirpath, name))
                            removed += 1
                        except FileNotFoundError:
                            pass
        return removed

    def write_inputs(self, which: str, x: Any, y: Optional[Any]) -> None:
        """Copy an input set into ``inputs/<which>/`` (streamed, B rows a chunk)."""
        from ..data import iter_row_chunks  # noqa: PLC0415

        for name, arr in (("x", x), ("y", y)):
            if arr is None:
                continue
            shape = tuple(int(s) for s in arr.shape)
            dims = ["sample"] + [f"{name}_axis{k}" for k in range(1, len(shape))]
            z = self._group.create_array(input_path(which, name), shape=shape, dtype=arr.dtype,
                                         chunks=(max(1, min(self.block_size, shape[0])),) + shape[1:],
                                         compressors=None,  # read by every block task: no decode cost
                                         overwrite=True, dimension_names=dims)
            for start, chunk in iter_row_chunks(arr):
                z[start:start + len(chunk)] = chunk

    def drop_part(self, which: str) -> None:
        """Delete a part's Gram/diag/inputs and manifest entries (``--recompute-test``).
        Entries go first, so an interrupted drop leaves blocks missing, never stale."""
        prefixes = (f"{which}-", f"diag-{which}-", f"inputs-{which}")
        self.manifest.delete(k for k in sorted(self.manifest.keys()) if k.startswith(prefixes))
        for path in (f"gram/{which}", f"diag/{which}", f"inputs/{which}"):
            try:
                del self._group[path]
            except KeyError:
                pass

    # -- checking -----------------------------------------------------------
    def read_block(self, block: Block, kind: str, mirror: bool = False) -> np.ndarray:
        (r0, r1), (c0, c1) = block.rows, block.cols
        if block.is_diag:
            return self.diag_array(block.row_set, kind)[r0:r1]
        arr = self.array(block.part, kind)
        return transpose(arr[c0:c1, r0:r1]) if mirror else arr[r0:r1, c0:c1]

    def check_block(self, block: Block, record: Optional[Dict[str, Any]]) -> Optional[str]:
        """``None`` when the block is finished and intact, else what is wrong."""
        if record is None:
            return "missing"
        if record.get("token") != block_token(self.meta, block):
            return "its manifest entry belongs to other inputs or settings (stale token)"
        sums = record.get("checksums") or {}
        fn = self.checksum_fn()
        for kind in self.kinds:
            if kind not in sums:
                return f"no {kind} checksum in its manifest entry"
            for mirror in ((False, True) if block.mirrored else (False,)):
                where = f"{kind}{' mirror' if mirror else ''}"
                try:
                    values = self.read_block(block, kind, mirror)
                except Exception as exc:  # a truncated chunk fails to decode
                    return f"{where} chunk unreadable ({type(exc).__name__}: {exc})"
                if fn(values) != sums[kind]:
                    return f"{where} chunk does not match its checksum"
        return None


#: Every block is written whole, so zarr's "is this chunk all fill value?" scan
#: (a full pass over 64 MiB per chunk, slower than the write itself) is skipped.
WRITE_CONFIG = {"write_empty_chunks": True}


def transpose(a: np.ndarray, tile: int = 128) -> np.ndarray:
    """C-contiguous ``a.T``, copied tile by tile.

    Hand-written because ``np.ascontiguousarray(a.T)`` walks one side with a
    stride of a whole row and is about twice as slow on a 4096² block, and zarr
    given the strided view ``a.T`` is slower still (measured: 1.3 s vs 0.12 s).
    """
    n, m = a.shape
    out = np.empty((m, n), dtype=a.dtype)
    for i in range(0, n, tile):
        for j in range(0, m, tile):
            out[j:j + tile, i:i + tile] = a[i:i + tile, j:j + tile].T
    return out


def write_block(root: str, block: Block, values: Dict[str, np.ndarray], record: Dict[str, Any],
                checksum: str = DEFAULT_CHECKSUM) -> Dict[str, Any]:
    """Worker side: write a block's chunk(s), checksum them, then its manifest entry."""
    import zarr  # noqa: PLC0415

    (r0, r1), (c0, c1) = block.rows, block.cols
    for kind, a in values.items():
        if block.is_diag:
            zarr.open_array(store=root, path=diag_path(block.row_set, kind), mode="r+",
                            config=WRITE_CONFIG)[r0:r1] = a
            continue
        arr = zarr.open_array(store=root, path=gram_path(block.part, kind), mode="r+", config=WRITE_CONFIG)
        arr[r0:r1, c0:c1] = a
        if block.mirrored:
            arr[c0:c1, r0:r1] = transpose(a)
    record = dict(record, checksums={kind: CHECKSUMS[checksum](a) for kind, a in values.items()})
    Manifest(Path(root)).put(block.key, record)
    return record


def block_token(meta: Dict[str, Any], block: Block) -> str:
    """Identity of a block's content: spec, dtype, block size, the fingerprints
    of the inputs it reads, and its index. Resume trusts a manifest entry only
    when its token matches. A plain SHA-256 of canonical JSON (not
    ``dask.base.tokenize``, whose output may change between Dask versions,
    which would silently invalidate old stores)."""
    fps = meta.get("fingerprints") or {}
    sets = ("train", "test") if block.row_set == "test" else ("train",)
    ident = [FORMAT_VERSION, meta["spec_hash"], meta["dtype"], int(meta["block_size"]),
             [(fps.get(s) or {}).get("x") for s in sets], block.key]
    import hashlib  # noqa: PLC0415

    return hashlib.sha256(json.dumps(ident, separators=(",", ":")).encode()).hexdigest()[:32]


# ----------------------------------------------------------------------------- compatibility


def _layer_diff(want: list, have: list) -> str:
    for i, (a, b) in enumerate(zip(want, have, strict=False)):
        if a != b:
            return f"layer {i} is {json.dumps(a)} in the config but {json.dumps(b)} in the store"
    return f"the config has {len(want)} layers, the store {len(have)}"


def check_compatible(store: GramStore, want: Dict[str, Any], *, recompute_test: bool = False,
                     replace_y: bool = False) -> List[str]:
    """Compare a store with what a run wants; raise :class:`SpecMismatchError`
    naming what differs, or return the actions the run may take
    (``add-test``, ``drop-test``, ``replace-y-train``, ``replace-y-test``).
    Read-only: nothing is changed here."""
    meta, where = store.meta, f"store {store.path}"
    unchanged = "; the store was not changed"
    if want["spec_hash"] != meta["spec_hash"]:
        raise SpecMismatchError(
            f"{where} was made with a different kernel spec (kernel.layers): "
            f"{_layer_diff(want['spec'], meta['spec'])}; spec hash {want['spec_hash'][:12]} vs "
            f"{meta['spec_hash'][:12]}. Use another store path{unchanged}")
    if want["dtype"] != meta["dtype"]:
        raise SpecMismatchError(f"{where} holds dtype {meta['dtype']} but the config asks for "
                                f"{want['dtype']} (dtype); use the same dtype or another store{unchanged}")
    missing = [k for k in want["get"] if k not in meta["get"]]
    if missing:
        raise SpecMismatchError(f"{where} holds {', '.join(meta['get'])} but the config also asks for "
                                f"{', '.join(missing)} (kernel.get); use another store{unchanged}")
    actions: List[str] = []
    have_fp, want_fp = meta.get("fingerprints") or {}, want["fingerprints"]
    for which in ("train", "test"):
        w, h = want_fp.get(which), have_fp.get(which)
        if w is None or h is None:
            if which == "test" and w is not None:
                actions.append("add-test")
            continue
        if w["x"] != h["x"]:
            if which == "train":
                raise SpecMismatchError(
                    f"{where} was made from different train inputs (data.train.x): fingerprint "
                    f"{w['x'][:19]} vs {h['x'][:19]} in the store; the train Gram depends on them, "
                    f"so use another store{unchanged}")
            if not recompute_test:
                raise SpecMismatchError(
                    f"{where} was made with a different test set (data.test.x): fingerprint "
                    f"{w['x'][:19]} vs {h['x'][:19]}; the train Gram is still valid: rerun with "
                    f"--recompute-test (Python: recompute_test=True) to recompute only the test part{unchanged}")
            actions.append("drop-test")
            continue
        if w.get("y") != h.get("y"):
            if not replace_y:
                raise SpecMismatchError(
                    f"{where} holds different labels (data.{which}.y); the Gram does not depend on "
                    f"them: rerun with --replace-y (Python: replace_y=True) to store the new ones{unchanged}")
            actions.append(f"replace-y-{which}")
    return actions
