"""Block plan: every Gram entry exactly once; block size from memory and slots."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ntkscale import stax
from ntkscale.gram.plan import (BLOCK_QUANTUM, ENGINE_STRIP_ROWS, MAX_BLOCK, block_size_for_memory,
    choose_block_size, describe)
from ntkscale.store.blocks import chunk_shape, make_plan, n_gram_blocks
from ntkscale.gram.schedule import block_cost, submission_order


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 90), m=st.integers(0, 40), b=st.integers(1, 50))
def test_plan_covers_every_entry_exactly_once(n, m, b):
    plan = make_plan(n, m, b)
    train, test = np.zeros((n, n), int), np.zeros((m, n), int)
    diag = {"diag-train": np.zeros(n, int), "diag-test": np.zeros(m, int)}
    keys = set()
    for blk in plan.blocks:
        assert blk.key not in keys
        keys.add(blk.key)
        (r0, r1), (c0, c1) = blk.rows, blk.cols
        assert 0 < r1 - r0 <= b
        if blk.is_diag:
            diag[blk.part][r0:r1] += 1
        elif blk.part == "train":
            assert blk.i <= blk.j
            train[r0:r1, c0:c1] += 1
            if blk.mirrored:
                train[c0:c1, r0:r1] += 1
        else:
            test[r0:r1, c0:c1] += 1
        # a block is exactly one chunk of its array
        chunk = chunk_shape(blk.part, n, m, b)
        assert r0 % chunk[0] == 0 and (blk.is_diag or c0 % chunk[1] == 0)
    assert (train == 1).all() and (test == 1).all()
    assert (diag["diag-train"] == 1).all() and (diag["diag-test"] == 1).all()
    assert len(plan.gram_blocks()) == n_gram_blocks(n, m, b)
    assert plan.computed_entries() >= n * (n + 1) // 2 + m * n


def test_upper_triangle_block_counts():
    plan = make_plan(100, 30, 32)
    parts = plan.by_part()
    assert len(parts["train"]) == 4 * 5 // 2 and len(parts["test"]) == 1 * 4
    assert len(parts["diag-train"]) == 4 and len(parts["diag-test"]) == 1
    assert plan.blocks[0].part == "diag-train"  # cheap diagonals go first
    assert plan.stored_entries(parts["train"]) == 100 * 100


def test_block_size_from_memory():
    b = block_size_for_memory(2 << 30, itemsize=4, n_kernels=2)
    assert b % BLOCK_QUANTUM == 0
    assert b * b * 4 * 3 <= (2 << 30) // 2 < (b + BLOCK_QUANTUM) ** 2 * 4 * 3
    assert block_size_for_memory(1, 8, 1) == BLOCK_QUANTUM


def test_block_size_leaves_every_slot_some_blocks():
    b = choose_block_size(16384, 0, itemsize=4, n_kernels=2, memory_per_task=8 << 30, slots=2)
    assert b == 4096 and n_gram_blocks(16384, 0, b) >= 8
    # memory caps the size; blocks come out even (no thin ragged last row)
    b = choose_block_size(16384, 0, itemsize=4, n_kernels=2, memory_per_task=1 << 30, slots=1)
    assert b <= block_size_for_memory(1 << 30, 4, 2) and b % BLOCK_QUANTUM == 0
    assert 16384 - (16384 // b) * b > b // 2
    # smaller than one block: the whole matrix is one block, recorded as n
    assert choose_block_size(50, 20, itemsize=8, n_kernels=1, memory_per_task=1 << 30, slots=1) == 50


def test_block_size_follows_the_spec_declared_bytes():
    """Same budget: an image net (thousands of covariance entries per pair) gets
    smaller blocks than a flat net, and the block size follows the budget."""
    flat = stax.serial(stax.Dense(512), stax.Relu(), stax.Dense(1))[2]
    image = stax.serial(stax.Conv(64, (3, 3), padding="SAME"), stax.Relu(),
                        stax.Conv(64, (3, 3), padding="SAME"), stax.Relu(), stax.Flatten(), stax.Dense(1))[2]
    itemsize, budget, n = 4, 2 << 30, 60000
    per_entry = {name: kfn.cost(shape)["bytes"] * itemsize
                 for name, kfn, shape in (("flat", flat, (784,)), ("image", image, (16, 16, 3)))}
    assert per_entry["image"] > 100 * per_entry["flat"]
    sizes = {name: choose_block_size(n, 0, itemsize=itemsize, n_kernels=2, memory_per_task=budget,
                                     bytes_per_entry=b) for name, b in per_entry.items()}
    assert sizes["image"] < sizes["flat"]
    # the flat net is bound by its outputs only (as without declared bytes) ...
    assert block_size_for_memory(budget, itemsize, 2, per_entry["flat"]) == block_size_for_memory(budget, itemsize, 2)
    # ... the image net by a strip of ENGINE_STRIP_ROWS rows of temporaries in half the budget
    b = block_size_for_memory(budget, itemsize, 2, per_entry["image"])
    assert b == BLOCK_QUANTUM or ENGINE_STRIP_ROWS * b * per_entry["image"] <= budget // 2
    # and the block size changes with the budget
    b_big = block_size_for_memory(64 * budget, itemsize, 2, per_entry["image"])
    assert b_big > b or b_big == MAX_BLOCK


def test_describe_counts_done_blocks():
    plan = make_plan(64, 0, 32)
    info = describe(plan, 8, ("ntk",), 10.0, done={"train-0-0", "diag-train-0"})
    assert info["blocks_total"] == 5 and info["blocks_done"] == 2 and info["blocks_todo"] == 3
    assert info["storage_bytes"] == (64 * 64 + 64) * 8
    assert info["parts"]["train"] == {"blocks": 3, "done": 1, "entries": 3 * 32 * 32}


def test_bad_sizes():
    with pytest.raises(ValueError):
        make_plan(0, 0, 8)


def test_blocks_are_submitted_largest_first():
    plan = make_plan(10, 7, 4)          # ragged train and test grids, diagonal segments
    order = submission_order(plan.blocks)
    assert sorted(b.key for b in order) == sorted(b.key for b in plan.blocks)
    costs = [block_cost(b) for b in order]
    assert costs == sorted(costs, reverse=True)
    assert order[0].mirrored and order[0].shape == (4, 4)     # full off-diagonal train block
    assert order[-1].is_diag and order[-1].shape == (2,)      # the ragged diagonal segment last
    ties = [b.key for b in order if block_cost(b) == costs[0]]
    assert ties == [b.key for b in plan.blocks if block_cost(b) == costs[0]]  # stable
