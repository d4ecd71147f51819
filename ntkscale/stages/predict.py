"""The predict stage: test-set metrics, predictions for new inputs, posterior variances.

* :func:`predict` -- ``K(test, train) @ alpha`` by row panels of the stored cross
  Gram, for every ridge in one sweep; metrics (accuracy, or MSE and R^2) per ridge;
  the chosen ridge's are the top-level ``test_accuracy``/``test_mse``. Scores,
  labels and metrics are saved in the store's ``predict`` group.
* :func:`predict_new` -- new inputs: only ``K(x, train)`` is computed, nothing stored.
* :func:`variance` -- the NNGP posterior (Rasmussen & Williams 2006, Eq. 2.26) or the
  NTK-GP at t = inf (Lee et al. 2019, Eq. 16).
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Optional

import numpy as np

from ..errors import InputError, StoreReadOnlyError
from ..predict.blocked import cross_operator, nngp_posterior_variance, ntk_posterior_variance
from ..predict.blocked import predict as predict_scores
from ..store.lock import StoreLock
from ..store.records import jsonable, save_predictions
from .context import RunContext, check_complete, encoder, kernel_kind, labels, recompute_kernel_fn
from .solve import ridge_solver, solution


def check_new_inputs(x: Any, x_train: np.ndarray) -> np.ndarray:
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


def predict(ctx: RunContext) -> Dict[str, Any]:
    """Predict the config's test set from the stored cross Gram; save and return metrics."""
    store = ctx.store
    check_complete(store, "test")
    sol = solution(ctx)
    record = sol["record"]
    enc = encoder(store, ctx.task)
    t0 = time.perf_counter()
    kind = kernel_kind(store)
    scores = predict_scores(store.test_array(kind), sol["alpha"])             # (s, m, k)
    y_test = labels(store, "test")
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
    if ctx.solver.ridge_list:
        out["ridges"] = per
        out["chosen_index"] = chosen
    attrs = {"metrics": out, "test_fingerprint": store.fingerprint("test")}
    try:
        with StoreLock(ctx.config.store, command="ntkscale predict"):
            save_predictions(ctx.writable_store().group("predict"), scores, enc.decode(scores[chosen]), attrs)
    except StoreReadOnlyError:
        # reading needs no lock: the predictions stay in memory (``predict -o`` writes them out)
        ctx.say(f"predict: {store.path} is read-only; the predictions are not saved in the store")
        save_predictions(store.keep_in_memory("predict"), scores, enc.decode(scores[chosen]), attrs)
    out["predict_seconds"] = time.perf_counter() - t0
    return jsonable(out)


def predict_new(ctx: RunContext, x: Any) -> np.ndarray:
    """Decoded predictions for new inputs ``x`` against the store: only the new
    cross-kernel blocks ``K(x, train)`` are computed (by row panels, nothing stored)."""
    store = ctx.store
    sol = solution(ctx)
    enc = encoder(store, ctx.task)
    x_train = np.asarray(store.inputs("train")[...])
    x = check_new_inputs(x, x_train)
    chosen = int(sol["record"].get("chosen_index", 0))
    scores = predict_scores(None, sol["alpha"][chosen], kernel_fn=recompute_kernel_fn(store, "predict --x"),
                            x_test=x, x_train=x_train,
                            get=kernel_kind(store))
    return enc.decode(scores)


def variance(ctx: RunContext, x: Optional[Any] = None, *, block: int = 512) -> np.ndarray:
    """Posterior variance at every test point (the config's test set, or new inputs ``x``)
    for the kernel the solver used and its chosen ridge: the NNGP posterior
    (Rasmussen & Williams 2006, Eq. 2.26), or for the NTK the NTK-GP at t = inf
    (Lee et al. 2019, Eq. 16), which also needs the NNGP (``kernel.get: [nngp, ntk]``).

    The stored cross Gram is used for the test set; for ``x`` only ``K(x, train)``
    is computed. Each ``block`` of test points costs one solve with ``block``
    right-hand sides (a Cholesky solve reuses the stored factor tiles).
    """
    store = ctx.store
    record = solution(ctx)["record"]
    kind = kernel_kind(store)
    if kind == "ntk" and "nngp" not in store.kinds:
        raise InputError(f"{store.path} holds only the NTK; the NTK-GP variance needs the NNGP too: set "
                         "kernel.get: [nngp, ntk] and use a new store (or solve with kernel.get: nngp)")
    if x is None:
        check_complete(store, "test")
        crosses = {k: store.test_array(k) for k in ("nngp", kind)}
        test_diag = store.diag("test", "nngp")
    else:
        x_train = np.asarray(store.inputs("train")[...])
        x = check_new_inputs(x, x_train)
        kfn = recompute_kernel_fn(store, "predict --variance with --x")
        crosses = {k: cross_operator(kernel_fn=kfn, x_test=x, x_train=x_train, get=k) for k in ("nngp", kind)}
        test_diag = np.asarray(kfn.diag(x, get="nngp"))
    ridge = float(record["ridges_absolute"][int(record.get("chosen_index", 0))])
    with ctx.cluster():
        op = ctx.operator()
        solve_rhs = ridge_solver(ctx, op, ridge)
        if kind == "nngp":
            return nngp_posterior_variance(test_diag, crosses["nngp"], solve_rhs, block=block)
        return ntk_posterior_variance(test_diag, crosses["nngp"], crosses["ntk"], store.train_array("nngp"),
                                      solve_rhs, block=block)
