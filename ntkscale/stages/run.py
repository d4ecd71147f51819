"""The whole run: plan -> Gram -> solve -> predict -> metrics, resumable at every stage.

``RunPipeline(config).run()`` is what ``ntkscale run CONFIG`` does:

1. **Gram** -- :class:`~ntkscale.stages.gram.GramPipeline` computes the blocks the
   store is missing (a rerun computes none).
2. **Solve** -- ``(K + l I) alpha = Y`` on the stored train Gram (a
   :class:`~ntkscale.solvers.operator.GramOperator` reading Zarr panels, or
   recomputing them in ``mode: streamed``) with CG or the tiled Cholesky
   (:func:`ntkscale.solvers.api.solve`). CG checkpoints its iterate in the
   store's ``solver/cg_checkpoint`` every ``checkpoint_every`` iterations and
   Cholesky keeps its factor tiles in ``solver/cholesky``, so a killed run
   resumes from there. A finished solve with the same identity (store spec and
   train data, solver settings, task) is reused, not redone. With a ridge
   list, the ridge is chosen on a seeded validation split of the *training*
   rows (:func:`ntkscale.solvers.ridge.select_ridge`), never on the test set.
3. **Predict** -- ``K(test, train) @ alpha`` by row panels of the stored cross
   Gram, for every ridge in one sweep; metrics (accuracy, or MSE and R^2) per
   ridge; the chosen ridge's are the top-level ``test_accuracy``/``test_mse``.

Store groups written here (docs/store.md reserves them)::

    solver/alpha, solver/history     (s, n, k) solutions, CG residual history; attrs "run": metrics, identity
    solver/cg_checkpoint/{a,b}       the last two CG checkpoints
    solver/cholesky/...              factor tiles (one factor per ridge)
    predict/scores                   (s, m, k) raw predictions, one per ridge
    predict/labels                   (m,) decoded predictions of the chosen ridge
                                     attrs "metrics", "test_fingerprint"
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, TextIO

import numpy as np

from ..config.run import RunConfig
from ..errors import InputError, NumericalWarning
from ..config.solver import SolverConfig
from ..store.gram_store import GramStore, StoreError

SOLVE_FORMAT = 1


def _check_new_inputs(x: Any, x_train: np.ndarray) -> np.ndarray:
    """New inputs (``--x``) as the training dtype, or an error naming the problem."""
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise InputError(f"--x has dtype {x.dtype}; expected numbers")
    if x.ndim < 2 or x.shape[1:] != x_train.shape[1:]:
        raise InputError(f"--x has shape {x.shape}; its samples must have the training shape "
                         f"{x_train.shape[1:]} (n, {', '.join(map(str, x_train.shape[1:]))})")
    x = x.astype(x_train.dtype)
    bad = ~np.all(np.isfinite(x.reshape(len(x), -1)), axis=1)
    if np.any(bad):
        raise InputError(f"--x has non-finite values in {int(bad.sum())} rows "
                         f"(first {np.nonzero(bad)[0][:5].tolist()}); clean or impute them")
    return x


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


class RunPipeline:
    """Python form of ``ntkscale run``: ``RunPipeline(config).run() -> dict`` of metrics."""

    def __init__(self, config: RunConfig, *, progress: bool = True, stream: Optional[TextIO] = None,
                 client: Any = None):
        self.config = config
        self.solver: SolverConfig = config.solver or SolverConfig()
        self.task = config.task or "auto"
        self.progress, self.stream, self.client = progress, stream, client
        self.gram_report: Any = None

    # -- helpers -----------------------------------------------------------------
    def _say(self, message: str) -> None:
        if self.progress:
            print(message, file=self.stream or sys.stderr, flush=True)

    def open_store(self, mode: str = "r") -> GramStore:
        path = Path(self.config.store)
        if not GramStore.is_store(path):
            raise StoreError(f"no Gram store at {path}: compute it first with `ntkscale gram CONFIG` "
                             "(or `ntkscale run CONFIG`, which does every stage)")
        return GramStore.open(path, mode)

    def kind(self, store: GramStore) -> str:
        return "ntk" if "ntk" in store.kinds else store.kinds[0]

    @staticmethod
    def check_complete(store: GramStore, part: str) -> None:
        """Every block (and diagonal) of ``part`` in the manifest, or a clear error."""
        keys = store.manifest.keys()
        need = [b.key for b in store.plan().blocks if b.part in (part, f"diag-{part}")]
        missing = [k for k in need if k not in keys]
        if not need and part == "test":
            raise InputError(f"{store.path} has no test part; add data.test to the config and run "
                             "`ntkscale gram CONFIG`")
        if missing:
            raise InputError(
                f"{store.path} lacks {len(missing)} of the {len(need)} {part} Gram blocks the solver needs "
                f"({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}); compute them with "
                "`ntkscale gram CONFIG` (or `ntkscale run CONFIG`), or check them with `ntkscale verify`")

    def _labels(self, store: GramStore, which: str) -> Optional[np.ndarray]:
        y = store.y(which)
        return None if y is None else np.asarray(y[...])

    def encoder(self, store: GramStore) -> Any:
        from ..targets import encode_targets  # noqa: PLC0415

        y = self._labels(store, "train")
        if y is None:
            raise InputError("the solver needs training targets: set data.train.y in the config "
                             "(and rerun `ntkscale gram CONFIG --replace-y`)")
        return encode_targets(y, self.task)

    def identity(self, store: GramStore) -> str:
        """What a finished solve depends on (not checkpoint_every)."""
        s = self.solver.to_dict()
        for key in ("checkpoint_every", "products"):   # how, not what: the same solution
            s.pop(key, None)
        doc = {"format": SOLVE_FORMAT, "spec_hash": store.spec_hash, "train": store.fingerprint("train"),
               "kind": self.kind(store), "solver": s, "task": self.task}
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()

    def operator(self, store: GramStore) -> Any:
        from ..solvers.operator import make_operator  # noqa: PLC0415

        kind = self.kind(store)
        x = np.asarray(store.inputs("train")[...]) if self.solver.mode != "stored" else None
        return make_operator(mode=self.solver.mode, array=store.train_array(kind), diagonal=store.diag("train", kind),
                             kernel_fn=store.kernel_fn() if x is not None else None, x=x, get=kind,
                             client=self.client if self.products_on_cluster else None)

    @property
    def products_on_cluster(self) -> bool:
        """Gram products and Cholesky tiles run as tasks on the run's cluster (``solver.products``)."""
        return self.solver.on_cluster(self.config.cluster.kind)

    @contextlib.contextmanager
    def cluster(self) -> Iterator[Any]:
        """The run's Dask client for the solver stage: the one given, else one opened
        from ``cluster:`` (and closed again) when the products run on the cluster,
        else None (the driver does them)."""
        if self.client is not None or not self.products_on_cluster:
            yield self.client
            return
        from ..cluster.client import open_client  # noqa: PLC0415
        from .gram import _security, wait_until_ready  # noqa: PLC0415

        with open_client(self.config.cluster, security=_security(self.config)) as client:
            if self.config.cluster.kind != "local" and Path(self.config.store).exists():
                wait_until_ready(client, Path(self.config.store).resolve())
            self.client = client
            try:
                yield client
            finally:
                self.client = None

    # -- stages --------------------------------------------------------------------
    def gram(self) -> Any:
        from .gram import GramPipeline  # noqa: PLC0415

        self.gram_report = GramPipeline(self.config, progress=self.progress, stream=self.stream).run(
            client=self.client)
        return self.gram_report

    def solve(self) -> Dict[str, Any]:
        """Solve on the stored train Gram (reusing a finished solve); returns the solve record."""
        from ..store.lock import StoreLock  # noqa: PLC0415

        store = self.open_store("r")
        self.check_complete(store, "train")
        enc = self.encoder(store)          # y checked (NaN, one class) before any work
        ident = self.identity(store)
        with StoreLock(self.config.store, command="ntkscale solve"), self.cluster():
            store = self.open_store("r+")
            group = store.group("solver")
            prev = dict(group.attrs).get("run") or {}
            if prev.get("identity") == ident and "alpha" in group:
                self._say(f"solve: reusing the finished solve in {store.path}/solver")
                return prev
            return self._solve(store, group, enc, ident)

    def _solve(self, store: GramStore, group: Any, enc: Any, ident: str) -> Dict[str, Any]:
        from ..solvers.api import solve  # noqa: PLC0415
        from ..solvers.checkpoint import ZarrCheckpoint  # noqa: PLC0415
        from ..solvers.record import save_solution  # noqa: PLC0415
        from ..solvers.ridge import select_ridge  # noqa: PLC0415

        sv = self.solver
        t0 = time.perf_counter()
        y = self._labels(store, "train")
        Y = enc.transform(y, "y_train")
        op = self.operator(store)
        n = op.shape[0]
        mean_diag = op.mean_diagonal()
        rel = np.asarray(sv.ridge, dtype=np.float64)
        ridges = rel * mean_diag if sv.ridge_relative else rel
        kw: Dict[str, Any] = dict(method=sv.method, rtol=sv.tol, maxiter=sv.maxiter, seed=sv.seed,
                                  preconditioner=sv.preconditioner.kind,
                                  rank=max(1, min(sv.preconditioner.rank, n // 2)),
                                  ridge_path=sv.ridge_path, tile=sv.tile)
        record: Dict[str, Any] = {"identity": ident, "method": sv.method, "kind": self.kind(store),
                                  "task": enc.task, "n_train": n, "mean_diagonal": mean_diag, "tol": sv.tol,
                                  "ridges_relative": rel.tolist() if sv.ridge_relative else (rel / mean_diag).tolist(),
                                  "ridges_absolute": ridges.tolist(), "chosen_index": 0, "validation": None}
        if enc.task == "classification":
            record["classes"] = enc.classes_.tolist()
        if sv.ridge_list and len(ridges) > 1:
            self._say(f"solve: choosing among {len(ridges)} ridges on a {sv.validation_fraction:g} validation "
                      f"split of the training rows ({sv.method})")
            sel = select_ridge(op, y, ridges, encoder=enc, validation_fraction=sv.validation_fraction,
                               seed=sv.seed, group=group if sv.method == "cholesky" else None,
                               warn=False, **{k: v for k, v in kw.items() if k != "seed"})
            record["chosen_index"] = int(sel.best_index)
            record["validation"] = {"metric": sel.metric, "metrics": _jsonable(sel.metrics),
                                    "n_fit": len(sel.fit_idx), "n_val": len(sel.val_idx)}
        ckpt = ZarrCheckpoint(group, "cg_checkpoint") if sv.method == "cg" else None
        where = "cluster" if getattr(op, "client", None) is not None else "driver"
        record["products"] = where
        self._say(f"solve: {sv.method} on the {n}x{n} {self.kind(store)} Gram ({op.mode}; products on the "
                  f"{where}), {Y.shape[1]} right-hand side(s), ridge(s) {', '.join(f'{r:.3g}' for r in ridges)}")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", NumericalWarning)
            res = solve(op, Y, ridges=ridges, checkpoint=ckpt, checkpoint_every=sv.checkpoint_every,
                        group=group.require_group("cholesky") if sv.method == "cholesky" else None, **kw)
        for w in caught:
            self._say(f"solve: warning: {w.message}")
        record["solve"] = _jsonable(res.summary())
        record["seconds"] = time.perf_counter() - t0
        record["gram_passes"] = int(getattr(op, "n_passes", 0))   # sweeps over the Gram in this process
        if res.info is not None:
            record["cg_iterations"] = int(res.info.iterations)
            record["cg_resumed_from"] = res.info.resumed_from
            record["converged"] = bool(np.all(res.info.converged))
        if res.tiles_computed is not None:
            record["cholesky_tiles_computed"] = int(res.tiles_computed)
        record = _jsonable(record)
        save_solution(group, res, {"run": record})
        if ckpt is not None:
            ckpt.clear()
        self._say(f"solve: done in {record['seconds']:.1f} s"
                  + (f", {record['cg_iterations']} CG iterations" if "cg_iterations" in record else "")
                  + (f" (resumed from iteration {record['cg_resumed_from']})" if record.get("cg_resumed_from")
                     else ""))
        return record

    def load_solution(self, store: GramStore) -> Dict[str, Any]:
        try:
            group = store.group("solver")
            record = dict(group.attrs).get("run")
            alpha = np.asarray(group["alpha"][...])
        except (KeyError, FileNotFoundError):
            record = None
        if not record:
            raise InputError(f"{store.path} has no solution yet: run `ntkscale solve CONFIG` first")
        if record.get("identity") != self.identity(store):
            raise InputError(f"the solution in {store.path}/solver was made with other solver settings or data; "
                             "run `ntkscale solve CONFIG` again")
        return {"record": record, "alpha": alpha}

    def predict(self, record: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """Predict the config's test set from the stored cross Gram; save and return metrics."""
        from ..predict.blocked import predict  # noqa: PLC0415

        store = self.open_store("r")
        self.check_complete(store, "test")
        sol = self.load_solution(store)
        record = sol["record"]
        enc = self.encoder(store)
        t0 = time.perf_counter()
        kind = self.kind(store)
        scores = predict(store.test_array(kind), sol["alpha"])             # (s, m, k)
        y_test = self._labels(store, "test")
        chosen = int(record.get("chosen_index", 0))
        per: List[Dict[str, Any]] = []
        val = (record.get("validation") or {}).get("metrics") or []
        for j, (r_rel, r_abs) in enumerate(zip(record["ridges_relative"], record["ridges_absolute"])):
            row: Dict[str, Any] = {"ridge": r_rel, "ridge_absolute": r_abs}
            if j < len(val):
                row.update(val[j])
            if y_test is not None:
                row.update(enc.metrics(scores[j], y_test, prefix="test_"))
            per.append(row)
        out: Dict[str, Any] = {"task": enc.task, "method": record["method"], "kernel": kind,
                               "n_train": store.n_train, "n_test": store.n_test,
                               "ridge": per[chosen]["ridge"], "ridge_absolute": per[chosen]["ridge_absolute"]}
        out.update({k: v for k, v in per[chosen].items() if k.startswith(("test_", "val_"))})
        if self.solver.ridge_list:
            out["ridges"] = per
            out["chosen_index"] = chosen
        labels = enc.decode(scores[chosen])
        with_lock = self._write_predictions(scores, labels, out, store)
        out["predict_seconds"] = time.perf_counter() - t0
        return _jsonable(with_lock)

    def _write_predictions(self, scores: np.ndarray, labels: np.ndarray, out: Dict[str, Any],
                           store: GramStore) -> Dict[str, Any]:
        from ..store.lock import StoreLock  # noqa: PLC0415

        with StoreLock(self.config.store, command="ntkscale predict"):
            w = self.open_store("r+")
            g = w.group("predict")
            s = np.ascontiguousarray(scores, dtype=np.float64)
            arr = g.create_array("scores", shape=s.shape, dtype="float64", chunks=(1,) + s.shape[1:],
                                 compressors=None, overwrite=True)
            arr[...] = s
            lab = np.asarray(labels)
            if lab.dtype.kind in "biuf":
                la = g.create_array("labels", shape=lab.shape, dtype=lab.dtype, compressors=None, overwrite=True)
                la[...] = lab
            g.attrs.update({"metrics": _jsonable(out), "test_fingerprint": w.fingerprint("test")})
        return out

    def predict_new(self, x: Any) -> np.ndarray:
        """Decoded predictions for new inputs ``x`` against the store: only the new
        cross-kernel blocks ``K(x, train)`` are computed (by row panels, nothing stored)."""
        from ..predict.blocked import predict  # noqa: PLC0415

        store = self.open_store("r")
        sol = self.load_solution(store)
        enc = self.encoder(store)
        x_train = np.asarray(store.inputs("train")[...])
        x = _check_new_inputs(x, x_train)
        chosen = int(sol["record"].get("chosen_index", 0))
        kind = self.kind(store)
        scores = predict(None, sol["alpha"][chosen], kernel_fn=store.kernel_fn(), x_test=x, x_train=x_train,
                         get=kind)
        return enc.decode(scores)

    def variance(self, x: Any = None, *, block: int = 512) -> np.ndarray:
        """Posterior variance at every test point (the config's test set, or new inputs ``x``)
        for the kernel the solver used and its chosen ridge: the NNGP posterior
        (Rasmussen & Williams 2006, Eq. 2.26), or for the NTK the NTK-GP at t = inf
        (Lee et al. 2019, Eq. 16), which also needs the NNGP (``kernel.get: [nngp, ntk]``).

        The stored cross Gram is used for the test set; for ``x`` only ``K(x, train)``
        is computed. Each ``block`` of test points costs one solve with ``block``
        right-hand sides (a Cholesky solve reuses the stored factor tiles).
        """
        from ..predict.blocked import (cross_operator, nngp_posterior_variance,
            ntk_posterior_variance)  # noqa: PLC0415

        store = self.open_store("r")
        record = self.load_solution(store)["record"]
        kind = self.kind(store)
        if kind == "ntk" and "nngp" not in store.kinds:
            raise InputError(f"{store.path} holds only the NTK; the NTK-GP variance needs the NNGP too: set "
                             "kernel.get: [nngp, ntk] and use a new store (or solve with kernel.get: nngp)")
        if x is None:
            self.check_complete(store, "test")
            crosses = {k: store.test_array(k) for k in ("nngp", kind)}
            test_diag = store.diag("test", "nngp")
        else:
            x_train = np.asarray(store.inputs("train")[...])
            x = _check_new_inputs(x, x_train)
            kfn = store.kernel_fn()
            crosses = {k: cross_operator(kernel_fn=kfn, x_test=x, x_train=x_train, get=k) for k in ("nngp", kind)}
            test_diag = np.asarray(kfn.diag(x, get="nngp"))
        ridge = float(record["ridges_absolute"][int(record.get("chosen_index", 0))])
        with self.cluster():
            op = self.operator(store)
            solve_rhs = self._ridge_solver(store, op, ridge)
            if kind == "nngp":
                return nngp_posterior_variance(test_diag, crosses["nngp"], solve_rhs, block=block)
            return ntk_posterior_variance(test_diag, crosses["nngp"], crosses["ntk"], store.train_array("nngp"),
                                          solve_rhs, block=block)

    def _ridge_solver(self, store: GramStore, op: Any, ridge: float) -> Any:
        """``B -> (K + ridge I)^{-1} B`` with the run's solver settings (a Cholesky
        factor already in the store is reused, not recomputed)."""
        from ..solvers.api import solve  # noqa: PLC0415

        sv, n = self.solver, op.shape[0]
        group = None
        if sv.method == "cholesky":
            try:
                group = store.group("solver")["cholesky"]     # the solve's factor tiles
            except KeyError:
                import zarr  # noqa: PLC0415

                group = zarr.open_group(zarr.storage.MemoryStore(), mode="w")  # factored once, here
        kw: Dict[str, Any] = dict(method=sv.method, rtol=sv.tol, maxiter=sv.maxiter, seed=sv.seed,
                                  preconditioner=sv.preconditioner.kind,
                                  rank=max(1, min(sv.preconditioner.rank, n // 2)), tile=sv.tile, warn=False)
        return lambda b: solve(op, b, ridges=[ridge], group=group, **kw).alpha[0]

    def run(self) -> Dict[str, Any]:
        """plan -> gram -> solve -> predict; returns the metrics (also saved in the store)."""
        t0 = time.perf_counter()
        # every check that needs no work first: solver settings are typed at load,
        # inputs (and y) are checked by the Gram stage before any block runs
        self._check_targets()
        with self.cluster():    # one cluster for the Gram and the solver when both use it
            t = time.perf_counter()
            rep = self.gram()
            gram_s = time.perf_counter() - t
            rec = self.solve()
        out: Dict[str, Any] = {}
        store = self.open_store("r")
        if store.n_test:
            out = self.predict(rec)
        else:
            out = {"task": rec["task"], "method": rec["method"], "n_train": rec["n_train"], "n_test": 0}
        out["gram"] = {"blocks_computed": rep.blocks_computed, "blocks_done_before": rep.blocks_done_before,
                       "seconds": round(gram_s, 3)}
        out["solve"] = {k: rec.get(k) for k in ("cg_iterations", "cg_resumed_from", "converged", "gram_passes",
                                                "cholesky_tiles_computed", "seconds") if k in rec}
        out["seconds"] = round(time.perf_counter() - t0, 3)
        return _jsonable(out)

    def _check_targets(self) -> None:
        """Bad targets are refused before the Gram is computed (NaN, one class, test classes unknown)."""
        from ..data import open_array  # noqa: PLC0415
        from ..targets import encode_targets  # noqa: PLC0415

        data = self.config.data
        if data.train.y is None:
            raise InputError("the solver needs training targets: set data.train.y in the config")
        enc = encode_targets(np.asarray(open_array(data.train.y, "data.train.y")), self.task)
        if data.test is not None and data.test.y is not None and enc.task == "classification":
            enc.transform(np.asarray(open_array(data.test.y, "data.test.y")), "data.test.y")
