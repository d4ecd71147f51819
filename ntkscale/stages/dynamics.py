"""The training-dynamics stage: ``ntkscale predict CONFIG --time T1,T2,...`` on the stored Gram.

For each kernel asked for (the solver's by default: the NTK when the store holds it,
the NNGP for "only the readout trained"), the mean test outputs of the infinite
network trained by gradient descent on the MSE for time ``t``, from zero initial
outputs (Lee et al. 2019, Eqs. 9-16; neural-tangents' ``gradient_descent_mse``)::

    f_test(t) = K_* g_t(K + diag_reg I) Y,   g_t(λ) = (1 - exp(-η t λ / N)) / λ,   N = Y.size

``Y`` the encoded targets, ``η`` ``solver.learning_rate`` (or ``--learning-rate``), and
``diag_reg`` the run's ridge (relative to the mean diagonal of *that* kernel unless
``ridge_relative: false``, neural-tangents' ``diag_reg`` convention); ``t = inf`` is
the kernel regression of ``ntkscale solve``. All times come from one Lanczos run on
the train Gram operator (:func:`ntkscale.predict.krylov.lanczos_dynamics`), whose basis
is kept in the store's ``solver/lanczos_<kind>``: a killed run resumes where it stopped
and a rerun with other times or learning rate reuses it (the basis does not depend on
them). One sweep of the stored test Gram then gives every time's predictions and the
error estimate; they are saved in ``predict/dynamics_<kind>`` (``f_test`` (T, m, k) and
the metrics per time), which ``ntkscale report`` plots.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..errors import InputError, StoreReadOnlyError
from ..predict.blocked import predict as predict_scores
from ..predict.krylov import (ZarrLanczos, error_estimate, flow_scales, lanczos_dynamics, parse_times,
                              problem_identity)
from ..solvers.operator import GramOperator, make_operator
from ..store.lock import StoreLock
from ..store.records import jsonable
from ..targets import TargetEncoder
from .context import RunContext, check_complete, encoder, kernel_kind, labels
from .solve import solution

#: Bumped when a stored Lanczos basis can no longer be reused by this code.
DYNAMICS_FORMAT = 1
#: Seconds between progress lines.
PROGRESS_EVERY = 5.0


@dataclass
class TimePredictions:
    """One kernel's predictions at every time: ``f_test`` (T, m, k) in the encoded target
    space, ``labels`` (T, m) decoded, ``y_train`` as encoded, ``metrics`` (lists per time)."""

    kind: str
    times: np.ndarray
    f_test: np.ndarray
    labels: np.ndarray
    y_train: np.ndarray
    learning_rate: float
    diag_reg: float
    metrics: Dict[str, Any] = field(default_factory=dict)


def times_json(times: Sequence[float]) -> List[Any]:
    """Times for JSON and Zarr attributes: ``inf`` as the string ``"inf"``."""
    return [float(t) if math.isfinite(t) else "inf" for t in times]


def times_from_json(values: Sequence[Any]) -> np.ndarray:
    return np.asarray([float(v) for v in values], dtype=np.float64)


def learning_rate_of(ctx: RunContext, learning_rate: Optional[float]) -> float:
    lr = ctx.solver.learning_rate if learning_rate is None else learning_rate
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise InputError(f"the learning rate must be a finite number > 0; got {lr!r} "
                         "(solver.learning_rate or --learning-rate)")
    return float(lr)


def kinds_of(ctx: RunContext, kinds: Any) -> List[str]:
    """The kernels to run: None -> the solver's; ``"all"`` -> every kernel in the store."""
    store = ctx.store
    if kinds is None:
        return [kernel_kind(store)]
    if kinds == "all":
        return list(store.kinds)
    out = [kinds] if isinstance(kinds, str) else list(kinds)
    bad = [k for k in out if k not in store.kinds]
    if bad or not out:
        raise InputError(f"{store.path} holds {', '.join(store.kinds)}; cannot run the dynamics of "
                         f"{', '.join(bad) or 'no kernel'} (choose among those, or 'all')")
    return out


def relative_ridge(ctx: RunContext) -> Optional[float]:
    """The run's ridge relative to the mean diagonal (None: absolute, see :func:`absolute_ridge`);
    with a ridge list the solve's validated choice (the solve must exist)."""
    sv = ctx.solver
    if sv.ridge_list and len(sv.ridge) > 1:
        rec = solution(ctx)["record"]
        return float(rec["ridges_relative"][int(rec.get("chosen_index", 0))])
    return float(sv.ridge[0]) if sv.ridge_relative else None


def operator_for(ctx: RunContext, kind: str) -> GramOperator:
    """The train Gram of ``kind`` as an operator (the run's mode and cluster settings)."""
    store, sv = ctx.store, ctx.solver
    x = np.asarray(store.inputs("train")[...]) if sv.mode != "stored" else None
    return make_operator(mode=sv.mode, array=store.train_array(kind), diagonal=store.diag("train", kind),
                         kernel_fn=store.kernel_fn() if x is not None else None, x=x, get=kind, mirrored=True,
                         client=ctx.client if ctx.products_on_cluster else None)


def predict_times(ctx: RunContext, times: Any, *, learning_rate: Optional[float] = None,
                  kinds: Any = None) -> Dict[str, TimePredictions]:
    """Mean test predictions at every time in ``times`` (``"1,10,inf"`` or numbers) for each
    kernel in ``kinds``; returns ``{kind: TimePredictions}`` and saves them in the store."""
    t_arr = parse_times(times)                        # bad times: an error before anything is opened
    lr = learning_rate_of(ctx, learning_rate)
    store = ctx.store
    check_complete(store, "train")
    check_complete(store, "test")
    enc = encoder(store, ctx.task)
    Y = np.asarray(enc.transform(labels(store, "train"), "y_train"), dtype=np.float64)
    rel = relative_ridge(ctx)
    out = {}
    with ctx.cluster():
        for kind in kinds_of(ctx, kinds):
            out[kind] = _one_kind(ctx, kind, t_arr, lr, Y, enc, rel)
    return out


def _record_group(ctx: RunContext, name: str, writable: bool) -> Any:
    """``solver/<name>`` for writing, or an in-memory group when the store is read-only."""
    if writable:
        return ctx.writable_store().group("solver").require_group(name)
    ctx.say(f"predict: {ctx.store.path} is read-only; the Lanczos basis is kept in memory only and the "
            "predictions are not saved in the store")
    import zarr  # heavy import, kept out of `import ntkscale`

    return zarr.open_group(zarr.storage.MemoryStore(), mode="w")


def _one_kind(ctx: RunContext, kind: str, times: np.ndarray, lr: float, Y: np.ndarray, enc: TargetEncoder,
              rel: Optional[float]) -> TimePredictions:
    store, sv = ctx.store, ctx.solver
    t0 = time.perf_counter()
    op = operator_for(ctx, kind)
    mean_diag = op.mean_diagonal()
    diag_reg = rel * mean_diag if rel is not None else float(sv.ridge[0])
    a_values = flow_scales(times, lr, Y.size)
    n, k = Y.shape
    ident = problem_identity(DYNAMICS_FORMAT, store.spec_hash, store.fingerprint("train"), kind, diag_reg, Y)
    key = problem_identity(ident, times_json(times), lr, sv.tol, sv.maxiter, store.fingerprint("test"))
    saved = _saved(store, kind, key)
    if saved is not None:
        ctx.say(f"predict: reusing the {kind} dynamics at {len(times)} times in {store.path}/predict")
        return _finish(saved["f_test"], saved["metrics"], kind, times, lr, diag_reg, Y, enc)
    ctx.say(f"predict: {kind} dynamics at {len(times)} time(s), learning rate {lr:g}, diag_reg {diag_reg:.3g} "
            f"(N = {Y.size}); Lanczos on the {n}x{n} Gram ({op.mode}), {k} column(s)")
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(StoreLock(ctx.config.store, command="ntkscale predict --time"))
            writable = True
        except StoreReadOnlyError:    # reading needs no lock: the basis and results stay in memory
            writable = False
        group = _record_group(ctx, f"lanczos_{kind}", writable)
        record = ZarrLanczos(group, ident, (n, k))
        res = lanczos_dynamics(op.with_ridge(diag_reg).matmat, Y, a_values, rtol=sv.tol,
                               maxiter=sv.maxiter or n, record=record,
                               progress=lambda j, ch, s: ctx.say(
                                   f"predict: Lanczos step {j} ({kind}), largest relative change {ch:.2g}, "
                                   f"{s:.1f} s"),
                               progress_every=PROGRESS_EVERY)
        T_ = len(times)
        three = np.concatenate([res.u, res.u_prev, res.u_prev2]).transpose(1, 0, 2).reshape(n, 3 * T_ * k)
        f = predict_scores(store.test_array(kind), three).reshape(-1, 3, T_, k).transpose(1, 2, 0, 3)
        f_test = f[0]                                          # (T, m, k); f[1], f[2]: d and 2d steps before
        est = error_estimate(f[0], f[1], f[2])
        metrics: Dict[str, Any] = {
            "kernel": kind, "times": times_json(times), "learning_rate": lr, "diag_reg": diag_reg,
            "diag_reg_relative": rel, "N": int(Y.size), "n_train": n, "n_test": int(f_test.shape[1]),
            "train_loss": (np.sum(res.train_residual ** 2, axis=1) / (2 * Y.size)).tolist(),
            "error_estimate": est.tolist(), "train_output_change": res.change.tolist(),
            "lanczos_steps": res.steps, "lanczos_resumed_from": res.resumed_from, "gram_passes": res.products,
            "converged": res.converged, "tol": sv.tol}
        y_test = labels(store, "test")
        if y_test is not None:
            per = [enc.metrics(f_test[i], y_test, prefix="test_") for i in range(T_)]
            for name in per[0]:
                metrics[name] = [p[name] for p in per]
        metrics["seconds"] = time.perf_counter() - t0
        if not res.converged:
            ctx.say(f"predict: warning: the {kind} Lanczos run stopped at solver.maxiter = {res.steps} steps with "
                    f"a relative change of {float(np.max(res.change)):.2g} > tol {sv.tol:g}; raise solver.maxiter")
        if writable:
            _save(ctx, kind, key, f_test, metrics)
    ctx.say(f"predict: {kind} dynamics done in {metrics['seconds']:.1f} s, {res.steps} Lanczos steps"
            + (f" (resumed from step {res.resumed_from})" if res.resumed_from else "")
            + f", largest error estimate {float(np.max(est)):.2g}")
    return _finish(f_test, metrics, kind, times, lr, diag_reg, Y, enc)


def _finish(f_test: np.ndarray, metrics: Dict[str, Any], kind: str, times: np.ndarray, lr: float,
            diag_reg: float, Y: np.ndarray, enc: TargetEncoder) -> TimePredictions:
    decoded = np.stack([np.asarray(enc.decode(f_test[i])) for i in range(len(times))])
    return TimePredictions(kind=kind, times=times, f_test=f_test, labels=decoded, y_train=Y, learning_rate=lr,
                           diag_reg=diag_reg, metrics=jsonable(metrics))


def _saved(store: Any, kind: str, key: str) -> Optional[Dict[str, Any]]:
    try:
        g = store.group("predict")[f"dynamics_{kind}"]
        attrs = dict(g.attrs)
        if attrs.get("key") != key:
            return None
        return {"f_test": np.asarray(g["f_test"][...]), "metrics": attrs["metrics"]}
    except (KeyError, FileNotFoundError):
        return None


def _save(ctx: RunContext, kind: str, key: str, f_test: np.ndarray, metrics: Dict[str, Any]) -> None:
    g = ctx.writable_store().group("predict").require_group(f"dynamics_{kind}")
    g.attrs.put({"key": None})          # invalid until the array and the metrics are both written
    arr = g.create_array("f_test", shape=f_test.shape, dtype="float64", chunks=(1,) + f_test.shape[1:],
                         compressors=None, overwrite=True)
    arr[...] = f_test
    g.attrs.put(jsonable({"key": key, "metrics": metrics}))


def stored_dynamics(store: Any) -> Dict[str, Dict[str, Any]]:
    """``{kind: metrics}`` of the dynamics saved in ``store`` (for ``ntkscale report``)."""
    out: Dict[str, Dict[str, Any]] = {}
    try:
        group = store.group("predict")
    except (KeyError, FileNotFoundError):
        return out
    for kind in store.kinds:
        try:
            attrs = dict(group[f"dynamics_{kind}"].attrs)
        except (KeyError, FileNotFoundError):
            continue
        if attrs.get("key") and attrs.get("metrics"):
            out[kind] = attrs["metrics"]
    return out
