"""bluefog.engine.memory: large op outputs recycled and on transparent huge pages."""

import gc
import os

import torch

from bluefog.engine import memory


def _thp_mode():
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as handle:
            text = handle.read()
    except OSError:
        return None
    return text[text.index("[") + 1:text.index("]")]


def _anon_huge_kb(address):
    """AnonHugePages of the mapping that holds ``address`` in /proc/self/smaps."""
    found = False
    with open("/proc/self/smaps") as handle:
        for line in handle:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                start, end = (int(part, 16) for part in head.split("-"))
                found = start <= address < end
            elif found and head == "AnonHugePages:":
                return int(line.split()[1])
    return None


def test_aligned_span_covers_whole_huge_pages_inside():
    page = memory.HUGE_PAGE
    assert memory._aligned_span(page + 16, 3 * page) == (2 * page, 4 * page)
    assert memory._aligned_span(0, page - 1) == (0, 0)
    start, end = memory._aligned_span(5 * page - 64, page + 128)
    assert start == 5 * page and end == 6 * page


def test_outputs_keep_their_shape_dtype_and_values():
    for source in (torch.arange(10.0), torch.zeros((2048, 1024), dtype=torch.float64),
                   torch.ones((3, 5), dtype=torch.int32), torch.ones(1 << 17, dtype=torch.float16),
                   torch.ones((), dtype=torch.float32), torch.ones(1 << 16, dtype=torch.bfloat16)):
        out = memory.empty_like(source)
        assert out.shape == source.shape and out.dtype == source.dtype and out.is_contiguous()
        out.copy_(source)
        assert torch.equal(out, source)
        wide = memory.new_empty(source, (4,) + tuple(source.shape))
        assert wide.shape == (4,) + tuple(source.shape) and wide.dtype == source.dtype


def test_a_dropped_output_is_reused_and_a_kept_one_is_not():
    pool = memory.pool
    first = memory.empty((1 << 18,), torch.float32)          # 1 MB
    address = first.data_ptr()
    kept = first[10:20]                                      # a view keeps the block in use
    del first
    gc.collect()
    second = memory.empty((1 << 18,), torch.float32)
    assert second.data_ptr() != address, "a block still in use was handed out again"
    del kept
    gc.collect()
    third = memory.empty((1 << 18,), torch.int32)             # same size in bytes, other dtype
    assert third.data_ptr() == address, "a dropped block was not reused"
    third.fill_(7)
    assert int(third.sum()) == 7 * (1 << 18)
    assert pool.held <= memory.LIMIT_BYTES
    small = memory.empty((16,), torch.float32)
    assert small.data_ptr() not in (address, second.data_ptr())


def test_the_pool_keeps_at_most_its_limit():
    pool = memory.BufferPool(limit_bytes=3 << 20, per_size=8)
    blocks = [pool.tensor((1 << 18,), torch.float32) for _ in range(6)]   # 1 MB each
    del blocks
    gc.collect()
    assert pool.held == 3 << 20


def test_large_outputs_sit_on_huge_pages_where_the_kernel_offers_them():
    out = memory.empty_like(torch.empty(1 << 23))        # 32 MB
    out.fill_(1.0)
    mode = _thp_mode()
    if mode in ("always", "madvise") and os.path.exists("/proc/self/smaps"):
        start, _ = memory._aligned_span(out.data_ptr(), out.numel() * 4)
        assert _anon_huge_kb(start) > 0, "no huge page under a 32 MB output"
    else:       # THP off or not Linux: the advice is not taken, the tensor works all the same
        assert memory._advise is None or mode in (None, "never")
    assert float(out.sum()) == float(1 << 23)


def test_a_pool_of_zero_gives_plain_resizable_tensors():
    pool, limit = memory.pool, memory.pool.limit
    try:
        pool.limit = 0                                     # BLUEFOG_OUTPUT_POOL_MB=0 at bf.init()
        out = memory.empty((1 << 18,), torch.float32)
        out.resize_(1 << 19)                               # a torch-owned storage can grow
        assert out.numel() == 1 << 19
    finally:
        pool.limit = limit
    recycled = memory.empty((1 << 18,), torch.float32)
    try:
        recycled.resize_(1 << 19)
        grew = True
    except RuntimeError:
        grew = False
    assert not grew, "a recycled result should be numpy-backed (not resizable)"
