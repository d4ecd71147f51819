"""The networks the tests draw from (one definition each): activation lists, the
ReLU MLP, the Gram/run tests' layer spec and the sampled conv nets of the slab tests."""

from __future__ import annotations

import math
from typing import List

import numpy as np

from ntkscale import stax

SQRT2 = math.sqrt(2.0)

#: Every activation, as the flat tests draw them (all run on cpu_flat and the reference path).
FLAT_ACTS = [stax.Relu(), stax.LeakyRelu(0.1), stax.Abs(), stax.Erf(), stax.Gelu(), stax.Sin(),
             stax.Identity()]
#: The activations the compiled slab kernel runs on images, with non-default parameters.
SLAB_ACTS = [stax.Relu(), stax.LeakyRelu(0.2), stax.Abs(), stax.ABRelu(-0.3, 1.2), stax.Erf(),
             stax.Erf(0.7, 1.3, 0.2), stax.Identity()]

#: The spec (JSON form) the Gram, run, store and config tests compute:
#: 2 x [Dense, Relu] + Dense, W_std ~ sqrt(2), b_std 0.1.
LAYERS = [["Dense", {"W_std": 1.414, "b_std": 0.1}], ["Relu", {}],
          ["Dense", {"W_std": 1.414, "b_std": 0.1}], ["Relu", {}],
          ["Dense", {"W_std": 1.414, "b_std": 0.1}]]


def fc_relu(depth: int, W_std: float = SQRT2, b_std: float | None = 0.1, width: int = 512):
    """``depth`` x [Dense(width), Relu] + Dense(1): the (init_fn, apply_fn, kernel_fn) triple."""
    layers = []
    for _ in range(depth):
        layers += [stax.Dense(width, W_std=W_std, b_std=b_std), stax.Relu()]
    return stax.serial(*layers, stax.Dense(1, W_std=W_std, b_std=b_std))


def sampled_slab_nets(count: int, seed: int = 0) -> List:
    """Random conv nets the slab kernel supports: filters, strides, paddings,
    activations, Dense on images, parameterizations, GAP/Flatten, flat tails
    (principle 13: sampled, not exhausted)."""
    rng = np.random.default_rng(seed)
    nets = []
    for i in range(count):
        circular = i % 5 == 4
        padding = "CIRCULAR" if circular else ["SAME", "VALID", "SAME"][i % 3]
        std = i % 4 == 3
        param = "standard" if std else "ntk"
        b_std = [0.1, None, 0.0][i % 3]
        layers = []
        for blk in range(int(rng.integers(1, 3 if padding == "VALID" else 4))):
            fh, fw = (3, 3) if i % 2 == 0 else tuple(int(v) for v in rng.integers(1, 4, 2))
            strides = None if (blk or padding != "SAME" or rng.uniform() < 0.5) else (2, 1)
            layers += [stax.Conv(6, (fh, fw), strides=strides, padding=padding,
                                 W_std=float(rng.uniform(0.8, 1.8)), b_std=b_std,
                                 parameterization=param),
                       SLAB_ACTS[int(rng.integers(len(SLAB_ACTS)))]]
            if rng.uniform() < 0.2:
                layers.append(stax.Dense(5, W_std=1.2, b_std=0.3, parameterization=param))
        layers.append(stax.GlobalAvgPool() if i % 3 else stax.Flatten())
        if rng.uniform() < 0.4:
            layers += [stax.Dense(7, W_std=1.3, b_std=0.2, parameterization=param),
                       SLAB_ACTS[int(rng.integers(len(SLAB_ACTS)))]]
        layers.append(stax.Dense(1, W_std=1.1, b_std=0.1, parameterization=param))
        nets.append(stax.serial(*layers))
    return nets


#: The 14 sampled nets the CPU and CUDA slab parity tests share.
SLAB_NETS = sampled_slab_nets(14)
