"""Dense (fully-connected) layer: kernel map and finite-width network.

Kernel map from Lee et al. 2018 (NNGP) and Jacot et al. 2018 (NTK), in the
form neural-tangents uses (see NT-CONVENTIONS: ``"ntk"`` and ``"standard"``
parameterizations, Sohl-Dickstein et al. 2020).
"""

from __future__ import annotations

from typing import Any, Tuple

import numpy as np

from ...errors import SpecError
from .base import LayerImpl, Shape
from ..network import Layer, make_layer
from ..spec import Param, register
from ..state import KernelState

DENSE_PARAMS = {
    "out_dim": Param(None, "int?"),
    "W_std": Param(1.0, "float"),
    "b_std": Param(None, "float?"),
    "parameterization": Param("ntk", "str", choices=("ntk", "standard")),
    "batch_axis": Param(0, "any", supported=(0,)),
    "channel_axis": Param(-1, "any", supported=(-1,)),
    "s": Param((1, 1), "any", supported=((1, 1),)),
}


def affine_kernel(state: KernelState, W_std: float, b_std: float | None,
                  parameterization: str, n_in: int | None, layer: str) -> KernelState:
    """The affine kernel map shared by Dense and (after the spatial sum) Conv.

    ``"ntk"``:      Σ ← W²K + b²,  Θ ← Σ + W²Θ
    ``"standard"``: Σ ← W²K + b²,  Θ ← n_in·K + W²Θ + [b_std is not None]
    """
    w2 = W_std * W_std
    b2 = 0.0 if b_std is None else b_std * b_std
    k = state.nngp
    nngp = w2 * k + b2
    ntk = state.ntk
    if ntk is not None:
        if parameterization == "ntk":
            ntk = nngp + w2 * ntk
        else:
            if n_in is None:
                raise SpecError(
                    f'{layer}(parameterization="standard") needs the input width; give '
                    "out_dim (out_chan) to the layer before it"
                )
            ntk = float(n_in) * k + w2 * ntk + (0.0 if b_std is None else 1.0)
    return state.replace(nngp=nngp, ntk=ntk).map_variances(lambda v: w2 * v + b2)


@register("Dense", DENSE_PARAMS)
class DenseImpl(LayerImpl):
    """``Dense(out_dim, W_std, b_std, parameterization)`` as in neural-tangents."""

    def kernel(self, state: KernelState, xp: Any) -> KernelState:
        p = self.params
        out = affine_kernel(state, p["W_std"], p["b_std"], p["parameterization"], state.width, "Dense")
        return out.replace(width=p["out_dim"], gaussian=True)

    def output_shape(self, input_shape: Shape) -> Shape:
        return tuple(input_shape[:-1]) + (self._out_dim(),)

    def _out_dim(self) -> int:
        if self.params["out_dim"] is None:
            raise SpecError("the finite-width network (init_fn/apply_fn) needs Dense(out_dim=...)")
        return self.params["out_dim"]

    def init(self, rng: np.random.Generator, input_shape: Shape) -> Tuple[np.ndarray, np.ndarray]:
        n_in, n_out = int(input_shape[-1]), self._out_dim()
        W = rng.standard_normal((n_in, n_out))
        b = rng.standard_normal((n_out,))
        if self.params["parameterization"] == "standard":
            W *= self.params["W_std"] / np.sqrt(n_in)
            b *= self.params["b_std"] or 0.0
        return W, b

    def apply(self, params: Any, x: np.ndarray) -> np.ndarray:
        W, b = params
        p = self.params
        if p["parameterization"] == "standard":
            return x @ W + (b if p["b_std"] is not None else 0.0)
        z = (p["W_std"] / np.sqrt(W.shape[0])) * (x @ W)
        return z if p["b_std"] is None else z + p["b_std"] * b

    def flops_per_entry(self, state_shape: Shape) -> float:
        return 6.0 * float(np.prod(state_shape or (1,)))


def Dense(out_dim: int | None = None, W_std: float = 1.0, b_std: float | None = None,
          parameterization: str = "ntk", batch_axis: int = 0, channel_axis: int = -1,
          s: Tuple[int, int] = (1, 1)) -> Layer:
    """Fully-connected layer (neural-tangents ``stax.Dense``).

    ``out_dim`` is ignored by the infinite-width kernel in the ``"ntk"``
    parameterization; ``"standard"`` needs the widths (Sohl-Dickstein et al. 2020).
    """
    return make_layer("Dense", dict(out_dim=out_dim, W_std=W_std, b_std=b_std,
                                    parameterization=parameterization, batch_axis=batch_axis,
                                    channel_axis=channel_axis, s=s))
