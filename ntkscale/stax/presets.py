"""Preset architectures people compare kernels against (FC, Myrtle, CNTK, WideResNet,
a pre-LayerNorm transformer encoder).

Each function returns a ``serial`` layer (``(init_fn, apply_fn, kernel_fn)``
with its JSON spec); the docstrings give the exact layer list. ``width`` is
the channel count of the finite-width network (``None``: kernel only; the
infinite-width kernel ignores it in the ``"ntk"`` parameterization).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

from ..errors import SpecError
from .layers.activations import Identity, Relu
from .layers.attention import GlobalSelfAttention
from .layers.normalization import LayerNorm
from .layers.branching import FanInSum, FanOut, parallel
from .layers.conv import Conv
from .layers.dense import Dense
from .network import Layer, serial
from .layers.pooling import AvgPool, Flatten, GlobalAvgPool

SQRT2 = math.sqrt(2.0)

#: Conv+Relu blocks per stage of Myrtle-``depth`` (neural-tangents' Myrtle
#: example; Shankar et al. 2020). depth = conv layers + the readout Dense.
MYRTLE_STAGES = {5: (2, 1, 1), 7: (2, 2, 2), 10: (3, 3, 3)}


def fc(depth: int = 3, *, width: int = 512, W_std: float = SQRT2, b_std: float = 0.1,
       out_dim: int = 1) -> Layer:
    """Fully-connected ReLU network: ``depth`` × [Dense(width, W_std, b_std),
    Relu] then a Dense(out_dim) readout with the same W_std/b_std (He scaling,
    W_std = √2); ntkscale's default network (``estimator.default_layers``)."""
    layers = []
    for _ in range(depth):
        layers += [Dense(width, W_std=W_std, b_std=b_std), Relu()]
    return serial(*layers, Dense(out_dim, W_std=W_std, b_std=b_std))


def myrtle(depth: int = 5, *, width: Optional[int] = None, W_std: float = SQRT2,
           b_std: float = 0.0, out_dim: int = 10, final_pools: int = 3) -> Layer:
    """Myrtle network (Shankar et al. 2020, "Neural Kernels Without Tangents"),
    as in neural-tangents' Myrtle example; ``depth`` ∈ {5, 7, 10} counts the
    Conv layers plus the readout Dense.

    With ``c = Conv(width, (3, 3), padding="SAME", W_std=W_std, b_std=b_std)``
    and ``p = AvgPool((2, 2), strides=(2, 2))`` (VALID), stages ``(a, b, d)``
    = (2, 1, 1), (2, 2, 2), (3, 3, 3) for depth 5, 7, 10::

        [c, Relu()] × a, p,
        [c, Relu()] × b, p,
        [c, Relu()] × d, p × final_pools,
        Flatten(), Dense(out_dim, W_std, b_std)

    ``final_pools=3`` is the CIFAR-10 (32×32) original: 32 → 16 → 8 → 4 → 2
    → 1 pixels. Smaller images need fewer final pools (8×8: ``final_pools=1``);
    a pool that would empty the image raises an error naming it.
    """
    if depth not in MYRTLE_STAGES:
        raise ValueError(f"myrtle(depth={depth!r}): depth must be one of 5, 7, 10")
    if final_pools < 0:
        raise ValueError(f"myrtle(final_pools={final_pools!r}) must be >= 0")

    def block():
        return [Conv(width, (3, 3), padding="SAME", W_std=W_std, b_std=b_std), Relu()]

    def pool():
        return AvgPool((2, 2), strides=(2, 2), padding="VALID")

    a, b, d = MYRTLE_STAGES[depth]
    layers = block() * a + [pool()] + block() * b + [pool()] + block() * d
    layers += [pool() for _ in range(final_pools)]
    layers += [Flatten(), Dense(out_dim, W_std=W_std, b_std=b_std)]
    return serial(*layers)


def cntk(depth: int = 3, pooling: str = "gap", *, width: Optional[int] = None,
         W_std: float = SQRT2, b_std: Optional[float] = 0.1, out_dim: int = 1,
         filter_shape: Tuple[int, int] = (3, 3)) -> Layer:
    """Convolutional NTK of Arora et al. 2019 ("On Exact Computation with an
    Infinitely Wide Neural Net"): ``depth`` Conv+Relu blocks, then pooling and
    a readout (depth as in our fully-connected presets: hidden blocks only)::

        [Conv(width, filter_shape, padding="SAME", W_std=W_std, b_std=b_std), Relu()] × depth,
        GlobalAvgPool()   (pooling="gap": CNTK-GAP)   or   Flatten()   (pooling="flatten": CNTK-V),
        Dense(out_dim, W_std=W_std, b_std=b_std)

    With ``"flatten"`` only matching pixels interact (the kernel of a locally
    connected net), so it costs O(H·W) per pair instead of O(H²W²).
    """
    if depth < 1:
        raise ValueError(f"cntk(depth={depth!r}) must be >= 1")
    if pooling not in ("gap", "flatten"):
        raise ValueError(f"cntk(pooling={pooling!r}): choose 'gap' or 'flatten'")
    layers = []
    for _ in range(depth):
        layers += [Conv(width, filter_shape, padding="SAME", W_std=W_std, b_std=b_std), Relu()]
    layers.append(GlobalAvgPool() if pooling == "gap" else Flatten())
    layers.append(Dense(out_dim, W_std=W_std, b_std=b_std))
    return serial(*layers)


def wide_resnet_block(channels: int, strides: Tuple[int, int] = (1, 1),
                      channel_mismatch: bool = False) -> Layer:
    """One WideResNet block of neural-tangents' README (Zagoruyko & Komodakis 2016)::

        FanOut(2),
        parallel(serial(Relu(), Conv(channels, (3, 3), strides, padding="SAME"),
                        Relu(), Conv(channels, (3, 3), padding="SAME")),
                 Identity()  or, with channel_mismatch,  Conv(channels, (3, 3), strides, padding="SAME")),
        FanInSum()
    """
    main = serial(Relu(), Conv(channels, (3, 3), strides, padding="SAME"),
                  Relu(), Conv(channels, (3, 3), padding="SAME"))
    shortcut = (Conv(channels, (3, 3), strides, padding="SAME") if channel_mismatch
                else Identity())
    return serial(FanOut(2), parallel(main, shortcut), FanInSum())


def wide_resnet(block_size: int, k: float, num_classes: int, *, pool: int = 8) -> Layer:
    """WideResNet of neural-tangents' README: ``Conv(16, (3, 3), padding="SAME")``, three
    groups of ``block_size`` blocks with ``16k``, ``32k``, ``64k`` channels (strides 1, 2, 2;
    the first block of a group has a Conv shortcut), ``AvgPool((pool, pool))``, ``Flatten()``,
    ``Dense(num_classes, 1.0, 0.0)``.

    ``pool=8`` is the README's (32×32 inputs: 32 → 16 → 8 pixels, pooled to 1); 8×8 inputs
    end at 2×2 pixels and take ``pool=2``. Runs on the compiled slab path (``cpu_slab_pooled``);
    on the GPU on the reference maps (the CUDA kernel has no branches).
    """
    if block_size < 1:
        raise ValueError(f"wide_resnet(block_size={block_size!r}) must be >= 1")

    def group(n: int, channels: int, strides: Tuple[int, int]) -> Layer:
        blocks = [wide_resnet_block(channels, strides, channel_mismatch=True)]
        blocks += [wide_resnet_block(channels, (1, 1)) for _ in range(n - 1)]
        return serial(*blocks)

    return serial(Conv(16, (3, 3), padding="SAME"),
                  group(block_size, int(16 * k), (1, 1)),
                  group(block_size, int(32 * k), (2, 2)),
                  group(block_size, int(64 * k), (2, 2)),
                  AvgPool((pool, pool)), Flatten(), Dense(num_classes, 1.0, 0.0))


def transformer(depth: int = 2, *, width: int = 64, n_heads: int = 4,
                mlp_width: Optional[int] = None, attention_mechanism: str = "SOFTMAX",
                pos_emb_type: str = "SUM", W_std: float = 1.0, b_std: Optional[float] = 0.1,
                out_dim: int = 1, layernorm_eps: float = 1e-6) -> Layer:
    """A small pre-LayerNorm transformer encoder for NWC sequences ``(n, length, channels)``
    (Vaswani et al. 2017; pre-LN as Xiong et al. 2020; its infinite-width kernel as Hron
    et al. 2020, "Infinite attention"):

    ``Dense(width)`` embedding, then ``depth`` times a residual attention block
    ``FanOut(2), parallel(serial(LayerNorm(), GlobalSelfAttention(width, width, width,
    n_heads, attention_mechanism=..., pos_emb_type=..., b_std=b_std)), Identity()),
    FanInSum()`` and a residual MLP block ``FanOut(2), parallel(serial(LayerNorm(),
    Dense(mlp_width), Relu(), Dense(width)), Identity()), FanInSum()``; a final
    ``LayerNorm()``, ``GlobalAvgPool()`` and the ``Dense(out_dim)`` readout. Every Dense
    has ``W_std``/``b_std``; every LayerNorm normalises the channel axis with
    ``eps=layernorm_eps``. ``mlp_width`` defaults to ``2 * width``. The widths matter only
    to ``init_fn``/``apply_fn``: the kernel is their infinite limit. The attention uses
    neural-tangents' default ``linear_scaling=True`` (the closed-form kernel).
    """
    if depth < 1:
        raise SpecError(f"transformer(depth={depth!r}) must be >= 1 (blocks of attention + MLP)")
    mlp_width = 2 * width if mlp_width is None else mlp_width
    layers = [Dense(width, W_std, b_std)]
    for _ in range(depth):
        attention = GlobalSelfAttention(width, width, width, n_heads,
                                        attention_mechanism=attention_mechanism,
                                        pos_emb_type=pos_emb_type, b_std=b_std)
        layers += [FanOut(2), parallel(serial(LayerNorm(-1, layernorm_eps), attention), Identity()),
                   FanInSum()]
        mlp = serial(LayerNorm(-1, layernorm_eps), Dense(mlp_width, W_std, b_std), Relu(),
                     Dense(width, W_std, b_std))
        layers += [FanOut(2), parallel(mlp, Identity()), FanInSum()]
    return serial(*layers, LayerNorm(-1, layernorm_eps), GlobalAvgPool(), Dense(out_dim, W_std, b_std))
