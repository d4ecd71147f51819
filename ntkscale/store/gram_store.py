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

Modules of the store: :mod:`~ntkscale.store.layout` (node paths, format
version), :mod:`~ntkscale.store.manifest` (entries, checksums, block tokens,
the block writer), :mod:`~ntkscale.store.meta` (the root attributes as a
frozen ``StoreMeta`` and its ``diff``), :mod:`~ntkscale.store.lock` and
:mod:`~ntkscale.store.maintenance` (status, verify, export).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Tuple, Union

import numpy as np

from .. import stax
from ..choices import KERNELS
from ..data import iter_row_chunks, label_codes
from ..errors import StoreError
from .blocks import Block, Plan, chunk_shape, make_plan
from .labels import LABEL_CLASSES, LABEL_DTYPE, LabelArray
from .location import StoreLocation
from .layout import (ATTR, FORMAT_VERSION, MANIFEST, RESERVED_GROUPS, diag_path, gram_path, input_path,
    transpose)
from .manifest import CHECKSUMS, DEFAULT_CHECKSUM, Manifest, block_token
from .meta import StoreDiff, StoreMeta


Where = Union[os.PathLike, str, StoreLocation]


class GramStore:
    """A Gram store in a directory or at an object-storage URL (:mod:`~ntkscale.store.location`).
    ``GramStore.open(path)`` is read-only; pass ``mode="r+"`` to write into the
    reserved ``solver``/``predict`` groups."""

    def __init__(self, location: Where, group: Any):
        self.location = StoreLocation.parse(location)
        self.path: Union[Path, str] = self.location.path     # a Path, or the URL of a remote store
        self._group = group
        self.meta: Dict[str, Any] = dict(group.attrs[ATTR])
        self.manifest = Manifest(self.location)
        self._chunk_keys: Dict[str, Callable[..., str]] = {}
        self._overlay: Dict[str, Any] = {}      # in-memory reserved groups of a read-only store
        self._nodes: Dict[str, Any] = {}        # opened Gram/diag arrays of a remote store

    # -- opening ------------------------------------------------------------
    @staticmethod
    def read_attributes(path: Where) -> Optional[Dict[str, Any]]:
        """The ``ntkscale`` root attributes stored now, or ``None`` when ``path``
        is not a Gram store (plain JSON read; no zarr open)."""
        try:
            doc = StoreLocation.parse(path).read_json("zarr.json")
        except OSError:
            return None
        return None if not isinstance(doc, dict) else (doc.get("attributes") or {}).get(ATTR)

    @staticmethod
    def is_store(path: Where) -> bool:
        return GramStore.read_attributes(path) is not None

    @classmethod
    def open(cls, path: Where, mode: str = "r") -> "GramStore":
        import zarr  # heavy import, kept out of `import ntkscale` and `ntkscale --help`

        loc = StoreLocation.parse(path)
        p = loc.path
        if loc.read_bytes("zarr.json") is None:
            raise StoreError(f"{p} is not a Gram store (no zarr.json there); make one with `ntkscale gram CONFIG`")
        group = zarr.open_group(loc.zarr_store(read_only=mode == "r"), mode="r" if mode == "r" else "r+",
                                zarr_format=3)
        if ATTR not in group.attrs:
            raise StoreError(f"{p} is a Zarr group but not an ntkscale Gram store (no '{ATTR}' attributes)")
        version = group.attrs[ATTR].get("format_version", 0)
        if version > FORMAT_VERSION:
            raise StoreError(f"{p} was written by a newer ntkscale (store format {version}, this "
                             f"version reads up to {FORMAT_VERSION}); upgrade ntkscale")
        return cls(loc, group)

    @classmethod
    def create(cls, path: Where, meta: Union[Mapping[str, Any], StoreMeta]) -> "GramStore":
        """Write the root attributes of a new store (the caller holds the lock)."""
        import zarr  # heavy import, kept out of `import ntkscale` and `ntkscale --help`

        attrs = meta.to_dict() if isinstance(meta, StoreMeta) else dict(meta)
        loc = StoreLocation.parse(path)
        group = zarr.open_group(loc.zarr_store(), mode="a")
        group.update_attributes({ATTR: attrs})
        group.require_group(MANIFEST)
        return cls(loc, group)

    def set_meta(self, **changes: Any) -> None:
        """Update root attributes (one atomic zarr.json write; caller holds the lock)."""
        self.meta.update(changes)
        self._group.update_attributes({ATTR: self.meta})

    # -- facts --------------------------------------------------------------
    @property
    def store_meta(self) -> StoreMeta:
        """The root attributes as a frozen :class:`StoreMeta`."""
        return StoreMeta.from_dict(self.meta)

    def diff(self, wanted: Union[StoreMeta, Mapping[str, Any]], *, recompute_test: bool = False,
             replace_y: bool = False) -> StoreDiff:
        """:meth:`StoreMeta.diff` of this store (messages name its path)."""
        return self.store_meta.diff(wanted, recompute_test=recompute_test, replace_y=replace_y,
                                    path=self.path)

    @property
    def read_only(self) -> bool:
        """Opened with ``mode="r"``."""
        return bool(self._group.read_only)

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
    def spec_json(self) -> str:
        """The canonical JSON text of the store's spec: the one form a block task gets."""
        return stax.spec_to_json(self.spec)

    @property
    def spec_hash(self) -> str:
        return self.meta["spec_hash"]

    @property
    def checksum(self) -> str:
        """Name of the block checksum algorithm (see ``CHECKSUMS``)."""
        return self.meta.get("checksum", DEFAULT_CHECKSUM)

    def kernel_fn(self) -> Any:
        return stax.from_spec(self.spec)[2]

    @property
    def has_patterns(self) -> bool:   # graph patterns with the inputs (data.<set>.pattern)
        return "pattern" in (self.fingerprint("train") or {})

    def plan(self) -> Plan:
        return make_plan(self.n_train, self.n_test, self.block_size)

    def fingerprint(self, which: str) -> Optional[Dict[str, Optional[str]]]:
        return (self.meta.get("fingerprints") or {}).get(which)

    def checksum_fn(self) -> Callable[[np.ndarray], str]:
        return CHECKSUMS[self.checksum]

    # -- arrays -------------------------------------------------------------
    def _kind(self, kind: Optional[str]) -> str:
        if kind is None:
            if len(self.kinds) > 1:
                raise StoreError(f"{self.path} holds {' and '.join(self.kinds)}; say which kernel "
                                 f"(kind={' or '.join(repr(k) for k in KERNELS)})")
            return self.kinds[0]
        if kind not in self.kinds:
            raise StoreError(f"{self.path} holds {', '.join(self.kinds)}, not {kind!r}")
        return kind

    def _node(self, path: str) -> Any:
        node = self._nodes.get(path)
        if node is None:
            try:
                node = self._group[path]
            except KeyError:
                raise StoreError(f"{self.path} has no {path!r} yet") from None
            if self.location.remote and path.startswith(("gram/", "diag/")):
                self._nodes[path] = node   # metadata read once: each read is a request on object storage
        return LabelArray(node) if LABEL_CLASSES in node.attrs else node

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
        import dask.array as da  # heavy import, kept out of `import ntkscale` and `ntkscale --help`

        return da.from_zarr(self.array(part, kind))

    def diag_array(self, which: str, kind: Optional[str] = None) -> Any:
        return self._node(diag_path(which, self._kind(kind)))

    def diag(self, which: str, kind: Optional[str] = None) -> np.ndarray:
        """k(x_i, x_i) for every row of ``which`` (``train``/``test``) as NumPy."""
        return self.diag_array(which, kind)[...]

    def inputs(self, which: str) -> Any:
        return self._node(input_path(which, "x"))

    def y(self, which: str) -> Optional[Any]:
        """The stored labels of ``which``; string labels come back as strings
        (:class:`LabelArray`), numbers as the Zarr array."""
        try:
            return self._node(input_path(which, "y"))
        except StoreError:
            return None

    def group(self, name: str) -> Any:
        """A reserved group (``solver``, ``predict``) for later stages' artefacts;
        created on first use when the store is open for writing."""
        if name not in RESERVED_GROUPS:
            raise ValueError(f"reserved groups are {', '.join(RESERVED_GROUPS)}; got {name!r}")
        if name in self._overlay:
            return self._overlay[name]
        if self._group.read_only:
            return self._node(name)
        return self._group.require_group(name)

    def keep_in_memory(self, name: str) -> Any:
        """A fresh in-memory group that stands in for the reserved group ``name`` from
        now on (:meth:`group`): a store on a read-only filesystem keeps this process's
        records (e.g. predictions for ``predict -o``) there instead of on disk."""
        import zarr  # heavy import, kept out of `import ntkscale` and `ntkscale --help`

        if name not in RESERVED_GROUPS:
            raise ValueError(f"reserved groups are {', '.join(RESERVED_GROUPS)}; got {name!r}")
        self._overlay[name] = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
        return self._overlay[name]

    # -- writing (engine side) ----------------------------------------------
    def create_part_arrays(self, part: str, *, only_missing: bool = False) -> None:
        """(Re)create the empty Gram and diagonal arrays of ``train`` or ``test``;
        ``only_missing`` creates just those that do not exist (never erases blocks)."""
        n, m, b = self.n_train, self.n_test, self.block_size
        rows = n if part == "train" else m
        self._nodes.clear()
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
        complete). Call under the lock. Returns how many were removed. Object
        storage has none: an object appears whole when its PUT completes, or not at all."""
        removed = 0
        if self.location.remote:
            return 0
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

    def write_inputs(self, which: str, x: Any, y: Optional[Any], pattern: Optional[Any] = None) -> None:
        """Copy an input set into ``inputs/<which>/`` (streamed, B rows a chunk); ``pattern``:
        the graph patterns of the rows (``stax.Aggregate``), sliced by the block tasks."""
        for name, arr in (("x", x), ("y", y), ("pattern", pattern)):
            if arr is None:
                continue
            shape = tuple(int(s) for s in arr.shape)
            dims = ["sample"] + [f"{name}_axis{k}" for k in range(1, len(shape))]
            strings = np.dtype(arr.dtype).kind in "US"
            if strings:   # Zarr 3 has no stable spec for fixed-length strings: codes + class names
                codes, classes = label_codes(arr[...])
                arr = codes
            z = self._group.create_array(input_path(which, name), shape=shape, dtype=arr.dtype,
                                         chunks=(max(1, min(self.block_size, shape[0])),) + shape[1:],
                                         compressors=None,  # read by every block task: no decode cost
                                         overwrite=True, dimension_names=dims)
            for start, chunk in iter_row_chunks(arr):
                z[start:start + len(chunk)] = chunk
            if strings:
                z.attrs.update({LABEL_CLASSES: classes.tolist(), LABEL_DTYPE: classes.dtype.str})

    def drop_part(self, which: str) -> None:
        """Delete a part's Gram/diag/inputs and manifest entries (``--recompute-test``).
        Entries go first, so an interrupted drop leaves blocks missing, never stale."""
        prefixes = (f"{which}-", f"diag-{which}-", f"inputs-{which}")
        self._nodes.clear()
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

    def chunk_key(self, block: Block, kind: str, mirror: bool = False) -> str:
        """The store-relative key of a block's chunk of ``kind`` (its mirror chunk with ``mirror``)."""
        path = diag_path(block.row_set, kind) if block.is_diag else gram_path(block.part, kind)
        encode = self._chunk_keys.get(path)
        if encode is None:
            encode = self._chunk_keys[path] = self._node(path).metadata.encode_chunk_key
        coords = (block.i,) if block.is_diag else (block.j, block.i) if mirror else (block.i, block.j)
        return f"{path}/{encode(coords)}"

    def chunk_file(self, block: Block, kind: str, mirror: bool = False) -> Path:
        """The file holding a block's chunk (a local store; see :meth:`chunk_key`)."""
        return Path(self.location.key(self.chunk_key(block, kind, mirror)))

    def chunk_sizes(self) -> Optional[Dict[str, int]]:
        """``{key: bytes}`` of every Gram and diagonal chunk of a remote store (two
        listings instead of a request per chunk); ``None`` for a local store."""
        if not self.location.remote:
            return None
        return {f"{top}/{rel}": info["size"] for top in ("gram", "diag")
                for rel, info in self.location.objects(top).items()}

    def chunk_problem(self, block: Block, sizes: Optional[Dict[str, int]] = None) -> Optional[str]:
        """``None`` when every chunk of ``block`` is stored with its full size, else
        what is wrong. Cheap (one ``stat`` a chunk, or a lookup in ``sizes`` from
        :meth:`chunk_sizes`): it finds deleted and truncated chunks, not altered
        bytes (that takes the checksums, :meth:`check_block`)."""
        part = f"diag-{block.row_set}" if block.is_diag else block.part
        want = int(np.prod(chunk_shape(part, self.n_train, self.n_test, self.block_size))) * \
            np.dtype(self.dtype).itemsize
        for kind in self.kinds:
            for mirror in ((False, True) if block.mirrored else (False,)):
                where = f"{kind}{' mirror' if mirror else ''} chunk"
                try:
                    key = self.chunk_key(block, kind, mirror)
                except StoreError:
                    return f"{kind} array is missing"
                size = sizes.get(key) if sizes is not None else self.location.size(key)
                if size is None:
                    return f"{where} file is missing"
                if size != want:
                    return f"{where} file has {size} bytes, not {want} (truncated or replaced)"
        return None

    def damaged_chunks(self, blocks: Iterable[Block]) -> Dict[str, str]:
        """``{key: problem}`` of :meth:`chunk_problem` for ``blocks`` (finished ones)."""
        out = {}
        sizes = self.chunk_sizes()
        for block in blocks:
            problem = self.chunk_problem(block, sizes)
            if problem is not None:
                out[block.key] = problem
        return out

    def read_verified(self, block: Block, kind: str, record: Optional[Dict[str, Any]],
                      mirror: bool = False) -> Tuple[Optional[np.ndarray], Optional[str]]:
        """``(values, None)`` when the chunk of ``kind`` (or its mirror) matches the
        block's manifest checksum, else ``(None, what is wrong)``."""
        if record is None:
            return None, "missing"
        if record.get("token") != block_token(self.meta, block):
            return None, "its manifest entry belongs to other inputs or settings (stale token)"
        checksums = record.get("checksums")
        if not isinstance(checksums, dict):
            return None, f"its manifest entry has no checksums mapping (got {type(checksums).__name__})"
        want = checksums.get(kind)
        if want is None:
            return None, f"no {kind} checksum in its manifest entry"
        where = f"{kind}{' mirror' if mirror else ''}"
        try:
            values = self.read_block(block, kind, mirror)
        except Exception as exc:  # a truncated chunk fails to decode
            return None, f"{where} chunk unreadable ({type(exc).__name__}: {exc})"
        if self.checksum_fn()(values) != want:
            return None, f"{where} chunk does not match its checksum"
        return values, None

    def check_block(self, block: Block, record: Optional[Dict[str, Any]]) -> Optional[str]:
        """``None`` when the block is finished and intact, else what is wrong."""
        for kind in self.kinds:
            for mirror in ((False, True) if block.mirrored else (False,)):
                _, problem = self.read_verified(block, kind, record, mirror)
                if problem is not None:
                    return problem
        return None
