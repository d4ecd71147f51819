"""The solve stage: ``(K + l I) alpha = Y`` on the stored train Gram, resumable and reused.

The train Gram is a :class:`~ntkscale.solvers.operator.GramOperator` reading Zarr
panels (or recomputing them in ``mode: streamed``), solved with CG or the tiled
Cholesky (:func:`ntkscale.solvers.api.solve`). CG checkpoints its iterate in the
store's ``solver/cg_checkpoint`` every ``checkpoint_every`` iterations and Cholesky
keeps its factor tiles in ``solver/cholesky``, so a killed run resumes from there.
A finished solve with the same identity (store spec and train data, solver
settings, task) is reused, not redone. With a ridge list, the ridge is chosen on
a seeded validation split of the *training* rows
(:func:`ntkscale.solvers.ridge.select_ridge`), never on the test set.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from typing import Any, Callable, Dict, Optional

import numpy as np

from ..config.solver import SolverConfig
from ..data import open_array
from ..errors import InputError, NumericalWarning
from ..solvers.api import SolveProgress
from ..solvers.api import solve as solve_system
from ..solvers.checkpoint import ZarrCheckpoint
from ..solvers.choose import resolve_method
from ..solvers.operator import GramOperator
from ..solvers.ridge import select_ridge
from ..store.gram_store import GramStore
from ..store.lock import StoreLock
from ..store.records import jsonable, load_solution, save_solution
from ..targets import TargetEncoder, encode_targets
from .context import RunContext, check_complete, encoder, kernel_kind, labels

#: Bumped when a stored solve can no longer be reused by this code.
SOLVE_FORMAT = 1
#: Seconds between progress lines of a long solve (CG iterations, Cholesky tiles).
PROGRESS_EVERY = 5.0


def cg_progress_line(iteration: int, residual: float, seconds: float) -> str:
    """One CG progress line: ``solve: CG iteration 40, relative residual 3.1e-05, 12.3 s``."""
    return f"solve: CG iteration {iteration}, relative residual {residual:.2g}, {seconds:.1f} s"


def cholesky_progress_line(tiles_done: int, tiles_total: int, seconds: float) -> str:
    """One Cholesky progress line: ``solve: Cholesky tile 120/528 (23 %), 14.2 s``
    (floored: 99.9 % of the tiles is not 100 %)."""
    pct = 100 * tiles_done // max(1, tiles_total)
    return f"solve: Cholesky tile {tiles_done}/{tiles_total} ({pct} %), {seconds:.1f} s"


def progress_line(p: SolveProgress) -> str:
    """The progress line of one :class:`~ntkscale.solvers.api.SolveProgress` report."""
    if p.method == "cholesky":
        return cholesky_progress_line(p.tiles_done, p.tiles_total, p.seconds)
    return cg_progress_line(p.iteration, p.residual, p.seconds)


def identity(solver: SolverConfig, task: str, store: GramStore) -> str:
    """What a finished solve depends on (not checkpoint_every, nor where products run)."""
    s = solver.to_dict()
    for key in ("checkpoint_every", "products", "learning_rate"):   # not what the solve computes
        s.pop(key, None)
    doc = {"format": SOLVE_FORMAT, "spec_hash": store.spec_hash, "train": store.fingerprint("train"),
           "kind": kernel_kind(store), "solver": s, "task": task}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def solver_options(solver: SolverConfig, n: int, method: Optional[str] = None) -> Dict[str, Any]:
    """Keyword arguments of :func:`ntkscale.solvers.api.solve` from the run's solver settings
    (``method``: what ``solver.method`` resolved to, when it is ``auto``)."""
    return dict(method=method or solver.method, rtol=solver.tol, maxiter=solver.maxiter, seed=solver.seed,
                preconditioner=solver.preconditioner.kind, rank=max(1, min(solver.preconditioner.rank, n // 2)),
                tile=solver.tile)


def check_targets(ctx: RunContext) -> None:
    """Bad targets are refused before the Gram is computed (NaN, one class, test classes unknown)."""
    data = ctx.config.data
    if data.train.y is None:
        raise InputError("the solver needs training targets: set data.train.y in the config")
    enc = encode_targets(np.asarray(open_array(data.train.y, "data.train.y")), ctx.task)
    if data.test is not None and data.test.y is not None and enc.task == "classification":
        enc.transform(np.asarray(open_array(data.test.y, "data.test.y")), "data.test.y")


def solve(ctx: RunContext) -> Dict[str, Any]:
    """Solve on the stored train Gram (reusing a finished solve); returns the solve record."""
    store = ctx.store
    check_complete(store, "train")
    enc = encoder(store, ctx.task)          # y checked (NaN, one class) before any work
    ident = identity(ctx.solver, ctx.task, store)
    with StoreLock(ctx.location, command="ntkscale solve"), ctx.cluster():
        store = ctx.writable_store()
        group = store.group("solver")
        prev = dict(group.attrs).get("run") or {}
        if prev.get("identity") == ident and "alpha" in group:
            ctx.say(f"solve: reusing the finished solve in {store.path}/solver")
            return prev
        return _solve(ctx, group, enc, ident)


def _solve(ctx: RunContext, group: Any, enc: TargetEncoder, ident: str) -> Dict[str, Any]:
    sv, store, kind = ctx.solver, ctx.store, kernel_kind(ctx.store)
    t0 = time.perf_counter()
    y = labels(store, "train")
    Y = enc.transform(y, "y_train")
    op = ctx.operator()
    n = op.shape[0]
    mean_diag = op.mean_diagonal()
    rel = np.asarray(sv.ridge, dtype=np.float64)
    ridges = rel * mean_diag if sv.ridge_relative else rel
    choice = resolve_method(sv.method, op, len(ridges), group)
    method = choice.method
    if sv.method == "auto":
        ctx.say(f"solve: method auto -> {method}: {choice.reason}")
    kw = {**solver_options(sv, n, method), "ridge_path": sv.ridge_path,
          "progress": lambda p: ctx.say(progress_line(p)), "progress_every": PROGRESS_EVERY}
    record: Dict[str, Any] = {"identity": ident, "method": method, "method_reason": choice.reason, "kind": kind,
                              "task": enc.task, "n_train": n, "mean_diagonal": mean_diag, "tol": sv.tol,
                              "ridges_relative": rel.tolist() if sv.ridge_relative else (rel / mean_diag).tolist(),
                              "ridges_absolute": ridges.tolist(), "chosen_index": 0, "validation": None}
    if enc.task == "classification":
        record["classes"] = enc.classes_.tolist()
    if sv.ridge_list and len(ridges) > 1:
        ctx.say(f"solve: choosing among {len(ridges)} ridges on a {sv.validation_fraction:g} validation "
                f"split of the training rows ({method})")
        sel = select_ridge(op, y, ridges, encoder=enc, validation_fraction=sv.validation_fraction,
                           seed=sv.seed, group=group if method == "cholesky" else None,
                           warn=False, **{k: v for k, v in kw.items() if k != "seed"})
        record["chosen_index"] = int(sel.best_index)
        record["validation"] = {"metric": sel.metric, "metrics": jsonable(sel.metrics),
                                "n_fit": len(sel.fit_idx), "n_val": len(sel.val_idx)}
    ckpt = ZarrCheckpoint(group, "cg_checkpoint") if method == "cg" else None
    where = "cluster" if getattr(op, "client", None) is not None else "driver"
    record["products"] = where
    ctx.say(f"solve: {method} on the {n}x{n} {kind} Gram ({op.mode}; products on the "
            f"{where}), {Y.shape[1]} right-hand side(s), ridge(s) {', '.join(f'{r:.3g}' for r in ridges)}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NumericalWarning)
        res = solve_system(op, Y, ridges=ridges, checkpoint=ckpt, checkpoint_every=sv.checkpoint_every,
                           group=group.require_group("cholesky") if method == "cholesky" else None, **kw)
    for w in caught:
        ctx.say(f"solve: warning: {w.message}")
    record["solve"] = jsonable(res.summary())
    record["seconds"] = time.perf_counter() - t0
    record["gram_passes"] = int(getattr(op, "n_passes", 0))   # sweeps over the Gram in this process
    if res.info is not None:
        record["cg_iterations"] = int(res.info.iterations)
        record["cg_resumed_from"] = res.info.resumed_from
        record["converged"] = bool(np.all(res.info.converged))
    if res.tiles_computed is not None:
        record["cholesky_tiles_computed"] = int(res.tiles_computed)
    record = jsonable(record)
    save_solution(group, res, {"run": record})
    if ckpt is not None:
        ckpt.clear()
    ctx.say(f"solve: done in {record['seconds']:.1f} s"
            + (f", {record['cg_iterations']} CG iterations" if "cg_iterations" in record else "")
            + (f" (resumed from iteration {record['cg_resumed_from']})" if record.get("cg_resumed_from")
               else ""))
    return record


def solution(ctx: RunContext) -> Dict[str, Any]:
    """The store's finished solve for this run's settings: ``{"record": ..., "alpha": (s, n, k)}``."""
    store = ctx.store
    try:
        saved = load_solution(store.group("solver"))
        record = saved["attrs"].get("run")
    except (KeyError, FileNotFoundError):
        record = None
    if not record:
        raise InputError(f"{store.path} has no solution yet: run `ntkscale solve CONFIG` first")
    if record.get("identity") != identity(ctx.solver, ctx.task, store):
        raise InputError(f"the solution in {store.path}/solver was made with other solver settings or data; "
                         "run `ntkscale solve CONFIG` again")
    return {"record": record, "alpha": saved["alpha"]}


def ridge_solver(ctx: RunContext, op: GramOperator, ridge: float) -> Callable[[np.ndarray], np.ndarray]:
    """``B -> (K + ridge I)^{-1} B`` with the run's solver settings (a Cholesky
    factor already in the store is reused, not recomputed)."""
    import zarr  # heavy import, kept out of `import ntkscale` and `ntkscale --help`

    sv = ctx.solver
    group = None
    method = resolve_method(sv.method, op).method
    if method == "cholesky":
        try:
            group = ctx.store.group("solver")["cholesky"]     # the solve's factor tiles
            if f"cholesky-{float(ridge) + float(getattr(op, 'ridge', 0.0)):.6g}" not in group:
                group = None       # several ridges kept only the smallest one's factor
        except KeyError:
            group = None
        if group is None:
            group = zarr.open_group(zarr.storage.MemoryStore(), mode="w")  # factored once, here
    kw = {**solver_options(sv, op.shape[0], method), "warn": False}
    return lambda b: solve_system(op, b, ridges=[ridge], group=group, **kw).alpha[0]
