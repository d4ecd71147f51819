"""neural-tangents 0.6.5 reference kernels for branching, LayerNorm and Dropout (issue 12).

Run with the neural-tangents venv's python:

    /root/.cache/ntkscale/nt-venv/bin/python tests/reference/generate_nt_branching.py

Writes tests/reference/nt_branching.npz in the format of generate_nt_reference.py
(NAME__x1, NAME__x2, NAME__x2_is_none, NAME__nngp, NAME__ntk, NAME__spec, __cases__,
__meta__). Every network is computed twice: ``NAME_sym`` (kernel_fn(x1, None)) and
``NAME_cross`` (x1 against a different x2). Specs use stax names and keywords; a
``parallel`` layer nests its branches: ["parallel", {"branches": [[...], [...]]}].
Inputs hold parallel and anti-parallel rows (x and -x/2, 2x), also across x1/x2.
"""

import json
import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import neural_tangents as nt  # noqa: E402
from neural_tangents import stax  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "nt_branching.npz")
SQRT2 = math.sqrt(2.0)
_TUPLE_KEYS = {"filter_shape", "strides", "window_shape", "axis"}


def build(spec):
    layers = []
    for name, kwargs in spec:
        if name == "parallel":
            layers.append(stax.parallel(*[build(b) for b in kwargs["branches"]]))
            continue
        kw = {k: (tuple(v) if k in _TUPLE_KEYS and isinstance(v, list) else v)
              for k, v in kwargs.items()}
        layers.append(getattr(stax, name)(**kw))
    return stax.serial(*layers)


def dense(out_dim, W_std=1.5, b_std=0.1, p="ntk"):
    return ["Dense", {"out_dim": out_dim, "W_std": W_std, "b_std": b_std, "parameterization": p}]


def conv(out_chan, filt=(3, 3), strides=None, W_std=SQRT2, b_std=0.1, p="ntk", padding="SAME"):
    return ["Conv", {"out_chan": out_chan, "filter_shape": list(filt),
                     "strides": None if strides is None else list(strides), "padding": padding,
                     "W_std": W_std, "b_std": b_std, "parameterization": p}]


RELU, ERF, IDENT, GAP, FLAT = ["Relu", {}], ["Erf", {}], ["Identity", {}], ["GlobalAvgPool", {}], ["Flatten", {}]


def block(main, shortcut, fan_in=("FanInSum", {})):
    return [["FanOut", {"num": len([main, shortcut])}],
            ["parallel", {"branches": [main, shortcut]}], list(fan_in)]


def fc_res(shortcut, p="ntk"):
    main = [RELU, dense(64, 1.2, 0.1, p)]
    return [dense(64, 1.5, 0.1, p)] + block(main, shortcut) + block(main, shortcut) + [
        RELU, dense(1, 1.3, 0.05, p)]


def conv_block(c, strides=None, proj=False, p="ntk"):
    main = [RELU, conv(c, strides=strides, p=p), RELU, conv(c, p=p)]
    short = [conv(c, (1, 1), strides=strides, p=p)] if proj else [IDENT]
    return block(main, short)


CASES = {
    # flat residual blocks
    "fc_res_identity": ("fc", fc_res([IDENT])),
    "fc_res_dense": ("fc", fc_res([dense(64, 0.8, 0.05)])),
    "fc_res_standard": ("fc", fc_res([dense(64, 0.8, 0.05, "standard")], "standard")),
    "fc_fanout3": ("fc", [dense(32, 1.4, 0.2), ["FanOut", {"num": 3}],
                          ["parallel", {"branches": [[RELU, dense(32)], [ERF, dense(32, 0.7, None)],
                                                     [IDENT]]}],
                          ["FanInSum", {}], RELU, dense(1)]),
    "fc_nested": ("fc", [dense(32)] + block(block([RELU, dense(32)], [IDENT]) + [RELU, dense(32)],
                                            [dense(32, 0.6, 0.0)]) + [ERF, dense(1)]),
    "fc_concat_equal": ("fc", [dense(48), ["FanOut", {"num": 2}],
                               ["parallel", {"branches": [[dense(48, 1.1, 0.2)], [RELU, dense(48)]]}],
                               ["FanInConcat", {"axis": -1}], dense(32, 1.2, 0.1), RELU, dense(1)]),
    "fc_concat_widths": ("fc", [dense(48), ["FanOut", {"num": 2}],
                                ["parallel", {"branches": [[dense(16, 1.1, 0.2)], [RELU, dense(80)]]}],
                                ["FanInConcat", {"axis": -1}], dense(1, 1.1, 0.2)]),
    "fc_prod": ("fc", [dense(32), ["FanOut", {"num": 2}],
                       ["parallel", {"branches": [[dense(32, 1.2, 0.3)], [ERF, dense(32, 0.9, 0.1)]]}],
                       ["FanInProd", {}], dense(32, 0.9, 0.2), RELU, dense(1)]),
    # LayerNorm and Dropout (flat)
    "fc_layernorm": ("fc", [dense(64, 1.5, 0.3), ["LayerNorm", {}], RELU, dense(64),
                            ["LayerNorm", {"axis": -1, "eps": 0.1}], ERF, dense(1)]),
    "fc_dropout_train": ("fc", [dense(64), RELU, ["Dropout", {"rate": 0.8}], dense(64), RELU,
                                ["Dropout", {"rate": 0.5, "mode": "train"}], dense(1)]),
    "fc_dropout_test": ("fc", [dense(64), RELU, ["Dropout", {"rate": 0.6, "mode": "test"}], dense(1)]),
    "fc_dropout_standard": ("fc", [dense(64, p="standard"), RELU, ["Dropout", {"rate": 0.7}],
                                   dense(1, p="standard")]),
    # images
    "img_res_gap": ("img", [conv(6)] + conv_block(6) + conv_block(6, (2, 2), True) + [RELU, GAP, dense(1)]),
    "img_res_standard": ("img", [conv(6, p="standard")] + conv_block(6, p="standard")
                         + conv_block(6, (2, 2), True, p="standard") + [RELU, GAP, dense(1, p="standard")]),
    "img_res_pool_flatten": ("img", [conv(4)] + block(
        [RELU, conv(4), ["AvgPool", {"window_shape": [2, 2], "strides": [2, 2]}]],
        [["AvgPool", {"window_shape": [2, 2], "strides": [2, 2]}]]) + [RELU, conv(4), RELU, FLAT, dense(1)]),
    "img_res_flatten": ("img", [conv(4)] + conv_block(4) + [RELU, FLAT, dense(1)]),
    "img_concat": ("img", [conv(4), ["FanOut", {"num": 2}],
                           ["parallel", {"branches": [[conv(4)], [RELU, conv(8, (1, 1))]]}],
                           ["FanInConcat", {"axis": -1}], conv(4), RELU, GAP, dense(1)]),
    "img_layernorm_channel": ("img", [conv(4), ["LayerNorm", {"axis": -1}], RELU, conv(4), GAP, dense(1)]),
    "img_layernorm_all": ("img", [conv(4), ["LayerNorm", {"axis": [1, 2, 3]}], RELU, conv(4),
                                  ["LayerNorm", {"axis": [1, 3], "eps": 0.05}], RELU, FLAT, dense(1)]),
    "img_layernorm_gap": ("img", [conv(4), ["LayerNorm", {"axis": [1, 2, 3]}], RELU, GAP, dense(1)]),
    "img_dropout_gap": ("img", [conv(4), RELU, ["Dropout", {"rate": 0.7}], conv(4), RELU, GAP, dense(1)]),
    "img_dropout_flatten": ("img", [conv(4), RELU, ["Dropout", {"rate": 0.6}], conv(4), RELU, FLAT,
                                    dense(1)]),
}


def wrn_block(c, strides=(1, 1), mismatch=False):
    main = [RELU, conv(c, strides=strides, b_std=None, W_std=1.0), RELU, conv(c, b_std=None, W_std=1.0)]
    short = [conv(c, strides=strides, b_std=None, W_std=1.0)] if mismatch else [IDENT]
    return block(main, short)


# neural-tangents' README WideResnet(block_size=1, k=1, num_classes=10) on 8x8 images: AvgPool((2, 2))
CASES["img_wide_resnet_8x8"] = ("img8", [conv(16, b_std=None, W_std=1.0)] + wrn_block(16, mismatch=True)
                                + wrn_block(32, (2, 2), True) + wrn_block(64, (2, 2), True)
                                + [["AvgPool", {"window_shape": [2, 2]}], FLAT, dense(10, 1.0, 0.0)])


def inputs(kind, rng):
    if kind == "img8":
        x1 = rng.standard_normal((3, 8, 8, 3))
        x2 = rng.standard_normal((2, 8, 8, 3))
        x2[0] = -0.5 * x1[1]
        return x1, x2
    if kind == "fc":
        x1 = rng.standard_normal((6, 5))
        x2 = rng.standard_normal((4, 5))
    else:
        x1 = rng.standard_normal((4, 6, 6, 2))
        x2 = rng.standard_normal((3, 6, 6, 2))
    x1[1] = -0.5 * x1[0]
    x1[2] = 2.0 * x1[0] if kind == "fc" else x1[2]
    x2[0] = 1.5 * x1[3 if kind == "fc" else 2]
    x2[1] = -x1[0]
    return x1, x2


def main():
    rng = np.random.default_rng(12)
    data, names = {}, []
    for name, (kind, spec) in CASES.items():
        _, _, kfn = build(spec)
        x1, x2 = inputs(kind, rng)
        for tag, other in (("sym", None), ("cross", x2)):
            case = f"{name}_{tag}"
            k = kfn(x1, other, ("nngp", "ntk"))
            data[f"{case}__x1"] = x1
            data[f"{case}__x2"] = x1 if other is None else other
            data[f"{case}__x2_is_none"] = np.array(int(other is None))
            data[f"{case}__nngp"] = np.asarray(k[0])
            data[f"{case}__ntk"] = np.asarray(k[1])
            data[f"{case}__spec"] = np.array(json.dumps(spec))
            names.append(case)
            print(case, np.asarray(k[1]).ravel()[:2])
    data["__cases__"] = np.array(json.dumps(names))
    data["__meta__"] = np.array(json.dumps({"neural_tangents": nt.__version__, "jax": jax.__version__,
                                            "dtype": "float64"}))
    np.savez_compressed(OUT, **data)
    print("wrote", OUT, len(names), "cases")


if __name__ == "__main__":
    main()
