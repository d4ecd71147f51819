"""How large a Gram block is, and what a plan costs (pure planning: no Dask, no I/O).

The block size comes from the config, from the store (which always wins), or
from :func:`choose_block_size`: the largest size whose task fits a memory
budget (outputs plus the engine's temporaries, which the spec declares),
shrunk until every task slot gets a few blocks. The block grid itself is
:mod:`ntkscale.store.blocks`.
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, Sequence

from ..store.blocks import Plan, n_gram_blocks

#: Block sizes are multiples of this (and at least this, unless n is smaller).
BLOCK_QUANTUM = 128
MAX_BLOCK = 16384
#: Aim for at least this many Gram blocks per task slot (load balance, tail).
BLOCKS_PER_SLOT = 4
#: Rows of a block the kernel engine must be able to hold at once (see block_size_for_memory).
ENGINE_STRIP_ROWS = BLOCK_QUANTUM


def block_size_for_memory(memory_per_task: int, itemsize: int, n_kernels: int,
                          bytes_per_entry: float = 0.0) -> int:
    """Largest block (multiple of BLOCK_QUANTUM) whose task fits ``memory_per_task``.

    A task holds its ``n_kernels`` outputs plus one transposed copy for the
    mirror write, B² entries each, in half the budget; the kernel engine gets
    the other half for its temporaries, which it tiles. ``bytes_per_entry`` is
    what the spec declares its engine needs per kernel entry
    (``kernel_fn.cost(shape)["bytes"] × itemsize``): the block is also kept
    narrow enough that a strip of ``ENGINE_STRIP_ROWS`` rows across its B
    columns fits the engine's half, so an image network (thousands of
    covariance entries per pair) gets smaller blocks than a flat one. For flat
    networks the strip bound sits far above ``MAX_BLOCK``. (The spec declaring
    its memory follows Falkon's ``extra_mem``, Meanti et al. 2020.)
    """
    half = max(1, memory_per_task // 2)
    b = int(math.isqrt(max(1, half // ((n_kernels + 1) * itemsize))))
    if bytes_per_entry > 0:
        b = min(b, int(half // (ENGINE_STRIP_ROWS * bytes_per_entry)))
    return max(BLOCK_QUANTUM, min(MAX_BLOCK, b // BLOCK_QUANTUM * BLOCK_QUANTUM))


def choose_block_size(n_train: int, n_test: int, *, itemsize: int, n_kernels: int,
                      memory_per_task: int, slots: int = 1, bytes_per_entry: float = 0.0) -> int:
    """Block size from a memory budget (and the spec's declared ``bytes_per_entry``,
    see :func:`block_size_for_memory`), shrunk until each slot has a few blocks.

    Sizes are tried as n / R for R = 1, 2, ... row blocks (rounded up to the
    quantum) so blocks come out even, not with a thin ragged last row.
    """
    b_mem = block_size_for_memory(memory_per_task, itemsize, n_kernels, bytes_per_entry)
    want = BLOCKS_PER_SLOT * max(1, slots)
    rows = 1
    while True:
        b = -(-n_train // rows)
        b = -(-b // BLOCK_QUANTUM) * BLOCK_QUANTUM
        if b <= BLOCK_QUANTUM:
            b = BLOCK_QUANTUM
            break
        if b <= b_mem and n_gram_blocks(n_train, n_test, b) >= want:
            break
        rows += 1
    return effective_block_size(b, n_train, n_test)


def effective_block_size(block_size: int, n_train: int, n_test: int) -> int:
    """A block larger than every dimension is recorded as the largest dimension."""
    return max(1, min(int(block_size), max(n_train, n_test)))


def describe(plan: Plan, itemsize: int, get: Sequence[str], flops_per_entry: float,
             done: Iterable[str] = ()) -> Dict[str, object]:
    """JSON-able summary (what ``ntkscale plan`` prints)."""
    done = set(done)
    todo = [b for b in plan.blocks if b.key not in done]
    parts = {p: {"blocks": len(v), "done": sum(b.key in done for b in v),
                 "entries": plan.computed_entries(v)} for p, v in plan.by_part().items()}
    return {
        "n_train": plan.n_train, "n_test": plan.n_test, "block_size": plan.block_size,
        "get": list(get), "blocks_total": plan.n_blocks, "blocks_done": plan.n_blocks - len(todo),
        "blocks_todo": len(todo), "parts": parts,
        "storage_bytes": plan.storage_bytes(itemsize, len(get)),
        "flops_total": float(plan.computed_entries() * flops_per_entry),
        "flops_todo": float(plan.computed_entries(todo) * flops_per_entry),
        "entries_todo": plan.computed_entries(todo),
    }
