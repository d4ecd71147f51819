"""Base class of layer implementations (pure kernel math + finite-width net) and the
few helpers the engine shares with the layers (it imports only this layer module)."""

from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import numpy as np

from ...errors import SpecError

from ..state import KernelState

Shape = Tuple[int, ...]

#: Layers that take or give a tuple of states (the branch structure, ``layers.branching``).
BRANCH_LAYERS = frozenset({"FanOut", "parallel", "FanInSum", "FanInProd", "FanInConcat"})

#: Cosines within this many machine epsilons of ±1 are treated as exactly
#: (anti)parallel: below it q·q' − c² is rounding noise (NT-CONVENTIONS).
PARALLEL_TOLERANCE_EPS = 64.0


def spatial_diagonal(a: Any, xp: Any) -> Any:
    """``(..., H, H, W, W) -> (..., H, W)``: matching pixels only."""
    *batch, h, h2, w, w2 = a.shape
    a = xp.reshape(a, tuple(batch) + (h * h2, w, w2))
    a = xp.take(a, xp.asarray(np.arange(h) * (h + 1), dtype=xp.int64), axis=len(batch))
    a = xp.reshape(a, tuple(batch) + (h, w * w2))
    return xp.take(a, xp.asarray(np.arange(w) * (w + 1), dtype=xp.int64), axis=len(batch) + 1)


class LayerImpl:
    """One layer: its infinite-width kernel map and a finite-width NumPy net.

    Subclasses implement ``kernel`` (pure: ``state -> state`` on namespace
    ``xp``), ``init``/``apply`` (the finite-width network with the same
    parameterization) and, for shape-changing layers, ``output_shape``.
    """

    layer_name: str = "?"
    #: True for layers whose input is an image (Conv, pooling, Flatten).
    image_layer: bool = False
    #: True for activations (elementwise nonlinearities).
    elementwise: bool = False

    def __init__(self, params: Dict[str, Any]):
        self.params = params

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{self.layer_name}({args})"

    # -- infinite width -------------------------------------------------
    def kernel(self, state: KernelState, xp: Any) -> KernelState:  # pragma: no cover
        raise NotImplementedError

    # -- shapes ---------------------------------------------------------
    def output_shape(self, input_shape: Shape) -> Shape:
        """Per-example output shape (without the batch axis)."""
        return input_shape

    # -- finite width ---------------------------------------------------
    def init(self, rng: np.random.Generator, input_shape: Shape) -> Any:
        """Parameters for per-example ``input_shape``; () when parameter-free."""
        return ()

    def apply(self, params: Any, x: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    # -- cost model -----------------------------------------------------
    def flops_per_entry(self, state_shape: Shape) -> float:
        """Floating-point operations per kernel entry for this layer.

        ``state_shape`` is the per-pair covariance shape (``()`` for flat
        nets, ``(H, H, W, W)`` or ``(H, W)`` for image nets).
        """
        return 20.0 * float(np.prod(state_shape or (1,)))


def check_arity(layers: Sequence[LayerImpl], where: str) -> None:
    """Check that ``layers`` maps one input to one output: every ``FanOut(n)`` is
    followed by ``parallel`` of ``n`` branches (optional) and a ``FanIn*`` layer."""
    arity = None  # None: one state; n: a tuple of n states
    for l, layer in enumerate(layers):
        name = layer.layer_name
        what = f"layer {l} ({name}) of {where}"
        if name == "FanOut":
            if arity is not None:
                raise SpecError(f"{what} follows another FanOut; close its {arity} branches with "
                                "a FanIn layer first")
            arity = layer.params["num"]
        elif name == "parallel":
            n = len(layer.branches)
            if arity != n:
                raise SpecError(f"{what} has {n} branches but receives "
                                f"{'one input' if arity is None else f'{arity} inputs'}; put "
                                f"FanOut({n}) before it")
        elif name in ("FanInSum", "FanInProd", "FanInConcat"):
            if arity is None:
                raise SpecError(f"{what} needs the branches of a FanOut; put FanOut(n) before it")
            arity = None
        elif arity is not None:
            raise SpecError(f"{what} receives {arity} branches; combine them with "
                            "parallel(...) and FanInSum/FanInConcat/FanInProd first")
    if arity is not None:
        raise SpecError(f"{where} ends with {arity} open branches; close them with FanInSum, "
                        "FanInConcat or FanInProd")
