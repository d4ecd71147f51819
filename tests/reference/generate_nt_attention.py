"""neural-tangents 0.6.5 reference kernels for sequences, attention and graphs (issue 12).

Run with the neural-tangents venv's python:

    /root/.cache/ntkscale/nt-venv/bin/python tests/reference/generate_nt_attention.py

Writes tests/reference/nt_attention.npz (NWC sequences: 1-D Conv/AvgPool, every
GlobalSelfAttention mechanism and positional embedding, the transformer preset; one
NHWC image case) and tests/reference/nt_graph.npz (Aggregate with patterns) in the
format of generate_nt_reference.py (NAME__x1, NAME__x2, NAME__x2_is_none, NAME__nngp,
NAME__ntk, NAME__spec, __cases__, __meta__; graph cases add NAME__pattern1 and
NAME__pattern2). Every network is computed twice: ``NAME_sym`` (kernel_fn(x1, None))
and ``NAME_cross`` (x1 against a different x2). float64. Specs use stax names and
keywords; ``pos_emb_decay_fn`` is ntkscale's data form ({"name": ..., parameter: value}),
turned into the function neural-tangents takes here.
"""

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

HERE = os.path.dirname(os.path.abspath(__file__))
SQRT2 = math.sqrt(2.0)
_TUPLE_KEYS = {"filter_shape", "strides", "window_shape", "axis", "aggregate_axis"}
DECAYS = {
    "exponential": lambda length_scale: (lambda d: jnp.exp(-d / length_scale)),
    "power": lambda exponent: (lambda d: (1.0 + d) ** (-exponent)),
}


def _decay(spec):
    if spec is None:
        return None
    params = {k: v for k, v in spec.items() if k != "name"}
    return DECAYS[spec["name"]](**params)


def build(spec):
    layers = []
    for name, kwargs in spec:
        if name == "parallel":
            layers.append(stax.parallel(*[build(b) for b in kwargs["branches"]]))
            continue
        kw = {k: (tuple(v) if k in _TUPLE_KEYS and isinstance(v, list) else v)
              for k, v in kwargs.items()}
        if "pos_emb_decay_fn" in kw:
            kw["pos_emb_decay_fn"] = _decay(kw["pos_emb_decay_fn"])
        layers.append(getattr(stax, name)(**kw))
    return stax.serial(*layers)


def dense(out_dim, W_std=1.5, b_std=0.1):
    return ["Dense", {"out_dim": out_dim, "W_std": W_std, "b_std": b_std}]


def attn(mech="SOFTMAX", pe="NONE", linear=True, b_std=0.2, **extra):
    kw = {"n_chan_out": 6, "n_chan_key": 5, "n_chan_val": 4, "n_heads": 2, "linear_scaling": linear,
          "W_key_std": 1.3, "W_value_std": 0.9, "W_query_std": 0.7, "W_out_std": 1.1, "b_std": b_std,
          "attention_mechanism": mech, "pos_emb_type": pe, "W_pos_emb_std": 0.8}
    kw.update(extra)
    return ["GlobalSelfAttention", kw]


RELU, ERF, IDENT, GAP, FLAT = ["Relu", {}], ["Erf", {}], ["Identity", {}], ["GlobalAvgPool", {}], ["Flatten", {}]
LN = ["LayerNorm", {"axis": -1, "eps": 1e-12}]


def head(layers, end=GAP):
    return layers + [RELU, end, dense(1, 1.2, 0.1)]


def block(main, shortcut):
    return [["FanOut", {"num": 2}], ["parallel", {"branches": [main, shortcut]}], ["FanInSum", {}]]


def transformer_spec(depth=2, width=16, n_heads=2, mlp_width=32, mechanism="SOFTMAX", pe="SUM",
                     W_std=1.0, b_std=0.1, out_dim=1, eps=1e-6):
    """ntkscale.stax.presets.transformer(depth, width=..., ...) layer for layer."""
    spec = [["Dense", {"out_dim": width, "W_std": W_std, "b_std": b_std}]]
    for _ in range(depth):
        att = ["GlobalSelfAttention", {"n_chan_out": width, "n_chan_key": width, "n_chan_val": width,
                                       "n_heads": n_heads, "attention_mechanism": mechanism,
                                       "pos_emb_type": pe, "b_std": b_std}]
        spec += block([["LayerNorm", {"axis": -1, "eps": eps}], att], [IDENT])
        spec += block([["LayerNorm", {"axis": -1, "eps": eps}],
                       ["Dense", {"out_dim": mlp_width, "W_std": W_std, "b_std": b_std}], RELU,
                       ["Dense", {"out_dim": width, "W_std": W_std, "b_std": b_std}]], [IDENT])
    spec += [["LayerNorm", {"axis": -1, "eps": eps}], GAP,
             ["Dense", {"out_dim": out_dim, "W_std": W_std, "b_std": b_std}]]
    return spec


CASES = {}
for mech in ("SOFTMAX", "IDENTITY", "ABS", "RELU"):
    m = mech.lower()
    CASES[f"seq_attn_{m}_none"] = ("seq", head([attn(mech)]))
    CASES[f"seq_attn_{m}_sum"] = ("seq", head([attn(mech, "SUM")]))
    CASES[f"seq_attn_{m}_concat"] = ("seq", head([attn(mech, "CONCAT")]))
    CASES[f"seq_attn_{m}_sum_val"] = ("seq", head([attn(mech, "SUM", val_pos_emb=True)]))
CASES.update({
    "seq_attn_softmax_concat_nchan": ("seq", head([dense(7), attn("SOFTMAX", "CONCAT", n_chan_pos_emb=3)])),
    "seq_attn_relu_concat_val_nchan": ("seq", head([dense(7), attn("RELU", "CONCAT", n_chan_pos_emb=9,
                                                                   val_pos_emb=True)])),
    "seq_attn_softmax_decay_exp_p1": ("seq", head([attn("SOFTMAX", "SUM", pos_emb_p_norm=1,
                                                        pos_emb_decay_fn={"name": "exponential",
                                                                          "length_scale": 2.0})])),
    "seq_attn_abs_decay_power_p2": ("seq", head([attn("ABS", "CONCAT", pos_emb_p_norm=2,
                                                      pos_emb_decay_fn={"name": "power", "exponent": 1.5},
                                                      val_pos_emb=True)])),
    "seq_attn_nobias": ("seq", head([attn("SOFTMAX", "SUM", b_std=None)])),
    "seq_attn_sqrt_identity_none": ("seq", head([attn("IDENTITY", linear=False)])),
    "seq_attn_sqrt_identity_sum": ("seq", head([attn("IDENTITY", "SUM", linear=False)])),
    "seq_attn_sqrt_identity_concat": ("seq", head([attn("IDENTITY", "CONCAT", linear=False)])),
    "seq_attn_sqrt_identity_concat_val": ("seq", head([attn("IDENTITY", "CONCAT", linear=False,
                                                            val_pos_emb=True)])),
    "seq_attn_sqrt_identity_decay": ("seq", head([attn("IDENTITY", "SUM", linear=False,
                                                       pos_emb_decay_fn={"name": "exponential",
                                                                         "length_scale": 1.0})])),
    "seq_attn_deep_flatten": ("seq", head([dense(16), attn("SOFTMAX", "SUM"), RELU, dense(8),
                                           attn("RELU", "NONE")], FLAT)),
    "seq_attn_after_conv": ("seq", head([["Conv", {"out_chan": 8, "filter_shape": [3], "padding": "SAME",
                                                   "W_std": SQRT2, "b_std": 0.1}], RELU,
                                         attn("SOFTMAX", "CONCAT")])),
    "seq_conv1d": ("seq", [["Conv", {"out_chan": 8, "filter_shape": [3], "padding": "SAME",
                                     "W_std": SQRT2, "b_std": 0.1}], RELU,
                           ["AvgPool", {"window_shape": [2], "strides": [2]}],
                           ["Conv", {"out_chan": 8, "filter_shape": [2], "strides": [1],
                                     "padding": "VALID", "W_std": SQRT2, "b_std": 0.1}], RELU,
                           GAP, dense(1)]),
    "seq_conv1d_flatten": ("seq", [["Conv", {"out_chan": 8, "filter_shape": [3], "padding": "CIRCULAR",
                                             "W_std": SQRT2, "b_std": 0.1}], ERF, FLAT, dense(1)]),
    "seq_transformer": ("seq", transformer_spec()),
    "seq_transformer_relu_concat": ("seq", transformer_spec(depth=1, mechanism="RELU", pe="CONCAT")),
    "img_attn_softmax_sum_decay": ("img", head([["Conv", {"out_chan": 4, "filter_shape": [2, 2],
                                                          "padding": "SAME", "W_std": 1.2, "b_std": 0.1}],
                                                attn("SOFTMAX", "SUM", pos_emb_p_norm=1,
                                                     pos_emb_decay_fn={"name": "exponential",
                                                                       "length_scale": 1.5})])),
    "img_attn_identity_sqrt": ("img", head([attn("IDENTITY", "CONCAT", linear=False)])),
    "seq_layernorm_positions": ("seq", head([dense(8), ["LayerNorm", {"axis": [-2, -1], "eps": 0.01}],
                                             RELU, dense(8), attn("SOFTMAX", "SUM")])),
})


def agg(**kw):
    return ["Aggregate", kw]


GRAPH_CASES = {
    "graph_seq_agg": ("seq", head([dense(8), RELU, agg(), dense(8), RELU, agg(), dense(8)])),
    "graph_seq_agg_flatten": ("seq", head([dense(8), agg(aggregate_axis=[1]), RELU, dense(8), agg()], FLAT)),
    "graph_seq_agg_first": ("seq", head([agg(), dense(8, SQRT2, 0.0), ERF, agg(), dense(8)])),
    "graph_img_agg": ("img", head([dense(6), RELU, agg(aggregate_axis=[1, 2]), dense(6)])),
}


def inputs(kind, rng):
    if kind == "seq":
        x1 = rng.standard_normal((4, 6, 3))
        x2 = rng.standard_normal((3, 6, 3))
    else:
        x1 = rng.standard_normal((3, 3, 4, 2))
        x2 = rng.standard_normal((2, 3, 4, 2))
    x1[1] = -0.5 * x1[0]
    x2[0] = 1.5 * x1[2]
    x2[1] = -x1[0]
    return x1, x2


def patterns(x, rng):
    spatial = x.shape[1:-1]
    size = int(np.prod(spatial))
    p = (rng.random((x.shape[0], size, size)) < 0.4).astype(np.float64)
    p[0] = p[0] * rng.uniform(0.5, 2.0, size=(size, size))   # one weighted graph
    return p.reshape((x.shape[0],) + spatial + spatial)


def run(cases, out_name, rng, graph=False):
    data, names = {}, []
    for name, (kind, spec) in cases.items():
        _, _, kfn = build(spec)
        x1, x2 = inputs(kind, rng)
        p1, p2 = (patterns(x1, rng), patterns(x2, rng)) if graph else (None, None)
        for tag, other, po in (("sym", None, p1), ("cross", x2, p2)):
            case = f"{name}_{tag}"
            if graph:
                k = kfn(x1, other, ("nngp", "ntk"), pattern=(p1, po))
            else:
                k = kfn(x1, other, ("nngp", "ntk"))
            data[f"{case}__x1"] = x1
            data[f"{case}__x2"] = x1 if other is None else other
            data[f"{case}__x2_is_none"] = np.array(int(other is None))
            data[f"{case}__nngp"] = np.asarray(k[0])
            data[f"{case}__ntk"] = np.asarray(k[1])
            data[f"{case}__spec"] = np.array(json.dumps(spec))
            if graph:
                data[f"{case}__pattern1"] = p1
                data[f"{case}__pattern2"] = po
            names.append(case)
            print(case, np.asarray(k[0]).shape, np.asarray(k[1]).ravel()[:2])
    data["__cases__"] = np.array(json.dumps(names))
    data["__meta__"] = np.array(json.dumps({"neural_tangents": nt.__version__, "jax": jax.__version__,
                                            "dtype": "float64"}))
    path = os.path.join(HERE, out_name)
    np.savez_compressed(path, **data)
    print("wrote", path, len(names), "cases")


def main(which=("attention", "graph")):
    if "attention" in which:
        run(CASES, "nt_attention.npz", np.random.default_rng(1212))
    if "graph" in which:
        run(GRAPH_CASES, "nt_graph.npz", np.random.default_rng(1213), graph=True)


if __name__ == "__main__":
    import sys
    main(tuple(sys.argv[1:]) or ("attention", "graph"))
