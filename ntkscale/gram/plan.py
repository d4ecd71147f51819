"""Tile the Gram matrices into blocks (pure planning: no Dask, no I/O).

Parts of a run:

``train``       the symmetric n×n train Gram; block (i, j) with i <= j is
                computed once and written to its place and, transposed, to
                its mirror (j, i).
``test``        the m×n cross Gram K(test, train); every block is computed.
``diag-train``  k(x, x) for each train row block (posterior variances).
``diag-test``   the same for the test rows.

Blocks are squares of ``block_size`` (ragged at the edges); a Zarr chunk is
exactly one block, so a block write touches one chunk (two when mirrored).
The block size comes from the config, from the store (which always wins), or
from :func:`choose_block_size`: the largest size whose task fits a memory
budget (outputs plus the engine's temporaries, which the spec declares),
shrunk until every task slot gets a few blocks.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

Range = Tuple[int, int]

PARTS = ("train", "test", "diag-train", "diag-test")
#: Block sizes are multiples of this (and at least this, unless n is smaller).
BLOCK_QUANTUM = 128
MAX_BLOCK = 16384
#: Aim for at least this many Gram blocks per task slot (load balance, tail).
BLOCKS_PER_SLOT = 4
#: Rows of a block the kernel engine must be able to hold at once (see block_size_for_memory).
ENGINE_STRIP_ROWS = BLOCK_QUANTUM


def grid(n: int, block: int) -> List[Range]:
    """``[(0, b), (b, 2b), ...]`` covering ``range(n)``; the last one is ragged."""
    return [(s, min(s + block, n)) for s in range(0, n, block)]


@dataclasses.dataclass(frozen=True)
class Block:
    """One task: rows × cols of a part (for ``diag-*`` the rows only)."""

    part: str
    i: int
    j: int
    rows: Range
    cols: Range

    @property
    def key(self) -> str:
        return f"{self.part}-{self.i}" if self.part.startswith("diag") else f"{self.part}-{self.i}-{self.j}"

    @property
    def is_diag(self) -> bool:
        return self.part.startswith("diag")

    @property
    def mirrored(self) -> bool:
        """An off-diagonal train block: also written, transposed, at (j, i)."""
        return self.part == "train" and self.i != self.j

    @property
    def symmetric(self) -> bool:
        """A diagonal train block: ``kernel_fn(x_i)`` with x2 = x1."""
        return self.part == "train" and self.i == self.j

    @property
    def row_set(self) -> str:
        """Which input set the rows come from."""
        return "test" if self.part in ("test", "diag-test") else "train"

    @property
    def shape(self) -> Tuple[int, ...]:
        r = self.rows[1] - self.rows[0]
        return (r,) if self.is_diag else (r, self.cols[1] - self.cols[0])

    @property
    def entries(self) -> int:
        """Kernel entries this task computes."""
        return math.prod(self.shape)

    @property
    def stored_entries(self) -> int:
        """Entries this task writes to the store (twice for a mirrored block)."""
        return self.entries * (2 if self.mirrored else 1)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Every block of a run, in submission order (cheap diagonals first)."""

    n_train: int
    n_test: int
    block_size: int
    blocks: Tuple[Block, ...]

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    def by_part(self) -> Dict[str, List[Block]]:
        out: Dict[str, List[Block]] = {p: [] for p in PARTS}
        for b in self.blocks:
            out[b.part].append(b)
        return {p: v for p, v in out.items() if v}

    def gram_blocks(self) -> List[Block]:
        return [b for b in self.blocks if not b.is_diag]

    def chunk_shape(self, part: str) -> Tuple[int, ...]:
        return chunk_shape(part, self.n_train, self.n_test, self.block_size)

    def storage_bytes(self, itemsize: int, n_kernels: int) -> int:
        """Bytes of every Gram and diagonal array (all kernels)."""
        n, m = self.n_train, self.n_test
        return int((n * n + m * n + n + m) * itemsize * n_kernels)

    def computed_entries(self, blocks: Optional[Iterable[Block]] = None) -> int:
        return sum(b.entries for b in (self.blocks if blocks is None else blocks))

    def stored_entries(self, blocks: Optional[Iterable[Block]] = None) -> int:
        return sum(b.stored_entries for b in (self.blocks if blocks is None else blocks))


def chunk_shape(part: str, n_train: int, n_test: int, block_size: int) -> Tuple[int, ...]:
    """Zarr chunk shape of a part's arrays: one block, clipped to the array."""
    rows = n_test if part in ("test", "diag-test") else n_train
    if part.startswith("diag"):
        return (max(1, min(block_size, rows)),)
    return (max(1, min(block_size, rows)), max(1, min(block_size, n_train)))


def make_plan(n_train: int, n_test: int, block_size: int) -> Plan:
    """All blocks for an n×n train Gram (upper triangle) and an m×n test Gram."""
    if n_train < 1 or n_test < 0 or block_size < 1:
        raise ValueError(f"bad plan sizes: n_train={n_train}, n_test={n_test}, block_size={block_size}")
    tr, te = grid(n_train, block_size), grid(n_test, block_size)
    blocks: List[Block] = [Block("diag-train", i, 0, r, r) for i, r in enumerate(tr)]
    blocks += [Block("diag-test", i, 0, r, r) for i, r in enumerate(te)]
    blocks += [Block("train", i, j, tr[i], tr[j]) for i in range(len(tr)) for j in range(i, len(tr))]
    blocks += [Block("test", i, j, te[i], tr[j]) for i in range(len(te)) for j in range(len(tr))]
    return Plan(n_train, n_test, block_size, tuple(blocks))


def n_gram_blocks(n_train: int, n_test: int, block: int) -> int:
    r, t = -(-n_train // block), -(-n_test // block)
    return r * (r + 1) // 2 + t * r


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
