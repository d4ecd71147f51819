"""neural-tangents-compatible ``stax``: layers, ``serial`` and exact kernels.

Change ``from neural_tangents import stax`` to ``from ntkscale import stax``:
the same layer names, keywords, defaults and numbers.
"""

from .layers.attention import AttentionMechanism, GlobalSelfAttention, PositionalEmbedding
from .layers.activations import ABRelu, Abs, Erf, Gelu, Identity, LeakyRelu, Relu, Sin
from .layers.activations_closed import (Cos, Exp, ExpNormalized, Gabor, Gaussian, Rbf, Sigmoid_like,
    Sign)
from .layers.activations_poly import Hermite, Monomial, Polynomial, RectifiedMonomial
from .layers.numerical import ElementwiseNumerical
from .layers.branching import FanInConcat, FanInProd, FanInSum, FanOut, parallel
from .layers.conv import Conv
from .layers.graph import Aggregate, AggregateImplementation
from .layers.dense import Dense
from .network import (ApplyFn, InitFn, Kernel, KernelFn, Layer, from_spec, kernel_fn_from_spec,
    serial)
from .layers.normalization import Dropout, LayerNorm
from .layers.pooling import AvgPool, Flatten, GlobalAvgPool, GlobalSumPool, SumPool
from . import presets  # noqa: E402  (stax.presets.myrtle, stax.presets.cntk)
from .spec import canonical_spec, layer_names, spec_hash, spec_to_json

__all__ = [
    "ABRelu", "Abs", "ApplyFn", "AvgPool", "Conv", "Dense", "Dropout", "Erf", "FanInConcat",
    "FanInProd", "FanInSum", "FanOut", "Flatten", "Gelu", "GlobalAvgPool", "Identity", "InitFn",
    "Kernel", "KernelFn", "Layer", "LayerNorm", "LeakyRelu", "Relu", "Sin", "canonical_spec",
    "from_spec", "kernel_fn_from_spec", "layer_names", "parallel", "serial", "spec_hash",
    "spec_to_json",
    "Cos", "ElementwiseNumerical", "Exp", "ExpNormalized", "Gabor", "Gaussian", "GlobalSumPool",
    "Hermite", "Monomial", "Polynomial", "Rbf", "RectifiedMonomial", "Sigmoid_like", "Sign",
    "SumPool",
]
# sequences, attention and graphs (issue 12)
__all__ += ["Aggregate", "AggregateImplementation", "AttentionMechanism", "GlobalSelfAttention",
            "PositionalEmbedding"]
