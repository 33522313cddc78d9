"""The engine's one buffer pool (bluefog.engine.memory): blocks come back when the last tensor
using them is dropped, are never lent twice at once, and the pool keeps no more than its limit.
The multi-rank part (kernels' receive buffers) runs tests/cases/memory_pool_cases.py on 4 ranks."""

import gc
import random

import numpy as np
import pytest
import torch

from bluefog.engine import memory
from harness import case_params, case_result

MB = 1 << 20
N = MB // 4          # float32 elements in 1 MB, well above POOL_BYTES


def _idle(pool):
    """Bytes of the idle blocks the pool keeps, counted block by block."""
    return sum(block.nbytes for stack in pool._free.values() for block in stack)


@pytest.fixture
def fresh(monkeypatch):
    """A new pool behind memory.empty for the test (the module's pool is restored after)."""
    pool = memory.BufferPool()
    monkeypatch.setattr(memory, "pool", pool)
    return pool


def test_a_dropped_tensor_gives_its_block_to_the_next_one_of_that_many_bytes():
    pool = memory.BufferPool()
    first = pool.tensor((N,), torch.float32)
    address = first.data_ptr()
    del first
    assert pool.held == MB and pool.made == 1
    again = pool.tensor((N,), torch.float32)
    assert again.data_ptr() == address and pool.held == 0
    del again
    other = pool.tensor((2, N // 4), torch.float64)          # same bytes, other dtype and shape
    assert other.data_ptr() == address and pool.made == 1
    assert other.shape == (2, N // 4) and other.dtype == torch.float64
    del other
    bigger = pool.tensor((2 * N,), torch.float32)            # other size: a new block
    assert bigger.data_ptr() != address and pool.made == 2


def test_a_block_is_not_lent_again_while_any_view_of_it_lives():
    pool = memory.BufferPool()
    slots = pool.tensor((2, N // 2), torch.float32)
    address = slots.data_ptr()
    row, array = slots[1], slots.numpy()        # what kernels keep: a row, a numpy view (wire)
    del slots
    gc.collect()
    second = pool.tensor((2, N // 2), torch.float32)
    assert second.data_ptr() != address, "a block still in use was lent out again"
    row.fill_(1.0)
    second.fill_(2.0)
    assert float(row.sum()) == N // 2 and float(second.sum()) == 2.0 * N
    del row
    gc.collect()
    third = pool.tensor((N,), torch.float32)
    assert third.data_ptr() not in (address, second.data_ptr()), "the numpy view still uses it"
    third.fill_(3.0)
    assert float(second.sum()) == 2.0 * N and np.all(array[1] == 1.0)
    del array
    gc.collect()
    fourth = pool.tensor((N,), torch.float32)
    assert fourth.data_ptr() == address, "the block did not come back after its last view"


def test_live_tensors_never_share_memory():
    pool = memory.BufferPool(per_size=2)
    live = []
    for k in range(6):
        live.append(pool.tensor((N,), torch.float32).fill_(float(k)))
        if k % 2:
            live.pop(0)           # drop one now and then, so blocks go round
    for k, tensor in enumerate(live):
        assert torch.all(tensor == tensor[0]), "a live tensor was overwritten through another"
    assert len({t.data_ptr() for t in live}) == len(live)


def test_at_most_per_size_idle_blocks_of_one_size():
    pool = memory.BufferPool(per_size=3)
    blocks = [pool.tensor((N,), torch.float32) for _ in range(5)]
    addresses = {b.data_ptr() for b in blocks}
    del blocks
    gc.collect()
    assert pool.held == 3 * MB == _idle(pool)
    again = [pool.tensor((N,), torch.float32) for _ in range(5)]
    reused = {b.data_ptr() for b in again[:3]}
    assert reused <= addresses and len(reused) == 3
    assert pool.made == 5 + 2


def test_idle_bytes_never_exceed_the_limit():
    pool = memory.BufferPool(limit_bytes=5 * MB, per_size=4)
    rng = random.Random(7)
    live = []
    for _ in range(300):
        if live and rng.random() < 0.5:
            live.pop(rng.randrange(len(live)))
        else:
            live.append(pool.tensor((rng.choice((1, 2, 3)) * N,), torch.float32))
        assert pool.held == _idle(pool) <= pool.limit
        assert all(len(stack) <= pool.per_size for stack in pool._free.values())
    live.clear()
    gc.collect()
    assert 0 < pool.held == _idle(pool) <= 5 * MB


def test_a_limit_of_zero_turns_the_pool_off(fresh):
    fresh.limit = 0                                     # BLUEFOG_OUTPUT_POOL_MB=0 at bf.init()
    out = memory.empty((N,), torch.float32)
    del out
    assert fresh.made == 0 and fresh.held == 0
    grown = memory.empty((N,), torch.float32)
    grown.resize_(2 * N)                                # a plain torch tensor: resizable
    assert grown.numel() == 2 * N


def test_small_buffers_are_plain_tensors_and_large_ones_pooled(fresh):
    small = memory.empty((memory.POOL_BYTES // 4 - 1,), torch.float32)
    del small
    assert fresh.made == 0 and fresh.held == 0
    large = memory.empty((memory.POOL_BYTES // 4,), torch.float32)
    address = large.data_ptr()
    del large
    assert fresh.made == 1 and fresh.held == memory.POOL_BYTES
    assert memory.empty((memory.POOL_BYTES // 8,), torch.float64).data_ptr() == address


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64,
                                   torch.int8, torch.int32, torch.int64, torch.uint8, torch.bool,
                                   torch.complex64])
@pytest.mark.parametrize("shape", [(N,), (3, 5, 7, 1024), (1, N), (2, 0, 4), ()])
def test_pooled_tensors_have_the_asked_dtype_shape_and_layout(fresh, dtype, shape):
    out = memory.empty(shape, dtype)
    reference = torch.empty(shape, dtype=dtype)
    assert out.dtype == dtype and out.shape == shape and out.is_contiguous()
    assert out.stride() == reference.stride() and not out.is_cuda
    pooled = out.numel() * out.element_size() >= memory.POOL_BYTES
    assert fresh.made == (1 if pooled else 0)
    assert not pooled or out.data_ptr() % memory.ALIGN == 0     # as torch aligns its own
    values = (torch.arange(out.numel()) % 100).reshape(shape).to(dtype)
    out.copy_(values)
    assert torch.equal(out, values)
    like = memory.empty_like(values)
    wide = memory.new_empty(values, (2,) + tuple(shape))
    assert like.shape == values.shape and like.dtype == dtype
    assert wide.shape == (2,) + tuple(shape) and wide.dtype == dtype


def test_bounded_cache_empties_when_full():
    cache = memory.BoundedCache(3)
    for k in range(3):
        assert cache.put(k, str(k)) == str(k)
    assert dict(cache) == {0: "0", 1: "1", 2: "2"}
    cache.put(1, "one")                       # full: a put empties it first
    assert dict(cache) == {1: "one"}
    for k in range(100):
        cache.put(k, k)
        assert len(cache) <= 3


@pytest.mark.parametrize("case,size", case_params("memory_pool_cases.py", sizes=(4,)))
def test_kernels_receive_into_pooled_buffers(case, size):
    case_result("memory_pool_cases.py", case, size)
