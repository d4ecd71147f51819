"""The block grid of a run's Grams: one block is one task and one Zarr chunk.

Parts of a run:

``train``       the symmetric n×n train Gram; block (i, j) with i <= j is
                computed once and written to its place and, transposed, to
                its mirror (j, i).
``test``        the m×n cross Gram K(test, train); every block is computed.
``diag-train``  k(x, x) for each train row block (posterior variances).
``diag-test``   the same for the test rows.

Blocks are squares of ``block_size`` (ragged at the edges); a Zarr chunk is
exactly one block, so a block write touches one chunk (two when mirrored).
How large a block is, is decided in :mod:`ntkscale.gram.plan`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, Iterable, List, Optional, Tuple

Range = Tuple[int, int]

PARTS = ("train", "test", "diag-train", "diag-test")

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
