"""bluefog.packing: many tensors as one flat buffer and back (no communication)."""

import torch

from bluefog.packing import adjacent_span, pack, split_like

SHAPES = [(2, 3), (4,), (), (0,), (9,)]


def test_split_like_gives_views_in_order():
    flat = torch.arange(20.0)
    views = split_like(flat, [torch.empty(s) for s in SHAPES])
    assert [tuple(v.shape) for v in views] == SHAPES
    assert all(v.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr() for v in views)
    assert torch.equal(torch.cat([v.reshape(-1) for v in views]), flat)


def test_adjacent_span_is_the_memory_itself():
    flat = torch.arange(20.0)
    span = adjacent_span(split_like(flat, [torch.empty(s) for s in SHAPES]))
    assert span is not None and span.data_ptr() == flat.data_ptr() and torch.equal(span, flat)
    span[0] = -1.0
    assert flat[0] == -1.0
    a = torch.arange(10.0)
    assert torch.equal(adjacent_span([torch.empty(0), a[1:3], a[3:5]]), a[1:5])


def test_adjacent_span_refuses_gaps_dtypes_strides_and_other_allocations():
    a = torch.arange(10.0)
    assert adjacent_span([a[:3], a[4:]]) is None                       # a gap
    assert adjacent_span([a[:3], a[3:].double()]) is None              # another dtype
    m = torch.arange(12.0).reshape(3, 4)
    assert adjacent_span([m[:, :2]]) is None                           # not contiguous
    assert adjacent_span([torch.ones(3), torch.ones(3)]) is None       # two allocations
    assert adjacent_span([torch.empty(0), torch.empty(0)]) is None


def test_pack_copies_unless_read_only_and_adjacent():
    flat = torch.arange(6.0)
    parts = split_like(flat, [torch.empty(2), torch.empty(4)])
    assert pack(parts, torch.float32, read_only=True).data_ptr() == flat.data_ptr()
    copied = pack(parts, torch.float32)
    assert copied.data_ptr() != flat.data_ptr() and torch.equal(copied, flat)
    assert pack([torch.ones(2, dtype=torch.float16)], torch.float32).dtype == torch.float32
