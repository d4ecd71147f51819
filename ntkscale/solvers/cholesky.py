"""Tiled out-of-core Cholesky on Zarr tiles, as a Dask graph; tiled triangular solves.

``K + ridge I = L L^T`` is computed tile by tile (``t x t`` tiles, the last
ones ragged) in left-looking order (Cholesky-Crout): the task for tile
``(i, j)``, ``i >= j``, reads ``A[i, j]`` and the factored tiles ``L[i, k]``,
``L[j, k]`` for ``k < j`` one pair at a time, applies the SYRK/GEMM updates,
then POTRF (``i == j``) or TRSM (``i > j``, with ``L[j, j]``), and writes
``L[i, j]`` once. A task holds at most four tiles, whatever ``n`` is, so a
worker's memory is bounded by the tile size; a right-looking schedule (what
``dask.array.linalg.cholesky`` builds) would rewrite every trailing tile at
every step instead.

Why not ``dask.array.linalg.cholesky``: it is the same tile algorithm but its
intermediate tiles live in worker memory (or spill) and its graph restarts
from scratch after a kill; here each finished tile is a Zarr chunk and a bit
in ``done``, so a killed factorisation resumes with the tiles already done,
and a failed POTRF can be retried with jitter without redoing the tiles
before it. ``benchmarks/bench_cholesky.py`` compares the two.

Layout of the factor group (``<group>/<name>``)::

    L        (n, n) lower-triangular factor, chunks (t, t), uncompressed;
             tiles above the diagonal are never written (fill value 0)
    done     (T, T) uint8, chunks (1, 1): 1 once tile (i, j) is written
    jitter   (T,) float64: jitter on the diagonal of tile (j, j) (see below)
    attrs    n, tile, ridge, dtype, token (identity of the source matrix)

Jitter (linear_operator style, see :mod:`ntkscale.solvers.dense`): when
POTRF of diagonal tile ``j`` fails, it is retried with ``jitter_steps`` x
the mean diagonal added to the diagonal of that tile *and every later
diagonal tile* (tiles before it are unaffected, so they are kept). The factor
is then that of ``K + ridge I + diag(e)`` with ``e`` zero before the failing
tile's first row and ``jitter`` after; the solve reports it with a
:class:`~ntkscale.errors.NumericalWarning`. Past the last step a
:class:`~ntkscale.errors.NotPSDError` names the failing tile.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import threading
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import scipy.linalg
import scipy.linalg.blas
from threadpoolctl import threadpool_limits

from ..errors import InputError, NumericalWarning
from .dense import JITTER_STEPS, cholesky_with_jitter
from .validate import check_rhs, check_ridges

#: Upper bound of the default tile size (LAPACK stays on small, safe calls).
MAX_TILE = 4096


def choose_tile(n: int, itemsize: int = 8, memory_limit: Optional[float] = None,
                chunk: Optional[int] = None) -> int:
    """Tile size from a per-worker memory budget: a task holds about five
    tiles (input, two factor tiles, product temporaries, read buffers), and
    we keep them within half of ``memory_limit`` (default 2 GiB). Rounded to a
    multiple of the source's chunk rows (so a tile decodes whole chunks) or of
    256, at most :data:`MAX_TILE`, at most ``n``."""
    budget = 2 * 2**30 if memory_limit is None else float(memory_limit)
    t = int(math.sqrt(budget / 2 / (5 * itemsize)))
    t = min(t, MAX_TILE)
    if chunk and chunk < n:
        t = max(chunk, (t // chunk) * chunk)
    else:
        t = max(256, (t // 256) * 256)
    return int(min(t, n))


def _blas(name: str, dtype: np.dtype):
    return scipy.linalg.blas.get_blas_funcs(name, dtype=dtype)


def _bounds(i: int, t: int, n: int) -> Tuple[int, int]:
    return i * t, min(n, (i + 1) * t)


def _read(src: Any, r: Tuple[int, int], c: Tuple[int, int], dtype: np.dtype) -> np.ndarray:
    """A C-ordered private copy of one tile (Zarr already returns a fresh array)."""
    block = src[r[0]:r[1], c[0]:c[1]]
    fresh = not isinstance(src, np.ndarray) and isinstance(block, np.ndarray) and block.flags.owndata
    return np.ascontiguousarray(block, dtype=dtype) if fresh else np.array(block, dtype=dtype, order="C")


def _tile_task(src: Any, L: Any, done: Any, jit: Any, i: int, j: int, n: int, t: int, ridge: float,
               scale: float, steps: Tuple[float, ...], prev_jitter: Any, *deps: Any) -> float:
    """Compute and write factor tile ``(i, j)``; returns the diagonal jitter
    in use after it (POTRF) or 0. ``deps`` only order the graph.

    Tiles are C-ordered as Zarr returns them; BLAS is called on their
    F-ordered transposes (``a.T``), so no layout copies are made:
    ``a -= L_ik L_jk^T`` is ``a.T -= L_jk L_ik^T``."""
    dtype = np.dtype(L.dtype)
    ri, rj = _bounds(i, t, n), _bounds(j, t, n)
    a = _read(src, ri, rj, dtype)
    at = a.T  # F-ordered view of the same memory
    gemm, syrk = _blas("gemm", dtype), _blas("syrk", dtype)
    for k in range(j):  # left-looking updates: SYRK on the diagonal, GEMM below it
        rk = _bounds(k, t, n)
        lik = _read(L, ri, rk, dtype)
        if i == j:  # upper triangle of a.T = lower triangle of a
            at = syrk(alpha=-1.0, a=lik.T, trans=1, beta=1.0, c=at, lower=0, overwrite_c=1)
        else:
            ljk = _read(L, rj, rk, dtype)
            at = gemm(alpha=-1.0, a=ljk.T, b=lik.T, trans_a=1, beta=1.0, c=at, overwrite_c=1)
    a = at.T
    if i == j:
        if ridge:
            a[np.diag_indices_from(a)] += ridge
        # jitter in use since an earlier diagonal tile failed (0 at first), grown if needed;
        # POTRF reads only the lower triangle (the one SYRK updated)
        lj, used = cholesky_with_jitter(a, scale=scale, start_jitter=float(prev_jitter or 0.0),
                                        jitter_steps=steps,
                                        what=f"diagonal tile ({j}, {j}) (rows {rj[0]}..{rj[1] - 1}) of the "
                                             "Gram + ridge")
        L[ri[0]:ri[1], rj[0]:rj[1]] = lj
        jit[j] = used
        done[i, j] = 1
        return used
    ljj = _read(L, rj, rj, dtype)
    # TRSM: L_ij = A_ij L_jj^{-T}  <=>  L_jj (L_ij^T) = A_ij^T, solved in place on a.T
    lij_t = _blas("trsm", dtype)(1.0, ljj.T, a.T, side=0, lower=0, trans_a=1, overwrite_b=1)
    L[ri[0]:ri[1], rj[0]:rj[1]] = lij_t.T
    done[i, j] = 1
    return 0.0


#: ``(tiles done, tiles total, seconds) -> None``: a tiled Cholesky progress report.
TileProgressFn = Callable[[int, int, float], None]


@contextlib.contextmanager
def _reporting(fn: Optional[TileProgressFn], count: Callable[[], int], total: int, every: float):
    """Call ``fn(count(), total, seconds)`` every ``every`` seconds from a daemon
    thread while the block runs, and once more when it ends without an error
    (then with every tile done)."""
    if fn is None:
        yield
        return
    t0, stop = time.perf_counter(), threading.Event()

    def loop() -> None:
        while not stop.wait(max(float(every), 1e-3)):
            fn(count(), total, time.perf_counter() - t0)

    thread = threading.Thread(target=loop, name="ntkscale-cholesky-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
    fn(count(), total, time.perf_counter() - t0)


@contextlib.contextmanager
def _blas_threads(limit: Optional[int]):
    if limit is None:
        yield
        return
    with threadpool_limits(limits=limit, user_api="blas"):
        yield


class TiledCholesky:
    """Out-of-core tiled Cholesky factor of ``A + ridge I`` stored in Zarr.

    Parameters
    ----------
    A : the symmetric Gram, a Zarr array (any size) or an in-memory array.
    group : Zarr group (or a path) that holds the factor in ``group[name]``;
        an existing factor of the same matrix, tile and ridge is resumed.
    tile : tile size; default :func:`choose_tile` from ``memory_limit``.
    ridge : absolute ridge added to the diagonal.
    client : ``distributed.Client`` to run the tile graph on; default the
        threaded scheduler with ``num_workers`` threads (each BLAS call then
        single-threaded).
    token : identity of ``A`` (e.g. the store's spec hash + data fingerprint);
        default a hash of its shape, dtype and diagonal.
    progress : called as ``progress(tiles done, tiles total, seconds)`` every
        ``progress_every`` seconds while :meth:`factor` runs and once when it
        ends; tiles done count those of a resumed factor too.
    """

    def __init__(self, A: Any, group: Any, *, tile: Optional[int] = None, ridge: float = 0.0,
                 name: str = "cholesky", client: Any = None, num_workers: Optional[int] = None,
                 memory_limit: Optional[float] = None, token: Optional[str] = None,
                 jitter_steps: Tuple[float, ...] = JITTER_STEPS, dtype: Any = None,
                 progress: Optional[TileProgressFn] = None, progress_every: float = 5.0):
        import zarr  # noqa: PLC0415 - deferred: 0.6 s, and `import ntkscale` loads the solvers

        if getattr(A, "ndim", None) != 2 or A.shape[0] != A.shape[1]:
            raise InputError(f"Cholesky needs a square Gram; got shape {getattr(A, 'shape', None)}")
        self.A = A
        self.n = n = int(A.shape[0])
        self.ridge = float(check_ridges(ridge)[0])
        self.dtype = np.dtype(dtype or A.dtype)
        if self.dtype.kind != "f":
            self.dtype = np.dtype(np.float64)
        chunk = int(A.chunks[0]) if hasattr(A, "chunks") and not isinstance(A, np.ndarray) else None
        self.tile = int(tile) if tile else choose_tile(n, self.dtype.itemsize, memory_limit, chunk)
        if self.tile < 1:
            raise InputError(f"tile must be >= 1; got {tile}")
        self.T = math.ceil(n / self.tile)
        self.client, self.num_workers = client, num_workers
        self.progress, self.progress_every = progress, float(progress_every)
        self.tiles_computed = 0
        self.jitter_steps = tuple(jitter_steps)
        self.diag = self._diagonal()
        if not np.all(np.isfinite(self.diag)):
            raise InputError("the Gram's diagonal has NaN/inf values (blocks not computed yet?); "
                             "finish the Gram (ntkscale gram) before factoring it")
        self.scale = abs(float(np.mean(self.diag))) or 1.0
        self.token = token or self._token()
        if isinstance(group, str) or hasattr(group, "__fspath__"):
            group = zarr.open_group(str(group), mode="a")
        self.group = group
        self._open(name)

    # -- storage ---------------------------------------------------------------
    def _diagonal(self) -> np.ndarray:
        t = int(self.A.chunks[0]) if hasattr(self.A, "chunks") and not isinstance(self.A, np.ndarray) else 4096
        return np.concatenate([np.diagonal(np.asarray(self.A[i:min(i + t, self.n), i:min(i + t, self.n)]))
                               for i in range(0, self.n, t)]).astype(np.float64)

    def _token(self) -> str:
        h = hashlib.sha1(repr((self.A.shape, str(np.dtype(self.A.dtype)))).encode())
        h.update(self.diag.tobytes())
        return h.hexdigest()

    def _attrs(self) -> Dict[str, Any]:
        return {"n": self.n, "tile": self.tile, "ridge": self.ridge, "dtype": str(self.dtype),
                "token": self.token, "jitter_steps": list(self.jitter_steps), "complete": False}

    def _open(self, name: str) -> None:
        want = self._attrs()
        g = self.group.get(name) if hasattr(self.group, "get") else None
        if g is not None:
            have = dict(g.attrs)
            same = all(have.get(k) == v for k, v in want.items() if k != "complete")
            if not same:
                diff = [k for k, v in want.items() if k != "complete" and have.get(k) != v]
                warnings.warn(f"discarding the stored Cholesky factor in '{name}': its {', '.join(diff)} "
                              "differ(s) from this solve", NumericalWarning, stacklevel=3)
                g = None
        if g is None:
            g = self.group.create_group(name, overwrite=True)
            t, T = self.tile, self.T
            g.create_array("L", shape=(self.n, self.n), chunks=(t, t), dtype=self.dtype,
                           compressors=None, fill_value=0)
            g.create_array("done", shape=(T, T), chunks=(1, 1), dtype="uint8", fill_value=0)
            g.create_array("jitter", shape=(T,), chunks=(1,), dtype="float64", fill_value=0.0)
            g.attrs.update(want)
        self.root = g
        self.L, self.done, self.jit = g["L"], g["done"], g["jitter"]

    @property
    def tiles_done(self) -> int:
        return int(np.asarray(self.done[...]).sum())

    @property
    def tiles_total(self) -> int:
        return self.T * (self.T + 1) // 2

    @property
    def jitter(self) -> float:
        """Largest jitter added to the diagonal (0 when none was needed)."""
        return float(np.max(np.asarray(self.jit[...]))) if self.T else 0.0

    # -- factorisation -----------------------------------------------------------
    def graph(self) -> Tuple[Dict[Any, Any], List[Any]]:
        """The Dask graph of the missing tiles (finished tiles are literals)."""
        name = f"cholesky-{self.token[:12]}-{self.tile}-{self.ridge:g}"
        done = np.asarray(self.done[...])
        jit = np.asarray(self.jit[...])
        src = self.A
        dsk: Dict[Any, Any] = {}
        for j in range(self.T):
            for i in range(j, self.T):
                key = (name, i, j)
                if done[i, j]:
                    dsk[key] = float(jit[j]) if i == j else 0.0
                    continue
                deps = [(name, i, k) for k in range(j)] + [(name, j, k) for k in range(j) if i != j]
                prev = (name, j - 1, j - 1) if (i == j and j > 0) else (name, j, j) if i != j else 0.0
                dsk[key] = (_tile_task, src, self.L, self.done, self.jit, i, j, self.n, self.tile, self.ridge,
                            self.scale, self.jitter_steps, prev, *deps)
        keys = [(name, i, j) for j in range(self.T) for i in range(j, self.T)]
        return dsk, keys

    def factor(self) -> "TiledCholesky":
        """Compute every missing tile (resuming a killed run); warn if jitter was added."""
        if self.root.attrs.get("complete") and self.tiles_done == self.tiles_total:
            self.tiles_computed = 0
            return self
        dsk, keys = self.graph()
        todo = {k for k, v in dsk.items() if isinstance(v, tuple)}
        self.tiles_computed = len(todo)
        before = self.tiles_total - len(todo)
        if self.client is not None:
            if isinstance(self.A, np.ndarray):
                raise InputError("a distributed tiled Cholesky reads its tiles on the workers: pass the Gram as a "
                                 "Zarr array (e.g. GramStore.train_array()), not an in-memory array")
            futures = self.client.get(dsk, keys, sync=False)
            mine = [f for k, f in zip(keys, futures) if k in todo]
            with _reporting(self.progress, lambda: before + sum(f.done() for f in mine), self.tiles_total,
                            self.progress_every):
                self.client.gather(futures)
        else:
            import dask.threaded  # noqa: PLC0415 - deferred: 0.2 s, and `import ntkscale` loads the solvers

            finished = [before]

            def posttask(key: Any, *_: Any) -> None:
                if key in todo:
                    finished[0] += 1        # one scheduler thread runs the callbacks

            workers = self.num_workers or 1
            with _reporting(self.progress, lambda: finished[0], self.tiles_total, self.progress_every), \
                    _blas_threads(1 if workers > 1 else None):
                # dask.local's callback tuple (start, start_state, pretask, posttask, finish), for this graph only
                dask.threaded.get(dsk, keys, num_workers=workers, callbacks=[(None, None, None, posttask, None)])
        self.root.attrs.update({"complete": True})
        self._report_jitter()
        return self

    def _report_jitter(self) -> None:
        jit = np.asarray(self.jit[...])
        if np.any(jit > 0):
            j0 = int(np.argmax(jit > 0))
            warnings.warn(
                f"the Gram + ridge is not numerically positive definite: diagonal tile ({j0}, {j0}) failed, "
                f"so jitter up to {jit.max():.3g} ({jit.max() / self.scale:.3g} x mean diagonal) was added to "
                f"the diagonal from row {j0 * self.tile} on; consider a larger ridge", NumericalWarning,
                stacklevel=3)

    # -- triangular solves ------------------------------------------------------------
    def _tile(self, i: int, j: int) -> np.ndarray:
        return np.asarray(self.L[i * self.tile:min(self.n, (i + 1) * self.tile),
                                 j * self.tile:min(self.n, (j + 1) * self.tile)])

    def forward(self, b: np.ndarray) -> np.ndarray:
        """``L^{-1} b`` by tile rows: ``y_i = L_ii^{-1} (b_i - sum_{k<i} L_ik y_k)``;
        one factor tile in memory at a time."""
        y = np.array(b, dtype=np.result_type(b.dtype, self.dtype), copy=True)
        t = self.tile
        for i in range(self.T):
            ri = slice(i * t, min(self.n, (i + 1) * t))
            for k in range(i):
                y[ri] -= self._tile(i, k) @ y[k * t:(k + 1) * t]
            y[ri] = scipy.linalg.solve_triangular(self._tile(i, i), y[ri], lower=True, check_finite=False)
        return y

    def backward(self, y: np.ndarray) -> np.ndarray:
        """``L^{-T} y`` by tile columns, last to first: ``x_i = L_ii^{-T} y_i`` then
        ``y_k -= L_ik^T x_i`` for ``k < i`` (each tile read once)."""
        x = np.array(y, copy=True)
        t = self.tile
        for i in reversed(range(self.T)):
            ri = slice(i * t, min(self.n, (i + 1) * t))
            x[ri] = scipy.linalg.solve_triangular(self._tile(i, i), x[ri], lower=True, trans="T",
                                                  check_finite=False)
            for k in range(i):
                x[k * t:(k + 1) * t] -= self._tile(i, k).T @ x[ri]
        return x

    def solve(self, B: Any) -> np.ndarray:
        """``(A + ridge I)^{-1} B`` for ``B`` of shape ``(n,)`` or ``(n, k)``."""
        b, vector = check_rhs(B, self.n)
        if not (self.root.attrs.get("complete") and self.tiles_done == self.tiles_total):
            self.factor()
        if self.client is not None:
            x = self._dask_solve(b)
        else:
            x = self.backward(self.forward(b))
        return x[:, 0] if vector else x

    def _dask_solve(self, b: np.ndarray) -> np.ndarray:
        """Distributed triangular solves: here ``dask.array.linalg.solve_triangular``
        fits as is (its blocked forward/back substitution reads the factor's Zarr
        tiles on the workers, one tile per task), so it is reused rather than
        rewritten. Locally the two tile sweeps above are faster (no graph)."""
        import dask.array as da  # noqa: PLC0415 - deferred: 1 s, and `import ntkscale` loads the solvers

        t = self.tile
        Ld = da.from_zarr(self.L)
        y = da.linalg.solve_triangular(Ld, da.from_array(b, chunks=(t, b.shape[1])), lower=True)
        x = da.linalg.solve_triangular(Ld.T, y, lower=False)
        return np.asarray(self.client.compute(x, sync=True))


def tiled_cholesky(A: Any, group: Any, *, ridge: float = 0.0, tile: Optional[int] = None,
                   client: Any = None, **kw: Any) -> TiledCholesky:
    """Factor ``A + ridge I`` into ``group`` (resuming) and return the factor."""
    return TiledCholesky(A, group, ridge=ridge, tile=tile, client=client, **kw).factor()


def cholesky_solve(A: Any, B: Any, group: Any, *, ridges: Any = 0.0, tile: Optional[int] = None,
                   client: Any = None, **kw: Any) -> np.ndarray:
    """Solve ``(A + l I) X = B`` for each ridge ``l`` (one factor per ridge, kept in
    ``group['cholesky-<l>']``). Returns ``X`` shaped ``B`` for a scalar ridge,
    else with a leading ridge axis."""
    scalar = np.ndim(ridges) == 0
    rid = check_ridges(ridges)
    out = []
    for r in rid:
        f = TiledCholesky(A, group, ridge=float(r), tile=tile, client=client,
                          name=f"cholesky-{float(r):.6g}", **kw)
        out.append(f.factor().solve(B))
    return out[0] if scalar else np.stack(out)
