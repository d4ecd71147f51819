"""GPU path for convolutional kernels: the slab method on CUDA (numba-cuda), AvgPool included.

The same slab formulation as ``cpu_slab`` (see its docstring): the pixel-pair
covariance splits into independent per-offset slabs ``S_δ[h, w]`` that Conv /
activation / Dense layers map on their own, and AvgPool stages join them
(``slab_program``). The kernel (``cuda_kernels``) runs one thread block per
(image pair, slab) with the slab in shared memory; nothing of size ``H²W²``
per pair touches global memory except the window sums of pooled stages
(Myrtle), unlike running the array-API reference path under CuPy (which
materialises ``n1·n2·H²W²`` covariances and ~10 temporaries per layer).

This module plans the launches and orchestrates a call: self-variances
(the reference maps without pooling; the kernel's own self pass with
pooling), pair lists, mirroring and the flat layers after the image part
(``cpu_slab``'s helpers). Inputs are CuPy arrays on a GPU, or NumPy arrays
when ``numba.cuda`` is numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``:
CI runs the very same kernel on a CPU, tests marked ``cudasim``).

Flat (FC) networks on the GPU take ``cuda_flat``: a GEMM plus one fused
elementwise kernel for all layers.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ...backend import namespace_of
from . import cuda_kernels
from .cpu_slab import CHUNK_PAIRS, _module, _needs_tail_variances, _pair_chunks, _tail, _variances, put_pairs
from .program_walk import flatten
from .reference_image import ImagePlan
from .slab_program import LANES_MAX, Program, unsupported as slab_unsupported
from ..layers.base import LayerImpl
from ..spec import build_layers, canonical_spec

#: Layers this kernel runs on images (registry names), up to and including the
#: GlobalAvgPool/Flatten that ends the image part, inside branches too; flat layers
#: after it run the reference maps on the ``n1 × n2`` result. Explicit: a layer the
#: CPU slab program learns later is not claimed here until this kernel runs it.
SUPPORTED_LAYERS = frozenset({"Conv", "Dense", "AvgPool", "GlobalAvgPool", "Flatten",
                              "SumPool", "GlobalSumPool",
                              "Relu", "LeakyRelu", "Abs", "ABRelu", "Erf", "Identity",
                              "LayerNorm", "Dropout", "FanOut", "parallel", "FanInSum",
                              "FanInProd", "FanInConcat"})

#: Threads per block on a GPU (a power of two: the final reduction halves it),
#: and in the simulator, where every thread is a Python thread.
THREADS = 256
SIM_THREADS = 4
#: Largest dynamic shared memory a block asks for (bytes): 48 KiB, the limit
#: every CUDA GPU grants without an opt-in (a 32×32 slab with 3×3 SAME Convs,
#: float64, needs 41 KiB).
MAX_SHARED = 48 * 1024
#: Blocks per launch (pairs × slabs), bounded to keep pair lists small.
MAX_BLOCKS = 1 << 24
#: Fraction of the device's free memory the window sums of a pooled call may take.
FREE_MEMORY_FRACTION = 0.5
#: Pair-list chunks in flight (``fill_streamed``): chunk c + 1's lists are copied from a
#: pinned host buffer on their own stream while chunk c's kernels run on theirs.
STREAMS = 2
#: Pairs per chunk of ``fill_streamed``; None: ``cpu_slab.fill_pairs``'s size (tests set it).
CHUNK: Optional[int] = None
#: Branch slots go into shared memory when the block's whole slab memory, slots
#: included, stays within this many bytes; else into a global scratch array per block
#: (a ResNet block at 32×32 float64: 32 KiB of slots on top of 34 KiB of slabs).
SHARED_SLOT_BYTES = MAX_SHARED


#: Summing pools and their averaging twins: the program of the twin, without its division.
SUM_TO_AVERAGE = {"SumPool": "AvgPool", "GlobalSumPool": "GlobalAvgPool"}


def as_average(layers: List[LayerImpl]) -> Tuple[List[LayerImpl], List[int]]:
    """``layers`` with every top-level SumPool as AvgPool (same window, strides, padding;
    ``normalize_edges=False``) and GlobalSumPool as GlobalAvgPool, and the indices replaced.
    ``SumPool`` is ``AvgPool`` times the window size k (neural-tangents ``stax.SumPool``), so
    its window sums are the AvgPool stage's sums undivided; ``GlobalSumPool`` is
    ``GlobalAvgPool`` times (HW)² on the covariance."""
    out: List[LayerImpl] = []
    summed: List[int] = []
    for l, layer in enumerate(layers):
        twin = SUM_TO_AVERAGE.get(layer.layer_name)
        if twin is None:
            out.append(layer)
            continue
        params = dict(layer.params)
        if twin == "AvgPool":
            params["normalize_edges"] = False
        out.append(build_layers(canonical_spec([[twin, params]]))[0])
        summed.append(l)
    return out, summed


def program(layers: List[LayerImpl], plan: ImagePlan, dtype: Any) -> Program:
    """The slab program of ``layers`` (``slab_program.Program``), summing pools included:
    built for their averaging twins (:func:`as_average`), then the divisions taken out: a
    SumPool stage loads its window sums undivided (``pinv`` = 1) and a GlobalSumPool
    readout sums its slabs (``count`` = 1)."""
    avg, summed = as_average(list(layers))
    prog = Program(avg, plan, np.dtype(dtype if isinstance(dtype, str) else str(np.dtype(dtype))))
    pools = [l for l, layer in enumerate(avg) if layer.layer_name == "AvgPool"]
    for l in summed:
        if avg[l].layer_name == "AvgPool":
            prog.pinv[pools.index(l) + 1] = 1   # stage st starts after the st-th AvgPool
        else:
            prog.count = 1.0
    return prog


def slot_bytes(prog: Program, itemsize: int) -> int:
    """Bytes of the branch slots of one block: Σ and Θ of ``nslots`` slabs."""
    maxbuf = int((prog.spad[:, 2] * prog.spad[:, 3]).max())
    return 2 * int(prog.nslots) * maxbuf * itemsize


def shared_bytes(prog: Program, itemsize: int, threads: int = THREADS,
                 slots: bool = False) -> int:
    """Dynamic shared memory of one block: Σ and Θ double buffered, plus the reduction,
    plus (``slots``) the branch slots."""
    maxbuf = int((prog.spad[:, 2] * prog.spad[:, 3]).max())
    return (4 * maxbuf + 2 * threads) * itemsize + (slot_bytes(prog, itemsize) if slots else 0)


def slots_in_shared(prog: Program, itemsize: int, threads: int = THREADS) -> bool:
    """Whether the branch slots of ``prog`` sit in shared memory (else global scratch)."""
    return prog.nslots > 0 and shared_bytes(prog, itemsize, threads, True) <= SHARED_SLOT_BYTES


def _image_layers(layers: List[LayerImpl], plan: ImagePlan) -> List[LayerImpl]:
    """The layers up to and including the one that makes the state flat."""
    for l in range(len(layers)):
        if plan.hw[l + 1] is None:
            return layers[:l + 1]
    return list(layers)


def unsupported(layers: List[LayerImpl], plan: ImagePlan, dtype: Any) -> Optional[str]:
    """Why this kernel cannot run the network on ``dtype`` inputs, or None:
    a layer outside ``SUPPORTED_LAYERS`` on images (inside branches too), the slab
    conditions (``slab_program.unsupported``), or a slab over the shared memory."""
    image = _image_layers(list(layers), plan)
    for l, layer in enumerate(image):
        if layer.layer_name not in SUPPORTED_LAYERS:
            return f"layer {l} ({layer.layer_name}) on images has no CUDA slab kernel"
    steps, _, why = flatten(image[:-1])
    for step in steps if why is None else ():
        if step.kind == "layer" and step.name not in SUPPORTED_LAYERS:
            return f"{step.where} ({step.name}) on images has no CUDA slab kernel"
    why = slab_unsupported(as_average(list(layers))[0], plan, pooling=True)
    if why is not None:
        return why
    dt = np.dtype(str(dtype))
    need = shared_bytes(program(layers, plan, dt), dt.itemsize)
    if need > MAX_SHARED:
        return (f"a slab needs {need >> 10} KiB of shared memory, over the CUDA kernel's "
                f"{MAX_SHARED >> 10} KiB")
    return None


def device_free_bytes(mod: Any) -> Optional[int]:
    """Free memory of the current CUDA device (CuPy), or None (simulator: NumPy)."""
    if mod is np:
        return None
    return int(mod.cuda.Device().mem_info[0])


def _tables(prog: Program, mod: Any) -> Dict[str, Any]:
    """The program's tables on the device (int32 indices, fpar/pinv/consts in the dtype)."""
    i32 = {k: mod.asarray(np.ascontiguousarray(getattr(prog, k), dtype=np.int32))
           for k in ("ops", "sdim", "spad", "deltas", "stages", "pools", "lut", "accoff")}
    i32.update(fpar=mod.asarray(prog.fpar), pinv=mod.asarray(prog.pinv),
               consts=mod.asarray(prog.consts))
    return i32


def _max_slabs(prog: Program) -> int:
    return int(max(d1 - d0 for _, _, d0, d1 in prog.stages.tolist()))


def _pairs_per_launch(prog: Program, npairs: int, itemsize: int, budget: int,
                      global_slots: bool = False) -> int:
    """Pairs per group of launches: the window sums of pooled stages (Σ and Θ per
    pair) and the global branch slots (per block) within ``budget`` bytes, and at most
    ``MAX_BLOCKS`` blocks a launch."""
    nd = _max_slabs(prog)
    m = max(1, MAX_BLOCKS // max(nd, 1))
    per_pair = 2 * max(prog.accsize, 1) * itemsize if prog.pooled else 0
    if global_slots:
        per_pair += nd * slot_bytes(prog, itemsize)
    if per_pair:
        m = min(m, max(1, budget // per_pair))
    return max(1, min(m, npairs))


def run_pairs(prog: Program, x1: Any, x2: Any, var1: Tuple[Any, Any], var2: Tuple[Any, Any],
              pi: Any, pj: Any, want_ntk: bool, *, capture: bool = False,
              budget: int = 1 << 30, same: bool = False, stream: Any = 0) -> Tuple[Any, Any]:
    """Pooled Σ and Θ of the pairs ``(pi[p], pj[p])``.

    ``var1``/``var2``: ``(q, √q)`` per image and activation pixel, ``(n, nvar)``
    each. ``capture``: the pairs are self pairs (i, i) whose variances the
    kernel computes itself (``prog.selfvar``: pooled, branched or LayerNorm nets)
    and writes into ``var1`` (which must be ``var2``): every stage's δ = 0 slab
    runs first, alone. ``same``: x2 is x1, so a pair (i, i) is one input twice
    (``Dropout(mode="train")`` scales those)."""
    mod = _module(x1)
    dtype = np.dtype(str(x1.dtype))
    kernel = cuda_kernels.kernels(dtype)
    threads = SIM_THREADS if cuda_kernels.simulated() else THREADS
    shared_slots = slots_in_shared(prog, dtype.itemsize, threads)
    global_slots = prog.nslots > 0 and not shared_slots
    smem = shared_bytes(prog, dtype.itemsize, threads, shared_slots)
    host = mod is np   # NumPy arrays (the simulator): copied to the (fake) device once here
    dev = cuda_kernels.to_device if host else (lambda a: a)
    tab = {k: dev(v) for k, v in _tables(prog, mod).items()}
    maxbuf = int((prog.spad[:, 2] * prog.spad[:, 3]).max())
    npairs = int(pi.shape[0])
    out_k = dev(mod.zeros(npairs, dtype))
    out_t = dev(mod.zeros(npairs, dtype))
    x1d = dev(x1)
    x2d = x1d if x2 is x1 else dev(x2)
    v1 = tuple(dev(v) for v in var1)
    v2 = v1 if var2 is var1 else tuple(dev(v) for v in var2)
    # pair lists already on the device (``fill_streamed``) are used as they are
    pid, pjd = (dev(pi), dev(pj)) if isinstance(pi, np.ndarray) else (pi, pj)
    if stream != 0 and not host:
        mod.cuda.get_current_stream().synchronize()   # CuPy's zeros above, before stream
    step = _pairs_per_launch(prog, npairs, dtype.itemsize, budget, global_slots)
    inv_count = dtype.type(1.0 / prog.count)
    width = max(int(prog.accsize), 1) if prog.pooled else 1
    nslots = int(prog.nslots)
    slot_g = dev(mod.zeros(step * _max_slabs(prog) * 2 * nslots * maxbuf if global_slots else 1,
                           dtype))
    for a in range(0, npairs, step):
        b = min(npairs, a + step)
        pk = dev(mod.zeros((b - a, width), dtype))
        pt = dev(mod.zeros((b - a, width), dtype)) if want_ntk else pk
        for st, (_, _, d0, d1) in enumerate(prog.stages.tolist()):
            launches = [(d0, 1), (d0 + 1, d1 - d0 - 1)] if capture else [(d0, d1 - d0)]
            for ds, nd in launches:
                if nd <= 0:
                    continue
                kernel[(b - a) * nd, threads, stream, smem](
                    x1d, x2d, pid[a:b], pjd[a:b], v1[0], v1[1], v2[0], v2[1], tab["ops"],
                    tab["fpar"], tab["sdim"], tab["spad"], tab["deltas"], tab["stages"],
                    tab["pools"], tab["pinv"], tab["lut"], tab["accoff"], tab["consts"], pk, pt,
                    out_k[a:b], out_t[a:b], st, ds, nd, maxbuf, bool(prog.circ), bool(want_ntk),
                    bool(capture and ds == d0), inv_count, slot_g, bool(shared_slots), nslots,
                    bool(same or capture))
    if not host:
        return out_k, out_t
    if capture:
        for h, d in zip(var1, v1):
            h[...] = d.copy_to_host()
    return out_k.copy_to_host(), out_t.copy_to_host()


def fill_streamed(run: Any, mod: Any, dtype: Any, n1: int, n2: int, symmetric: bool,
                  budget: int, want_ntk: bool) -> Tuple[Any, Any]:
    """The ``n1 × n2`` NNGP (and NTK) from ``run(pi, pj, stream) -> (k, t)``: the chunks and
    results of ``cpu_slab.fill_pairs`` (upper triangle mirrored when ``symmetric``), with the
    host-to-device copies overlapped with compute: each chunk's pair lists are written into
    a pinned host buffer and copied asynchronously on that chunk's CUDA stream (one of
    ``STREAMS``, round robin) while the previous chunk's kernels run on theirs; a chunk's
    results are scattered once its stream has finished."""
    import numba.cuda  # noqa: PLC0415 (optional dependency: numba-cuda)

    k = mod.empty((n1, n2), dtype)
    t = mod.empty((n1, n2), dtype) if want_ntk else None
    chunk = CHUNK or int(max(LANES_MAX, min(CHUNK_PAIRS, budget // 64)))
    chunks = list(_pair_chunks(n1, n2, symmetric, chunk))
    size = max(int(pi.shape[0]) for pi, _ in chunks)
    streams = [numba.cuda.stream() for _ in range(STREAMS)]
    pinned = [numba.cuda.pinned_array((2, size), np.int64) for _ in range(STREAMS)]

    def send(c: int) -> Tuple[Any, Any]:
        pi, pj = chunks[c]
        buf, stream, m = pinned[c % STREAMS], streams[c % STREAMS], int(pi.shape[0])
        buf[0, :m] = pi   # buffer c % STREAMS is free: chunk c - STREAMS has finished
        buf[1, :m] = pj
        return (numba.cuda.to_device(buf[0, :m], stream=stream),
                numba.cuda.to_device(buf[1, :m], stream=stream))

    following = send(0)
    for c in range(len(chunks)):
        dpi, dpj = following
        stream = streams[c % STREAMS]
        ok, ot = run(dpi, dpj, stream)
        if c + 1 < len(chunks):
            following = send(c + 1)
        stream.synchronize()
        pi, pj = chunks[c] if mod is np else (mod.asarray(dpi), mod.asarray(dpj))
        put_pairs(k, t, pi, pj, ok, ot, symmetric)
    return k, t


def self_pass(prog: Program, x: Any, want_ntk: bool, budget: int
              ) -> Tuple[Any, Any, Tuple[Any, Any]]:
    """``k(x_i, x_i)``, ``Θ(x_i, x_i)`` and ``(q, √q)`` entering every activation, from
    the kernel on the self pairs (after an AvgPool the per-pixel variance needs the
    image's pooled self-covariance, which the self pair's δ = 0 slabs hold)."""
    mod = _module(x)
    n = int(x.shape[0])
    var = (mod.zeros((n, max(prog.nvar, 1)), x.dtype), mod.zeros((n, max(prog.nvar, 1)), x.dtype))
    idx = mod.arange(n, dtype=mod.int64)
    k, t = run_pairs(prog, x, x, var, var, idx, idx, want_ntk, capture=True, budget=budget,
                     same=True)
    return k, t, var


def _prepare(layers: List[LayerImpl], plan: ImagePlan, prog: Program, x: Any, xp: Any,
             budget: int) -> Tuple[Tuple[Any, Any], Optional[Any]]:
    """``(q, √q)`` of ``x`` and, for ``prog.selfvar`` nets (pooled, branched, LayerNorm),
    ``k(x_i, x_i)`` from the self pass."""
    if prog.selfvar:
        k, _, var = self_pass(prog, x, False, budget)
        return var, k
    mod = _module(x)
    q = _variances(layers, prog, plan, x, xp)
    return (q, mod.sqrt(q)), None


def _budget(mod: Any, memory_budget: int) -> int:
    free = device_free_bytes(mod)
    return int(memory_budget if free is None else min(memory_budget, FREE_MEMORY_FRACTION * free))


def evaluate(layers: List[LayerImpl], plan: ImagePlan, x1: Any, x2: Optional[Any], *,
             want_ntk: bool, memory_budget: int) -> Dict[str, Any]:
    """All pairs of x1 and x2 (x2=None: x1, upper triangle mirrored), then the flat tail."""
    mod = _module(x1)
    xp = namespace_of(x1)
    budget = _budget(mod, memory_budget)
    symmetric = x2 is None
    x1 = mod.ascontiguousarray(x1)
    x2f = x1 if symmetric else mod.ascontiguousarray(x2)
    prog = program(layers, plan, x1.dtype)
    var1, self1 = _prepare(layers, plan, prog, x1, xp, budget)
    var2, self2 = (var1, self1) if symmetric else _prepare(layers, plan, prog, x2f, xp, budget)
    n1, n2 = int(x1.shape[0]), int(x2f.shape[0])
    k, t = fill_streamed(lambda pi, pj, stream: run_pairs(
        prog, x1, x2f, var1, var2, pi, pj, want_ntk, budget=budget, same=symmetric, stream=stream),
        mod, x1.dtype, n1, n2, symmetric, budget, want_ntk)
    if not _needs_tail_variances(layers, prog):
        tail1, tail2 = mod.zeros(n1, x1.dtype), mod.zeros(n2, x1.dtype)
    elif symmetric:
        idx = mod.arange(n1, dtype=mod.int64)
        tail1 = tail2 = k[idx, idx].copy()
    else:
        tail1 = self1 if self1 is not None else _self_k(prog, x1, var1, budget)
        tail2 = self2 if self2 is not None else _self_k(prog, x2f, var2, budget)
    return _tail(layers, prog, k, t, tail1, tail2, False, want_ntk, xp, symmetric)


def _self_k(prog: Program, x: Any, var: Tuple[Any, Any], budget: int) -> Any:
    mod = _module(x)
    idx = mod.arange(int(x.shape[0]), dtype=mod.int64)
    return run_pairs(prog, x, x, var, var, idx, idx, False, budget=budget, same=True)[0]


def evaluate_diagonal(layers: List[LayerImpl], plan: ImagePlan, x: Any, *, want_ntk: bool,
                      memory_budget: int) -> Dict[str, Any]:
    """``k(x_i, x_i)`` for every image."""
    mod = _module(x)
    xp = namespace_of(x)
    budget = _budget(mod, memory_budget)
    x = mod.ascontiguousarray(x)
    prog = program(layers, plan, x.dtype)
    if prog.selfvar:
        k, t, _ = self_pass(prog, x, want_ntk, budget)
    else:
        q = _variances(layers, prog, plan, x, xp)
        var = (q, mod.sqrt(q))
        idx = mod.arange(int(x.shape[0]), dtype=mod.int64)
        k, t = run_pairs(prog, x, x, var, var, idx, idx, want_ntk, budget=budget, same=True)
    return _tail(layers, prog, k, t, k.copy(), None, True, want_ntk, xp)
