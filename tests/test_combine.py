"""The averaging arithmetic (bluefog.ops.combine) computed in place equals the out-of-place one."""

import pytest
import torch

from bluefog.ops import combine as mix


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("combine", [mix.uniform(), mix.uniform([1]), mix.uniform([], 3),
                                     mix.weighted(0.3, [0.5, 0.2]), mix.weighted(1.0, [0.0, 2.0], 4)])
def test_in_place_gives_the_same_bits(dtype, combine):
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(7, 3, generator=g) * 10).to(dtype)
    received = (torch.randn(2, 7, 3, generator=g) * 10).to(dtype)
    expected = combine(x, received)
    work = x.clone()
    out = mix.combine_in_place(combine, work, received)
    assert out is work and out.dtype == dtype
    assert torch.equal(out, expected)
