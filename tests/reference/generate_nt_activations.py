"""neural-tangents 0.6.5 reference kernels for the remaining activations and SumPool (issue 12).

Run with the neural-tangents venv's python:

    /root/.cache/ntkscale/nt-venv/bin/python tests/reference/generate_nt_activations.py

Writes tests/reference/nt_activations.npz in the format of generate_nt_reference.py
(NAME__x1, NAME__x2, NAME__x2_is_none, NAME__nngp, NAME__ntk, NAME__spec, __cases__,
__meta__), float64. Every network is computed twice: ``NAME_sym`` (kernel_fn(x1, None))
and ``NAME_cross`` (x1 against a different x2). Inputs hold parallel and anti-parallel
rows (x and -x/2, 2x), also across x1/x2. Specs use ntkscale's canonical names:
``ElementwiseNumerical``'s ``fn``/``df`` are names of the function registry
(ntkscale/stax/layers/numerical.py), mapped here to the same jax functions.
"""

import json
import math
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import neural_tangents as nt  # noqa: E402
from neural_tangents import stax  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "nt_activations.npz")
SQRT2 = math.sqrt(2.0)
_TUPLE_KEYS = {"filter_shape", "strides", "window_shape"}

#: ntkscale's function registry names -> the jax functions neural-tangents integrates
JAX_FUNCTIONS = {
    "tanh": jnp.tanh, "softplus": jax.nn.softplus, "swish": jax.nn.swish, "silu": jax.nn.silu,
    "sigmoid": jax.nn.sigmoid, "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True), "elu": jax.nn.elu,
    "selu": jax.nn.selu, "relu": jax.nn.relu, "erf": jax.scipy.special.erf, "sin": jnp.sin,
    "cos": jnp.cos, "exp": jnp.exp, "mish": jax.nn.mish, "softsign": jax.nn.soft_sign,
    "abs": jnp.abs, "identity": lambda x: x, "leaky_relu": jax.nn.leaky_relu,
    "hard_tanh": jax.nn.hard_tanh,
}


def build(spec):
    layers = []
    for name, kwargs in spec:
        kw = {k: (tuple(v) if k in _TUPLE_KEYS and isinstance(v, list) else v)
              for k, v in kwargs.items()}
        if name == "ElementwiseNumerical":
            kw["fn"] = JAX_FUNCTIONS[kw["fn"]]
            if kw.get("df") is not None:
                kw["df"] = JAX_FUNCTIONS[kw["df"]]
        layers.append(getattr(stax, name)(**kw))
    return stax.serial(*layers)


def dense(out_dim, W_std=1.3, b_std=0.1, p="ntk"):
    return ["Dense", {"out_dim": out_dim, "W_std": W_std, "b_std": b_std, "parameterization": p}]


def conv(out_chan, W_std=1.3, b_std=0.1, p="ntk", padding="SAME", strides=None):
    return ["Conv", {"out_chan": out_chan, "filter_shape": [3, 3], "strides": strides,
                     "padding": padding, "W_std": W_std, "b_std": b_std, "parameterization": p}]


def numerical(fn, deg=25, df=None):
    return ["ElementwiseNumerical", {"fn": fn, "deg": deg, "df": df}]


ACTS = {
    "sigmoid_like": ["Sigmoid_like", {}],
    "rbf": ["Rbf", {"gamma": 0.7}],
    "gaussian": ["Gaussian", {"a": 1.2, "b": -0.8}],
    "gaussian_pos": ["Gaussian", {"a": 0.9, "b": 0.05}],
    "exp": ["Exp", {"a": 0.5, "b": 0.6}],
    "expnormalized": ["ExpNormalized", {"gamma": 0.8, "shift": -1.0, "do_clip": False}],
    "expnormalized_clip": ["ExpNormalized", {"gamma": 1.5, "shift": -0.5, "do_clip": True}],
    "cos": ["Cos", {"a": 1.1, "b": 1.4, "c": 0.3}],
    "sign": ["Sign", {}],
    "gabor": ["Gabor", {}],
    "polynomial": ["Polynomial", {"coef": [0.1, 1.0, 0.5, -0.2]}],
    "polynomial_even": ["Polynomial", {"coef": [0.3, 0.0, -0.4, 0.0, 0.1]}],
    "rectmono0": ["RectifiedMonomial", {"degree": 0}],
    "rectmono1": ["RectifiedMonomial", {"degree": 1}],
    "rectmono2": ["RectifiedMonomial", {"degree": 2}],
    "rectmono3": ["RectifiedMonomial", {"degree": 3}],
    "num_tanh": numerical("tanh"),
    "num_softplus_df": numerical("softplus", 25, "sigmoid"),
    "num_swish": numerical("swish", 21),
    "num_gelu": numerical("gelu"),
    "num_gelu_tanh": numerical("gelu_tanh", 20),
    "num_elu": numerical("elu", 30),
    "num_selu": numerical("selu", 30),
    "num_sigmoid": numerical("sigmoid", 15),
    "num_erf": numerical("erf"),
    "num_sin": numerical("sin", 25),
    "num_mish": numerical("mish", 25),
    "num_softsign": numerical("softsign", 24),
    "num_relu": numerical("relu", 24),
}
for d in range(6):
    ACTS[f"monomial{d}"] = ["Monomial", {"degree": d}]

CASES = {f"fc_{k}": ("fc", [dense(8, 1.2, 0.1), a, dense(8, 1.1, 0.2), a, dense(1, 1.3, 0.05)])
         for k, a in ACTS.items() if k != "gaussian_pos" and not k.startswith("rectmono")}
for d in range(4):
    # neural-tangents' RectifiedMonomial differentiates arccos: NaN on (anti)parallel pairs,
    # so one such layer, whose NaNs stay on those pairs (the test compares the finite entries)
    CASES[f"fc_rectmono{d}"] = ("fc", [dense(8, 1.2, 0.1), ACTS[f"rectmono{d}"], dense(1, 1.3, 0.05)])
CASES["fc_rectmono2_standard"] = ("fc", [dense(8, 1.2, 0.1, "standard"), ACTS["rectmono2"],
                                         dense(1, 1.3, 0.05, "standard")])
CASES["fc_gaussian_pos"] = ("fc", [dense(8, 1.0, 0.1), ACTS["gaussian_pos"], dense(1, 1.3, 0.05)])
for d in range(5):
    # unit-variance inputs, W_std=1, no bias: q = 1 at the Hermite layer
    CASES[f"fc_hermite{d}"] = ("unit", [dense(8, 1.0, None), ["Hermite", {"degree": d}],
                                        dense(1, 1.3, 0.05)])
for k in ("sign", "gabor", "num_tanh", "polynomial", "exp", "expnormalized"):
    CASES[f"fc_{k}_standard"] = ("fc", [dense(8, 1.2, 0.1, "standard"), ACTS[k],
                                        dense(8, 1.1, 0.2, "standard"), ACTS[k],
                                        dense(1, 1.3, 0.05, "standard")])

GAP, FLAT, GSP = ["GlobalAvgPool", {}], ["Flatten", {}], ["GlobalSumPool", {}]
RELU, ERF = ["Relu", {}], ["Erf", {}]
CASES.update({
    "img_gabor_gap": ("img", [conv(3), ACTS["gabor"], conv(3), ACTS["gabor"], GAP, dense(1)]),
    "img_rbf_flatten": ("img", [conv(3), ACTS["rbf"], conv(3), ACTS["rbf"], FLAT, dense(1)]),
    "img_rectmono2_avgpool": ("img", [conv(3), ["Relu", {}],
                                      ["AvgPool", {"window_shape": [2, 2], "strides": [2, 2]}],
                                      conv(3), ACTS["rectmono2"], GAP, dense(1)]),
    "img_num_softplus_gap": ("img", [conv(3), numerical("softplus", 15), conv(3), GAP, dense(1)]),
    "img_polynomial_gsp": ("img", [conv(3), ACTS["polynomial"], conv(3), ACTS["monomial3"], GSP,
                                   dense(1)]),
    "img_sign_flatten": ("img", [conv(3), ACTS["sign"], conv(3), ACTS["cos"], FLAT, dense(1)]),
    "img_exp_gaussian_gap": ("img", [conv(3, 0.9), ACTS["exp"], conv(3, 0.8), ACTS["gaussian"],
                                     GAP, dense(1)]),
    "img_expnormalized_sigmoid_gap": ("img", [conv(3), ACTS["expnormalized"], conv(3),
                                              ACTS["sigmoid_like"], GAP, dense(1)]),
    "img_standard_gabor_gsp": ("img", [conv(3, p="standard"), ACTS["gabor"], conv(3, p="standard"),
                                       ACTS["monomial2"], GSP, dense(1, p="standard")]),
    # new activations in the flat tail of a slab-path network (cpu_slab runs the tail's maps)
    "img_tail_after_gap": ("img", [conv(3), RELU, GAP, dense(8), ACTS["gabor"], dense(8),
                                   ACTS["polynomial"], dense(8), ACTS["rectmono2"], dense(1)]),
    "img_tail_after_flatten": ("img", [conv(3), ERF, FLAT, dense(8), ACTS["sign"], dense(8),
                                       ACTS["rbf"], dense(8), ACTS["exp"], dense(1)]),
    # SumPool / GlobalSumPool
    "img_sumpool_gsp": ("img", [conv(3), RELU, ["SumPool", {"window_shape": [2, 2], "strides": [2, 2]}],
                                conv(3), RELU, GSP, dense(1)]),
    "img_sumpool_same_flatten": ("img", [conv(3), ERF, ["SumPool", {"window_shape": [3, 3],
                                                                    "padding": "SAME"}],
                                         conv(3), RELU, FLAT, dense(1)]),
    "img_sumpool_valid_gap": ("img", [conv(3), RELU, ["SumPool", {"window_shape": [2, 3],
                                                                  "strides": [1, 2]}],
                                      conv(3), RELU, GAP, dense(1)]),
    "img_sumpool_circular_standard": ("img", [conv(3, p="standard", padding="CIRCULAR"), RELU,
                                              ["SumPool", {"window_shape": [2, 2], "strides": [2, 2],
                                                           "padding": "CIRCULAR"}],
                                              conv(3, p="standard"), RELU, GSP,
                                              dense(1, p="standard")]),
})


def inputs(kind, rng):
    if kind in ("fc", "unit"):
        x1 = rng.standard_normal((6, 5))
        x2 = rng.standard_normal((4, 5))
        x1[1] = -0.5 * x1[0]
        x1[2] = 2.0 * x1[0]
        x2[0] = 1.5 * x1[3]
        x2[1] = -x1[0]
        if kind == "unit":
            x1 /= np.sqrt(np.mean(x1 ** 2, axis=1, keepdims=True))
            x2 /= np.sqrt(np.mean(x2 ** 2, axis=1, keepdims=True))
        return x1, x2
    x1 = 0.8 * rng.standard_normal((4, 6, 6, 2))
    x2 = 0.8 * rng.standard_normal((3, 6, 6, 2))
    x1[1] = -0.5 * x1[0]
    x2[0] = 1.5 * x1[2]
    x2[1] = -x1[0]
    return x1, x2


def main():
    rng = np.random.default_rng(125)
    data, names = {}, []
    for name, (kind, spec) in CASES.items():
        _, _, kfn = build(spec)
        x1, x2 = inputs(kind, rng)
        for tag, other in (("sym", None), ("cross", x2)):
            case = f"{name}_{tag}"
            t0 = time.perf_counter()
            k = kfn(x1, other, ("nngp", "ntk"))
            nngp, ntk = np.asarray(k[0]), np.asarray(k[1])
            finite = min(np.isfinite(nngp).mean(), np.isfinite(ntk).mean())
            if finite <= 0.5:
                print("SKIP (non-finite in neural-tangents):", case)
                continue
            data[f"{case}__x1"] = x1
            data[f"{case}__x2"] = x1 if other is None else other
            data[f"{case}__x2_is_none"] = np.array(int(other is None))
            data[f"{case}__nngp"] = nngp
            data[f"{case}__ntk"] = ntk
            data[f"{case}__spec"] = np.array(json.dumps(spec))
            names.append(case)
            print(case, ntk.ravel()[:2], f"{time.perf_counter() - t0:.1f}s", flush=True)
    data["__cases__"] = np.array(json.dumps(names))
    data["__meta__"] = np.array(json.dumps({"neural_tangents": nt.__version__, "jax": jax.__version__,
                                            "dtype": "float64"}))
    np.savez_compressed(OUT, **data)
    print("wrote", OUT, len(names), "cases")


if __name__ == "__main__":
    main()
