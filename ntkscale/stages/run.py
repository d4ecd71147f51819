"""The whole run: plan -> Gram -> solve -> predict -> metrics, resumable at every stage.

``RunPipeline(config).run()`` is what ``ntkscale run CONFIG`` does:

1. **Gram** -- :class:`~ntkscale.stages.gram.GramPipeline` computes the blocks the
   store is missing (a rerun computes none).
2. **Solve** -- :func:`ntkscale.stages.solve.solve` (CG or tiled Cholesky on the
   stored train Gram; checkpointed, a finished solve is reused).
3. **Predict** -- :func:`ntkscale.stages.predict.predict` (metrics per ridge; the
   chosen ridge's are the top-level ``test_accuracy``/``test_mse``).

:meth:`RunPipeline.predict_times` adds the training dynamics (predictions after
training for a time ``t``, :mod:`ntkscale.stages.dynamics`).

The stages share one :class:`~ntkscale.stages.context.RunContext`, which opens the
store and the cluster once. The records they write are laid out in
:mod:`ntkscale.store.records`.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Dict, Optional, TextIO

import numpy as np

from ..config.run import RunConfig
from ..config.solver import SolverConfig
from ..solvers.operator import GramOperator
from ..store.gram_store import GramStore
from ..store.records import jsonable
from ..targets import TargetEncoder
from . import dynamics as dynamics_stage
from . import predict as predict_stage
from . import solve as solve_stage
from .context import RunContext, check_complete, encoder, kernel_kind
from .gram import GramPipeline, RunReport


class RunPipeline:
    """Python form of ``ntkscale run``: ``RunPipeline(config).run() -> dict`` of metrics."""

    def __init__(self, config: RunConfig, *, progress: bool = True, stream: Optional[TextIO] = None,
                 client: Any = None):
        self.context = RunContext(config, progress=progress, stream=stream, client=client)
        self.gram_report: Optional[RunReport] = None

    # -- the run's settings and state ------------------------------------------------
    @property
    def config(self) -> RunConfig:
        return self.context.config

    @property
    def solver(self) -> SolverConfig:
        return self.context.solver

    @property
    def task(self) -> str:
        return self.context.task

    @property
    def client(self) -> Any:
        """The Dask client in use (None outside :meth:`cluster` unless one was given)."""
        return self.context.client

    @property
    def products_on_cluster(self) -> bool:
        """Gram products and Cholesky tiles run as tasks on the run's cluster (``solver.products``)."""
        return self.context.products_on_cluster

    def cluster(self) -> contextlib.AbstractContextManager:
        """The run's Dask client for the solver stage (see :meth:`RunContext.cluster`)."""
        return self.context.cluster()

    def open_store(self, mode: str = "r") -> GramStore:
        """The run's store, opened once: ``"r"`` read-only, ``"r+"`` for writing
        (the caller holds the store's lock)."""
        return self.context.writable_store() if mode == "r+" else self.context.store

    # -- helpers over a store ---------------------------------------------------------
    kind = staticmethod(kernel_kind)
    check_complete = staticmethod(check_complete)

    def encoder(self, store: GramStore) -> TargetEncoder:
        return encoder(store, self.task)

    def identity(self, store: GramStore) -> str:
        """What a finished solve depends on (not checkpoint_every)."""
        return solve_stage.identity(self.solver, self.task, store)

    def operator(self, store: GramStore) -> GramOperator:
        return self.context.operator(store)

    def load_solution(self, store: Optional[GramStore] = None) -> Dict[str, Any]:
        """``{"record": ..., "alpha": ...}`` of the finished solve, or an error saying what to run."""
        return solve_stage.solution(self.context)

    # -- stages ----------------------------------------------------------------------
    def gram(self) -> RunReport:
        """Compute the Gram blocks the store is missing."""
        ctx = self.context
        self.gram_report = GramPipeline(ctx.config, progress=ctx.progress, stream=ctx.stream).run(client=ctx.client)
        ctx.forget_store()
        return self.gram_report

    def solve(self) -> Dict[str, Any]:
        """Solve on the stored train Gram (reusing a finished solve); returns the solve record."""
        return solve_stage.solve(self.context)

    def predict(self, record: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """Predict the config's test set from the stored cross Gram; save and return metrics."""
        return predict_stage.predict(self.context)

    def predict_new(self, x: Any) -> np.ndarray:
        """Decoded predictions for new inputs ``x`` (only ``K(x, train)`` is computed)."""
        return predict_stage.predict_new(self.context, x)

    def predict_times(self, times: Any, *, learning_rate: Optional[float] = None,
                      kinds: Any = None) -> Dict[str, "dynamics_stage.TimePredictions"]:
        """Mean test predictions after training for each time in ``times`` (``"1,10,inf"``
        or numbers; ``inf`` is kernel regression), for the solver's kernel or ``kinds``
        (``"nngp"``, ``"ntk"``, a list, or ``"all"``): ``{kind: TimePredictions}``
        (see :func:`ntkscale.stages.dynamics.predict_times`)."""
        return dynamics_stage.predict_times(self.context, times, learning_rate=learning_rate, kinds=kinds)

    def variance(self, x: Any = None, *, block: int = 512) -> np.ndarray:
        """Posterior variance at every test point, or at new inputs ``x``
        (see :func:`ntkscale.stages.predict.variance`)."""
        return predict_stage.variance(self.context, x, block=block)

    def run(self) -> Dict[str, Any]:
        """plan -> gram -> solve -> predict; returns the metrics (also saved in the store)."""
        t0 = time.perf_counter()
        # every check that needs no work first: solver settings are typed at load,
        # inputs (and y) are checked by the Gram stage before any block runs
        solve_stage.check_targets(self.context)
        with self.cluster():    # one cluster for the Gram and the solver when both use it
            t = time.perf_counter()
            rep = self.gram()
            gram_s = time.perf_counter() - t
            rec = self.solve()
        if self.context.store.n_test:
            out = self.predict(rec)
        else:
            out = {"task": rec["task"], "method": rec["method"], "n_train": rec["n_train"], "n_test": 0}
        out["gram"] = {"blocks_computed": rep.blocks_computed, "blocks_done_before": rep.blocks_done_before,
                       "seconds": round(gram_s, 3)}
        out["solve"] = {k: rec.get(k) for k in ("cg_iterations", "cg_resumed_from", "converged", "gram_passes",
                                                "cholesky_tiles_computed", "seconds") if k in rec}
        out["seconds"] = round(time.perf_counter() - t0, 3)
        return jsonable(out)

