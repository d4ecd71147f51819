"""How a network is evaluated, and the ONE place that picks the evaluation path.

Paths (``select_path`` returns one as a :class:`Path` with the reason):

==================  ==========================================================
``reference``       every layer's own array-API map on any namespace (NumPy,
                    CuPy, array-api-strict): ``reference`` (flat networks,
                    row blocks) and ``reference_image`` (images, pair tiles)
``cpu_flat``        numba, one fused pass per entry after a GEMM: flat
                    Dense/activation/LayerNorm/Dropout networks, branches
                    included (``cpu_flat``, ``program_walk``)
``cpu_slab``        numba diagonal-slab kernel for convolutional networks
                    (``cpu_slab``, ``slab_program``, ``slab_kernels``, ``slab_ops``, ``slab_conv``, ``slab_pool``)
``cpu_slab_pooled`` the same kernel with AvgPool stages (e.g. Myrtle)
``cuda_flat``       numba-cuda on CuPy arrays: a cuBLAS GEMM, then one fused
                    elementwise kernel running every layer per entry with
                    ``cpu_flat``'s encoding and per-entry math (``cuda_flat``)
``cuda_slab``       the slab kernel in CUDA (numba-cuda) on CuPy arrays: the slab
                    layers, AvgPool and SumPool stages, GlobalSumPool, branches,
                    LayerNorm and Dropout included (none of ``GPU_FALLBACK``)
==================  ==========================================================

Each path module declares the layers it runs (``SUPPORTED_LAYERS``, checked
against the registry by a test) and its structural conditions
(``unsupported(...)`` -> reason or None). When a compiled path cannot run a
network the reference path runs it and ``Path.reason`` says which layer or
option the faster path lacks. ``kernel_fn``, ``kernel_fn.explain`` and the
cost model all ask ``select_path``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ...backend import is_cupy_namespace, is_numpy_namespace
from ...choices import DTYPES
from ...errors import InputError
from ..layers.base import LayerImpl, check_arity
from ..spec import build_layers, canonical_spec
from . import cpu_flat, cpu_slab, cuda_flat, cuda_slab, reference, reference_image, slab_program
from .program_walk import UNSUPPORTED_FAN_IN
from .explain import Explanation
from .reference import default_memory_budget
from .reference_image import ImagePlan, plan_image_net

__all__ = ["DEVICES", "PATH_LAYERS", "PATHS", "Explanation", "Path", "cost_per_entry", "evaluate",
           "evaluate_diagonal", "explain", "layers_of", "select_path"]

#: Devices ``select_path`` knows: NumPy arrays on the CPU, CuPy arrays on a GPU.
DEVICES = ("cpu", "gpu")
#: Layers the compiled CPU paths run but the CUDA slab kernel does not: a GPU network
#: with one runs the reference maps on CuPy, with a reason naming the layer (taken out
#: of ``cuda_slab.SUPPORTED_LAYERS``). Empty since the CUDA kernel runs branches
#: (FanOut/parallel/FanIn*), LayerNorm and Dropout (issue 16).
GPU_FALLBACK: frozenset = frozenset()
#: Every path and the layers it runs (registry names).
PATH_LAYERS = {
    "reference": reference.SUPPORTED_LAYERS,
    "cpu_flat": cpu_flat.SUPPORTED_LAYERS,
    "cuda_flat": cuda_flat.SUPPORTED_LAYERS,
    "cpu_slab": slab_program.SUPPORTED_LAYERS - {"AvgPool"},
    "cpu_slab_pooled": slab_program.SUPPORTED_LAYERS,
    "cuda_slab": cuda_slab.SUPPORTED_LAYERS - GPU_FALLBACK,
}
PATHS = tuple(PATH_LAYERS)
#: Input dtypes of the compiled kernels: every dtype ntkscale computes in.
COMPILED_DTYPES = DTYPES
_SLAB = ("cpu_slab", "cpu_slab_pooled", "cuda_slab")


@dataclasses.dataclass(frozen=True)
class Path:
    """The evaluation path of a network: ``name`` (one of ``PATHS``) and
    ``reason`` (why; for a fallback, what the faster path lacks).
    ``image``: an image network; ``plan``: its shape plan (None when flat)."""

    name: str
    reason: str
    image: bool = False
    plan: Optional[ImagePlan] = dataclasses.field(default=None, compare=False, repr=False)


Network = Union[Any, Sequence[LayerImpl], Sequence[Any]]


def layers_of(network: Network) -> List[LayerImpl]:
    """Layer implementations of a kernel_fn (anything with ``.layers``), a
    ``(init_fn, apply_fn, kernel_fn)`` triple, a list of layer
    implementations or a spec ``[[name, kwargs], ...]``."""
    if hasattr(network, "layers"):
        return list(network.layers)
    if isinstance(network, tuple) and len(network) == 3 and hasattr(network[2], "layers"):
        return list(network[2].layers)
    items = list(network)
    if items and all(isinstance(x, LayerImpl) for x in items):
        return items
    return build_layers(canonical_spec(items))


def _per_example(shapes: Any) -> Tuple[int, ...]:
    """The per-example shape from ``shapes``: one shape, or a pair of them
    (x1's and x2's, which share it)."""
    shapes = tuple(shapes)
    if shapes and isinstance(shapes[0], (tuple, list)):
        shapes = tuple(shapes[0])
    return tuple(int(s) for s in shapes)


def _names(layers: Sequence[LayerImpl]) -> str:
    seen: List[str] = []
    for layer in layers:
        if layer.layer_name not in seen:
            seen.append(layer.layer_name)
    return ", ".join(seen)


#: Layers only the reference path runs so far (a compiled path would need their maps).
REFERENCE_ONLY = UNSUPPORTED_FAN_IN


def _first_in(layers: Sequence[LayerImpl], names: frozenset,
              prefix: str = "") -> Optional[Tuple[str, str]]:
    """``(where, name)`` of the first layer (inside branches too) named in ``names``."""
    for l, layer in enumerate(layers):
        if layer.layer_name in names:
            return f"{prefix}layer {l}", layer.layer_name
        for b, branch in enumerate(getattr(layer, "branches", ())):
            hit = _first_in(branch, names, f"{prefix}layer {l} (parallel) branch {b}: ")
            if hit is not None:
                return hit
    return None


def reference_only(layers: Sequence[LayerImpl]) -> Optional[str]:
    """Why no compiled path runs ``layers`` (the first layer only the reference
    path has, inside branches too), or None."""
    hit = _first_in(layers, REFERENCE_ONLY)
    if hit is None:
        return None
    return (f"{hit[0]} ({hit[1]}): the compiled paths run FanOut/parallel/FanInSum blocks but "
            f"have no kernel for {hit[1]} yet; the reference path runs it")


def select_path(network: Network, shapes: Any, device: str = "cpu", *, dtype: Any = "float64",
                fast: bool = True, namespace: Optional[str] = None,
                diagonal: bool = False) -> Path:
    """The path that evaluates ``network`` on inputs of per-example ``shapes``.

    ``device``: ``"cpu"`` (NumPy inputs) or ``"gpu"`` (CuPy inputs);
    ``namespace``: the name of any other array namespace (array-api-strict),
    which only the reference path runs; ``fast=False`` forces the reference
    path; ``diagonal``: for ``kernel_fn.diag`` (k(x_i, x_i) only).
    Raises the input/spec errors of an image network whose shapes do not fit.
    """
    if device not in DEVICES:
        raise InputError(f"device must be one of {', '.join(map(repr, DEVICES))}; got {device!r}")
    layers = layers_of(network)
    check_arity(layers, "the network")
    shape = _per_example(shapes)
    image = any(layer.image_layer for layer in layers)
    plan = plan_image_net(layers, shape) if image else None

    def ref(reason: str) -> Path:
        return Path("reference", reason, image, plan)

    if not fast:
        return ref("fast=False forces the array-API reference path")
    if namespace is not None:
        return ref(f"inputs are {namespace} arrays; the compiled paths take NumPy (cpu) or CuPy (gpu)")
    dt = str(np.dtype(dtype)) if not isinstance(dtype, str) else dtype
    if dt not in COMPILED_DTYPES:
        return ref(f"dtype {dt}: the compiled kernels take float32 or float64")
    special = reference_only(layers)
    if special is not None:
        return ref(special)
    if not image:
        if diagonal:
            return ref("the diagonal of a flat network is O(n): the reference maps run it")
        if device == "gpu":
            why = cuda_flat.unsupported(layers, shape)
            if why is not None:
                return ref(f"not cuda_flat: {why}; the reference maps run on CuPy")
            return Path("cuda_flat", f"{_names(layers)}: all supported by the CUDA flat kernel "
                        "(a cuBLAS GEMM, then one fused elementwise kernel for all layers)")
        why = cpu_flat.unsupported(layers, shape)
        if why is not None:
            return ref(f"not cpu_flat: {why}")
        return Path("cpu_flat", f"{_names(layers)}: all supported by the compiled flat kernel")
    if device == "gpu":
        hit = _first_in(layers, GPU_FALLBACK)
        if hit is not None:
            return ref(f"not cuda_slab: {hit[0]} ({hit[1]}) has no CUDA slab kernel (the compiled "
                       "CPU paths run it); the reference maps run on CuPy")
        why = cuda_slab.unsupported(layers, plan, dt)
        if why is not None:
            return ref(f"not cuda_slab: {why}")
        return Path("cuda_slab", f"{_names(layers)}: all supported by the CUDA slab kernel",
                    True, plan)
    why = slab_program.unsupported(layers, plan)
    if why is not None:
        return ref(f"not cpu_slab: {why}")
    pooled = any(layer.layer_name == "AvgPool" for layer in layers)
    return Path("cpu_slab_pooled" if pooled else "cpu_slab",
                f"{_names(layers)}: all supported by the compiled slab kernel"
                + (" (AvgPool stages)" if pooled else ""), True, plan)


def _device_of(xp: Any) -> Tuple[str, Optional[str]]:
    """``(device, namespace)`` arguments of ``select_path`` for arrays of ``xp``."""
    if is_cupy_namespace(xp):
        return "gpu", None
    if is_numpy_namespace(xp):
        return "cpu", None
    return "cpu", getattr(xp, "__name__", str(xp))


def _path_for(layers: List[LayerImpl], x: Any, xp: Any, fast: bool, diagonal: bool) -> Path:
    device, namespace = _device_of(xp)
    return select_path(layers, tuple(x.shape[1:]), device, dtype=str(x.dtype), fast=fast,
                       namespace=namespace, diagonal=diagonal)


def evaluate(layers: List[LayerImpl], x1: Any, x2: Optional[Any], xp: Any, *, want_ntk: bool,
             memory_budget: Optional[int] = None, fast: bool = True,
             block_rows: Optional[int] = None) -> Dict[str, Any]:
    """Kernels of ``layers`` for all pairs of rows of x1 and x2 (x2=None: x1),
    on the path ``select_path`` picks. ``block_rows``: fixed reference blocks
    (tiles ``block_rows × block_rows`` for images)."""
    path = _path_for(layers, x1, xp, fast, diagonal=False)
    if path.name == "cpu_flat":
        return cpu_flat.evaluate(layers, x1, x2, want_ntk=want_ntk)
    if path.name == "cuda_flat":
        return cuda_flat.evaluate(layers, x1, x2, want_ntk=want_ntk)
    if not path.image:
        return reference.evaluate(layers, x1, x2, xp, want_ntk=want_ntk,
                                  memory_budget=memory_budget, block_rows=block_rows)
    budget = memory_budget or default_memory_budget()
    if path.name in ("cpu_slab", "cpu_slab_pooled"):
        return cpu_slab.evaluate(layers, path.plan, x1, x2, want_ntk=want_ntk, memory_budget=budget)
    if path.name == "cuda_slab":
        return cuda_slab.evaluate(layers, path.plan, x1, x2, want_ntk=want_ntk,
                                  memory_budget=budget)
    tile = None if block_rows is None else (block_rows, block_rows)
    return reference_image.evaluate_image(layers, x1, x2, xp, want_ntk=want_ntk,
                                          memory_budget=budget, tile=tile)


def evaluate_diagonal(layers: List[LayerImpl], x: Any, xp: Any, *, want_ntk: bool,
                      memory_budget: Optional[int] = None, fast: bool = True) -> Dict[str, Any]:
    """k(x_i, x_i) for every row i (diagonal-batch recursion, O(n))."""
    path = _path_for(layers, x, xp, fast, diagonal=True)
    if not path.image:
        return reference.evaluate_diagonal(layers, x, xp, want_ntk=want_ntk)
    budget = memory_budget or default_memory_budget()
    if path.name in ("cpu_slab", "cpu_slab_pooled"):
        return cpu_slab.evaluate_diagonal(layers, path.plan, x, want_ntk=want_ntk,
                                          memory_budget=budget)
    if path.name == "cuda_slab":
        return cuda_slab.evaluate_diagonal(layers, path.plan, x, want_ntk=want_ntk,
                                           memory_budget=budget)
    return reference_image.evaluate_image_diagonal(layers, x, xp, want_ntk=want_ntk,
                                                   memory_budget=budget)


#: Values per kernel entry the compiled paths hold: their outputs Σ and Θ, written in
#: place (the slab kernel's per-thread scratch and pair lists do not grow with the call).
COMPILED_TEMPORARIES = 2.0


def _cost(layers: List[LayerImpl], shape: Tuple[int, ...], path: Path) -> Dict[str, float]:
    """``flops`` of ``path`` per entry, ``bytes`` (the reference path's temporaries, the
    cost model's feature) and ``bytes_engine`` (what ``path`` itself holds), in itemsizes."""
    if not path.image:
        out = reference.cost_per_entry(layers, shape)
    else:
        out = reference_image.cost_per_entry(layers, shape)
    out["bytes_engine"] = out["bytes"]
    if path.name in _SLAB:
        tail = sum(layer.flops_per_entry(()) for l, layer in enumerate(layers)
                   if path.plan.layouts[l] == reference_image.FLAT)
        slab = cuda_slab.as_average(layers)[0] if path.name == "cuda_slab" else layers
        out["flops"] = float(slab_program.flops_per_pair(slab, path.plan) + tail)
    if path.name != "reference":
        out["bytes_engine"] = COMPILED_TEMPORARIES
    return out


def cost_per_entry(layers: List[LayerImpl], input_shape: Tuple[int, ...]) -> Dict[str, float]:
    """Flops and bytes per kernel entry for per-example ``input_shape`` on the
    path NumPy float64 inputs take (the planner's cost model).

    ``flops``: that path's arithmetic (the slab kernel's count where it runs,
    ``slab_program.flops_per_pair``); ``bytes``: reference temporaries per
    entry in units of the itemsize; ``bytes_engine``: what that path holds per
    entry (the planner's budget); images also give ``flops_reference`` and
    ``pair_entries``."""
    shape = tuple(int(s) for s in input_shape)
    return _cost(layers, shape, select_path(layers, shape, "cpu"))


def explain(network: Network, x1_shape: Sequence[int], x2_shape: Optional[Sequence[int]] = None,
            device: str = "cpu", memory_budget: Optional[int] = None,
            dtype: str = "float64", fast: bool = True) -> Explanation:
    """Path, reason, tiles, lanes and cost of ``kernel_fn(x1, x2)`` for inputs
    of shapes ``x1_shape``/``x2_shape`` (batch axis included; ``fast=False``
    as in ``kernel_fn``)."""
    layers = layers_of(network)
    x1_shape = tuple(int(s) for s in x1_shape)
    symmetric = x2_shape is None
    x2_shape = x1_shape if symmetric else tuple(int(s) for s in x2_shape)
    if x1_shape[1:] != x2_shape[1:]:
        raise InputError(f"x1 and x2 must have the same per-example shape; got {x1_shape} and {x2_shape}")
    n1, n2, shape = x1_shape[0], x2_shape[0], x1_shape[1:]
    path = select_path(layers, shape, device, dtype=dtype, fast=fast)
    value_bytes = np.dtype(dtype).itemsize
    budget = memory_budget or default_memory_budget()
    tile: Optional[Tuple[int, int]] = None
    lanes: Optional[int] = None
    if path.name == "reference" and path.image:
        tile = reference_image.image_tile(path.plan, n1, n2, value_bytes, budget, symmetric)
    elif path.name == "reference":
        tile = (reference.block_rows_for(n1, n2, value_bytes, budget), n2)
    elif path.name == "cuda_slab":
        lanes = int(cuda_slab.program(layers, path.plan, dtype).lanes)
    elif path.name in _SLAB:
        lanes = int(slab_program.Program(layers, path.plan, np.dtype(dtype)).lanes)
    cost = _cost(layers, shape, path)
    entries = n1 * (n1 + 1) // 2 if symmetric else n1 * n2
    flops = float(cost["flops"])
    return Explanation(path=path.name, reason=path.reason, tile=tile, lanes=lanes,
                       flops_per_entry=flops, bytes_per_entry=float(cost["bytes_engine"]) * value_bytes,
                       entries=int(entries), total_flops=flops * entries, device=device,
                       dtype=str(np.dtype(dtype)))
