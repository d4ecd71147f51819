"""Generate neural-tangents 0.6.5 references for ``ntkscale.predict`` (training
dynamics, GP inference) and the empirical kernels (``ntkscale.stax.empirical``).

Run with the neural-tangents venv's python:

    /root/.cache/ntkscale/nt-venv/bin/python tests/reference/generate_nt_predict.py

Writes tests/reference/nt_predict.npz (float64, jax_enable_x64). Layout:

* ``__meta__`` JSON: versions, the grids (``times``, ``learning_rates``,
  ``diag_regs`` as ``[value, absolute]`` pairs, ``momenta``) and the case names.
* per kernel case ``C`` (``fc``: FC ReLU net on flat inputs, ``conv``: a small
  CNN on 4x4x2 images): ``C__spec`` (JSON spec, neural-tangents' stax names),
  ``C__x_train``, ``C__x_test``, ``C__y_train``, ``C__fx_train_0``,
  ``C__fx_test_0`` and NT's kernels ``C__{nngp,ntk}_{dd,td}``, ``C__nngp_tt``.
* ``gradient_descent_mse`` on kernel ``g`` with learning rate ``i`` and
  ``diag_reg`` ``j``: ``C__gd__g__lr{i}__reg{j}__{train,test}`` at the time grid
  (leading time axis), ``..__{train,test}_inf`` at ``t=None``.
* ``gp_inference`` (``get`` in nngp, ntk, ntkgp; test mean and covariance):
  ``C__gp__reg{j}__{g}__{mean,cov}``.
* ``gradient_descent_mse_ensemble`` (``get=None``, ``compute_cov=True``):
  ``C__ens__lr{i}__reg{j}__{test,train}__{g}__{mean,cov}[_inf]``.
* ``max_learning_rate``: ``C__maxlr__m{k}`` (``y_train_size=y_train.size``),
  ``C__maxlr_none`` (``y_train_size=None``, momentum 0).
* ``traced``: the same for ``trace_axes=()`` with a ``(n, n, k, k)`` kernel.
* empirical kernels, case ``E`` in ``EMPIRICAL``: ``emp__E__spec``, ``emp__E__x1``,
  ``emp__E__x2``, parameters ``emp__E__p{layer}_{W,b}``, and NT's
  ``emp__E__{nngp,ntk}`` (``trace_axes=(-1,)``), ``emp__E__ntk_full``
  (``trace_axes=()``) and ``emp__E__ntk_diag`` (``trace_axes=(), diagonal_axes=(-1,)``).
"""

import collections
import json
import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import neural_tangents as nt  # noqa: E402
from neural_tangents import stax  # noqa: E402

Pair = collections.namedtuple("Pair", "nngp ntk")
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "nt_predict.npz")
SQRT2 = math.sqrt(2.0)

TIMES = [0.0, 0.1, 1.0, 10.0, 100.0, 1e4]
LEARNING_RATES = [1.0, 0.3]
DIAG_REGS = [(0.0, False), (1e-2, False), (1e-3, True)]
MOMENTA = [0.0, 0.9]
_TUPLE_KEYS = {"filter_shape", "strides", "window_shape"}


def build(spec):
    layers = []
    for name, kwargs in spec:
        kw = {k: (tuple(v) if k in _TUPLE_KEYS and v is not None else v) for k, v in kwargs.items()}
        layers.append(getattr(stax, name)(**kw))
    return stax.serial(*layers)


def dense(out_dim, W_std=SQRT2, b_std=0.1, parameterization="ntk"):
    return ["Dense", {"out_dim": out_dim, "W_std": W_std, "b_std": b_std,
                      "parameterization": parameterization}]


def conv(out_chan, filter_shape=(3, 3), padding="SAME", W_std=SQRT2, b_std=0.1, strides=None,
         parameterization="ntk"):
    return ["Conv", {"out_chan": out_chan, "filter_shape": list(filter_shape),
                     "strides": None if strides is None else list(strides), "padding": padding,
                     "W_std": W_std, "b_std": b_std, "parameterization": parameterization}]


RELU = ["Relu", {}]

KERNEL_CASES = {
    # name: (spec, input shape per example, n_train, n_test, n_outputs)
    "fc": ([dense(512), RELU, dense(512), RELU, dense(1)], (6,), 32, 10, 3),
    "conv": ([conv(8), RELU, conv(8, padding="VALID"), ["Erf", {}], ["GlobalAvgPool", {}], dense(1)],
             (4, 4, 2), 20, 8, 2),
}

EMPIRICAL = {
    # name: (spec, per-example input shape, n1, n2)
    "fc": ([dense(48), RELU, dense(40, 1.3, 0.2), ["Erf", {"a": 0.7, "b": 1.3, "c": 0.2}],
            dense(32, 1.1, None), ["Gelu", {"approximate": False}], dense(3)], (5,), 6, 4),
    "fc_standard": ([dense(24, 1.3, 0.2, "standard"), ["LeakyRelu", {"alpha": 0.1}],
                     dense(16, 1.3, 0.0, "standard"), ["Sin", {"a": 0.5, "b": 2.0, "c": 0.3}],
                     dense(2, 1.3, None, "standard")], (5,), 5, 3),
    "conv": ([conv(6), RELU, ["AvgPool", {"window_shape": [2, 2], "strides": [2, 2], "padding": "VALID"}],
              conv(5, (2, 2), "VALID", strides=[1, 1]), ["Abs", {}], ["Flatten", {}], dense(2)],
             (6, 6, 2), 4, 3),
    "conv_gap": ([conv(7, (3, 3), "SAME", 1.5, 0.3, strides=[2, 2]), ["ABRelu", {"a": -0.3, "b": 1.2}],
                  conv(6, (3, 3), "CIRCULAR", 1.2, None), ["Identity", {}],
                  ["AvgPool", {"window_shape": [2, 2], "strides": None, "padding": "SAME"}],
                  ["GlobalAvgPool", {}], dense(3, 1.0, 0.5)], (5, 6, 3), 4, 2),
}


def f64(a):
    return np.asarray(a, dtype=np.float64)


def kernel_case(name, out, rng):
    spec, shape, n_train, n_test, k = KERNEL_CASES[name]
    _, _, kernel_fn = build(spec)
    x_train = rng.standard_normal((n_train,) + shape)
    x_test = rng.standard_normal((n_test,) + shape)
    y_train = rng.standard_normal((n_train, k))
    fx_train_0 = 0.3 * rng.standard_normal((n_train, k))
    fx_test_0 = 0.3 * rng.standard_normal((n_test, k))
    k_dd = kernel_fn(x_train, None)
    k_td = kernel_fn(x_test, x_train)
    nngp_tt = kernel_fn(x_test, None, "nngp")
    p = f"{name}__"
    out.update({p + "spec": np.array(json.dumps(spec)), p + "x_train": x_train, p + "x_test": x_test,
                p + "y_train": y_train, p + "fx_train_0": fx_train_0, p + "fx_test_0": fx_test_0,
                p + "nngp_dd": f64(k_dd.nngp), p + "ntk_dd": f64(k_dd.ntk), p + "nngp_td": f64(k_td.nngp),
                p + "ntk_td": f64(k_td.ntk), p + "nngp_tt": f64(nngp_tt)})
    times = jnp.array(TIMES)
    yj = jnp.array(y_train)
    for g in ("nngp", "ntk"):
        kdd, ktd = getattr(k_dd, g), getattr(k_td, g)
        for i, lr in enumerate(LEARNING_RATES):
            for j, (reg, absolute) in enumerate(DIAG_REGS):
                fn = nt.predict.gradient_descent_mse(kdd, yj, learning_rate=lr, diag_reg=reg,
                                                     diag_reg_absolute_scale=absolute)
                tr, te = fn(times, fx_train_0, fx_test_0, ktd)
                tr_inf, te_inf = fn(None, fx_train_0, fx_test_0, ktd)
                q = f"{p}gd__{g}__lr{i}__reg{j}__"
                out.update({q + "train": f64(tr), q + "test": f64(te), q + "train_inf": f64(tr_inf),
                            q + "test_inf": f64(te_inf)})
    for j, (reg, absolute) in enumerate(DIAG_REGS):
        gp = nt.predict.gp_inference(k_dd, yj, diag_reg=reg, diag_reg_absolute_scale=absolute)
        res = gp(("nngp", "ntk", "ntkgp"), k_td, Pair(nngp_tt, kernel_fn(x_test, None, "ntk")))
        for g in ("nngp", "ntk", "ntkgp"):
            out[f"{p}gp__reg{j}__{g}__mean"] = f64(getattr(res, g).mean)
            out[f"{p}gp__reg{j}__{g}__cov"] = f64(getattr(res, g).covariance)
        out[f"{p}ntk_tt"] = f64(kernel_fn(x_test, None, "ntk"))
    for i, lr in enumerate(LEARNING_RATES):
        for j, (reg, absolute) in enumerate(DIAG_REGS):
            ens = nt.predict.gradient_descent_mse_ensemble(kernel_fn, x_train, yj, learning_rate=lr,
                                                           diag_reg=reg, diag_reg_absolute_scale=absolute)
            q = f"{p}ens__lr{i}__reg{j}__"
            for where, xt in (("test", x_test), ("train", None)):
                for tag, t in (("", times), ("_inf", None)):
                    res = ens(t, xt, None, compute_cov=True)
                    for g in ("nngp", "ntk"):
                        out[f"{q}{where}__{g}__mean{tag}"] = f64(getattr(res, g).mean)
                        out[f"{q}{where}__{g}__cov{tag}"] = f64(getattr(res, g).covariance)
    for m, momentum in enumerate(MOMENTA):
        out[f"{p}maxlr__m{m}"] = np.array(float(nt.predict.max_learning_rate(
            k_dd.ntk, y_train_size=y_train.size, momentum=momentum)))
    out[f"{p}maxlr_none"] = np.array(float(nt.predict.max_learning_rate(k_dd.ntk)))


def traced_case(out, rng):
    """``trace_axes=()``: a (n, n, k, k) kernel, Kronecker product of an FC NTK with
    a random positive-definite output covariance."""
    _, _, kernel_fn = build(KERNEL_CASES["fc"][0])
    n, m, k = 12, 5, 2
    x_train, x_test = rng.standard_normal((n, 4)), rng.standard_normal((m, 4))
    a = rng.standard_normal((k, k))
    out_cov = a @ a.T + 0.5 * np.eye(k)
    k_dd = np.einsum("ij,ab->iajb", f64(kernel_fn(x_train, None, "ntk")), out_cov).transpose(0, 2, 1, 3)
    k_td = np.einsum("ij,ab->iajb", f64(kernel_fn(x_test, x_train, "ntk")), out_cov).transpose(0, 2, 1, 3)
    y = rng.standard_normal((n, k))
    fx0, fxt0 = 0.2 * rng.standard_normal((n, k)), 0.2 * rng.standard_normal((m, k))
    out.update({"traced__k_dd": k_dd, "traced__k_td": k_td, "traced__y_train": y, "traced__fx_train_0": fx0,
                "traced__fx_test_0": fxt0})
    fn = nt.predict.gradient_descent_mse(jnp.array(k_dd), jnp.array(y), learning_rate=0.5, diag_reg=1e-3,
                                         trace_axes=())
    tr, te = fn(jnp.array(TIMES), fx0, fxt0, jnp.array(k_td))
    tr_inf, te_inf = fn(None, fx0, fxt0, jnp.array(k_td))
    out.update({"traced__train": f64(tr), "traced__test": f64(te), "traced__train_inf": f64(tr_inf),
                "traced__test_inf": f64(te_inf)})
    gp = nt.predict.gp_inference(jnp.array(k_dd), jnp.array(y), diag_reg=1e-3, trace_axes=())
    out["traced__gp_mean"] = f64(gp("ntk", jnp.array(k_td)))


def empirical_case(name, out, rng):
    spec, shape, n1, n2 = EMPIRICAL[name]
    init_fn, apply_fn, _ = build(spec)
    x1 = rng.standard_normal((n1,) + shape)
    x2 = rng.standard_normal((n2,) + shape)
    _, params = init_fn(jax.random.PRNGKey(int(rng.integers(1 << 30))), (-1,) + shape)
    p = f"emp__{name}__"
    out.update({p + "spec": np.array(json.dumps(spec)), p + "x1": x1, p + "x2": x2})
    for i, layer in enumerate(params):
        if layer == ():
            continue
        W, b = layer
        out[f"{p}p{i}_W"] = f64(W)
        if b is not None:
            out[f"{p}p{i}_b"] = f64(b)
    out[p + "nngp"] = f64(nt.empirical_nngp_fn(apply_fn)(x1, x2, params))
    out[p + "ntk"] = f64(nt.empirical_ntk_fn(apply_fn)(x1, x2, params))
    out[p + "ntk_full"] = f64(nt.empirical_ntk_fn(apply_fn, trace_axes=())(x1, x2, params))
    out[p + "ntk_diag"] = f64(nt.empirical_ntk_fn(apply_fn, trace_axes=(), diagonal_axes=(-1,))(x1, x2, params))
    out[p + "nngp_self"] = f64(nt.empirical_nngp_fn(apply_fn)(x1, None, params))
    out[p + "ntk_self"] = f64(nt.empirical_ntk_fn(apply_fn)(x1, None, params))


def main():
    rng = np.random.default_rng(20240613)
    out = {}
    for name in KERNEL_CASES:
        kernel_case(name, out, rng)
    traced_case(out, rng)
    for name in EMPIRICAL:
        empirical_case(name, out, rng)
    meta = {"neural_tangents": nt.__version__, "jax": jax.__version__, "times": TIMES,
            "learning_rates": LEARNING_RATES, "diag_regs": DIAG_REGS, "momenta": MOMENTA,
            "kernel_cases": list(KERNEL_CASES), "empirical_cases": list(EMPIRICAL)}
    out["__meta__"] = np.array(json.dumps(meta))
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT}: {len(out)} arrays, {os.path.getsize(OUT) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
