"""Extra neural-tangents reference kernels for the convolutional layers.

Complements nt_reference.npz with cases it does not cover (AvgPool with
normalize_edges / CIRCULAR / strides, Dense and activations on images, flat
activations after pooling, non-square images, more activations, Myrtle-7,
standard parameterization without bias, Gelu/Sin/Identity on images). Same archive layout. Run with the
neural-tangents venv's python (see benchmarks/nt_venv.sh):

    $(bash benchmarks/nt_venv.sh) tests/reference/generate_nt_conv_extra.py

Writes tests/reference/nt_conv_extra.npz (float64, small).
"""

import json
import math
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import neural_tangents as nt  # noqa: E402,F401

from generate_nt_reference import avgpool, build, conv, dense  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "nt_conv_extra.npz")
S2 = math.sqrt(2.0)
RELU = ["Relu", {}]


def cases():
    gap, flat = ["GlobalAvgPool", {}], ["Flatten", {}]
    c = lambda **kw: conv(4, **kw)  # noqa: E731
    out = {
        "avgpool_same_normalize_edges": [
            c(), RELU, ["AvgPool", {"window_shape": [3, 3], "strides": None, "padding": "SAME",
                                    "normalize_edges": True}],
            c(), RELU, gap, dense(1, S2, 0.1)],
        "avgpool_circular_strides_erf_flatten": [
            c(padding="CIRCULAR"), RELU, avgpool((2, 2), (2, 2), "CIRCULAR"),
            c(padding="CIRCULAR"), ["Erf", {"a": 0.7, "b": 1.3, "c": 0.2}], flat, dense(1, S2, 0.1)],
        "dense_on_images_and_flat_tail": [
            c(), RELU, dense(8, 1.3, 0.2), ["Abs", {}], c(padding="VALID"), RELU, gap,
            dense(16, 1.5, 0.2), ["Erf", {}], dense(1, S2, 0.1)],
        "circular_strides2_gap": [
            c(padding="CIRCULAR", strides=(2, 2)), RELU, c(padding="CIRCULAR"), RELU, gap,
            dense(1, S2, 0.1)],
        "standard_bnone_flatten": [
            c(W_std=1.3, b_std=None, parameterization="standard"), RELU,
            c(W_std=1.3, b_std=None, parameterization="standard"), RELU, flat,
            dense(1, 1.3, None, "standard")],
        "leaky_abrelu_gap": [
            c(), ["LeakyRelu", {"alpha": 0.1}], c(), ["ABRelu", {"a": -0.3, "b": 1.2}], gap,
            dense(1, S2, 0.1)],
        "nonsquare_valid_strides_gap": [
            c(filter_shape=(3, 2), padding="VALID", strides=(2, 1)), RELU,
            c(filter_shape=(2, 2), padding="VALID"), RELU, gap, dense(1, S2, 0.1)],
        "conv1x1_first_gap": [
            c(filter_shape=(1, 1)), RELU, c(), RELU, gap, dense(1, S2, 0.1)],
        "gelu_sin_identity_gap": [
            c(), ["Gelu", {"approximate": False}], c(), ["Sin", {"a": 0.5, "b": 2.0, "c": 0.3}],
            c(filter_shape=(2, 2)), ["Identity", {}], gap, dense(1, S2, 0.1)],
        "myrtle7_8x8": (
            [c(b_std=0.0), RELU] * 2 + [avgpool((2, 2), (2, 2), "VALID")]
            + [c(b_std=0.0), RELU] * 2 + [avgpool((2, 2), (2, 2), "VALID")]
            + [c(b_std=0.0), RELU] * 2 + [avgpool((2, 2), (2, 2), "VALID")]
            + [flat, dense(10, S2, 0.0)]),
    }
    return out


def main():
    rng = np.random.default_rng(7)
    arrays = {}
    names = []
    for name, spec in cases().items():
        hw = (7, 5) if "nonsquare" in name else (8, 8) if "myrtle" in name else (6, 6)
        ch = 3 if ("1x1" in name or "myrtle" in name) else 2
        x1 = rng.uniform(-1, 1, (3,) + hw + (ch,))
        x1[2] = -0.5 * x1[0]
        x2 = rng.uniform(-1, 1, (2,) + hw + (ch,))
        _, _, kernel_fn = build(spec)
        for suffix, b in (("", x2), ("_self", None)):
            k = kernel_fn(x1, b, ("nngp", "ntk"))
            case = name + suffix
            arrays[f"{case}__spec"] = np.array(json.dumps(spec))
            arrays[f"{case}__x1"] = x1
            arrays[f"{case}__x2"] = x1 if b is None else b
            arrays[f"{case}__x2_is_none"] = np.array(int(b is None))
            arrays[f"{case}__nngp"] = np.asarray(k[0])
            arrays[f"{case}__ntk"] = np.asarray(k[1])
            names.append(case)
            print(case, np.asarray(k[1]).ravel()[:3])
    arrays["__cases__"] = np.array(json.dumps(names))
    import importlib.metadata as md
    arrays["__meta__"] = np.array(json.dumps({"neural_tangents": md.version("neural-tangents"),
                                              "jax": jax.__version__, "x64": True}))
    np.savez_compressed(OUT, **arrays)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
