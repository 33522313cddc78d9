"""bluefog.averaging against plain-torch formulas written here (single process, no MPI).

Uniform averages and summed rows must match the reference bit for bit (sum in order, divide once,
16-bit floats in float32 rounded once); weighted sums to a few roundings, plus exact cases whose
result depends on the order of the terms.
"""

import ast
import pathlib
import types

import numpy as np
import pytest
import torch

from bluefog import averaging
from bluefog.engine import kernels
from bluefog.ops import combine as mix

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
HALF = (torch.float16, torch.bfloat16)


def work_of(dtype):
    return torch.float32 if dtype in HALF else dtype if dtype.is_floating_point else torch.float64


def data(dtype, *shape, seed=0, scale=10.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def as_bytes(t):
    """A tensor's data as a flat uint8 numpy array (as it comes with a negotiation round)."""
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().copy()


def ref_uniform(x, rows, chosen=None, scale=1):
    chosen = range(len(rows)) if chosen is None else chosen
    work = work_of(x.dtype)
    acc = x.to(work)
    for k in chosen:
        acc = acc + rows[k].to(work)
    return (acc / ((len(chosen) + 1) * scale)).to(x.dtype)


def ref_weighted(x, rows, self_weight, weights, divisor=1):
    acc = torch.zeros(x.shape, dtype=torch.float64)
    for k, w in enumerate(weights):
        if w != 0:
            acc = acc + w * rows[k].double()
    acc = acc + self_weight * x.double()
    return acc / divisor


def close_to(result, exact, dtype):
    """``result`` (in dtype) is ``exact`` (float64) rounded, up to a few roundings of the work
    dtype and one of dtype."""
    eps = torch.finfo(dtype).eps
    work_eps = torch.finfo(work_of(dtype)).eps
    bound = exact.abs() * (eps + 8 * work_eps) + 8 * work_eps * 40
    return bool(((result.double() - exact).abs() <= bound).all())


def row_forms(rows):
    """The same rows as a stacked tensor, a list of tensors, and a list of raw-byte arrays."""
    return {"stacked": rows, "tensors": [r.clone() for r in rows],
            "bytes": [as_bytes(r) for r in rows]}


# ---------------------------------------------------------------- uniform average
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", ["stacked", "tensors", "bytes"])
@pytest.mark.parametrize("chosen,scale", [(None, 1), ((1,), 1), ((0, 2), 1), ((), 3), (None, 2),
                                          ((2, 0), 1)])
@pytest.mark.parametrize("grad", [False, True])
def test_uniform_average_bits(dtype, form, chosen, scale, grad):
    """(``grad``: x requires grad, so torch computes what numpy computes otherwise.)"""
    x = data(dtype, 5, 7, seed=1).requires_grad_(grad)
    rows = data(dtype, 3, 5, 7, seed=2)
    expected = ref_uniform(x.detach(), rows, chosen, scale)
    before = x.detach().clone()
    got = averaging.uniform_average(x, row_forms(rows)[form], chosen, scale).detach()
    assert got.dtype == dtype and got.shape == x.shape
    assert torch.equal(x.detach(), before)                      # x untouched
    got = mix.uniform(chosen, scale)(x, row_forms(rows)[form]).detach()
    assert torch.equal(got, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", ["stacked", "bytes"])
def test_uniform_average_no_rows(dtype, form):
    x = data(dtype, 6, seed=3)
    rows = {"stacked": torch.empty((0, 6), dtype=dtype), "bytes": []}[form]
    got = averaging.uniform_average(x, rows)
    assert torch.equal(got, x) and got.data_ptr() != x.data_ptr()
    got = averaging.uniform_average(x, rows, divisor_scale=4)
    assert torch.equal(got, ref_uniform(x, [], None, 4))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", ["stacked", "tensors", "bytes"])
@pytest.mark.parametrize("contiguous", [True, False])
def test_uniform_average_into(dtype, form, contiguous):
    """Into x itself (in place), and into another tensor, with the same bits."""
    base = data(dtype, 4, 6, seed=4)
    rows = data(dtype, 2, 4, 6, seed=5)
    expected = ref_uniform(base, rows)
    x = base.clone() if contiguous else base.t().contiguous().t()   # a non-contiguous copy
    assert torch.equal(x, base)
    got = averaging.uniform_average(x, row_forms(rows)[form], out=x)
    assert got is x and torch.equal(x, expected)
    other = torch.full_like(base, 7)
    got = averaging.uniform_average(base, row_forms(rows)[form], (0, 1), out=other)
    assert got is other and torch.equal(other, expected)
    assert torch.equal(mix.combine_in_place(mix.uniform([1]), base.clone(), rows),
                       ref_uniform(base, rows, [1]))


def test_uniform_divides_once():
    """(3r)/3 == r exactly in float32 and the sum is never formed as products with 1/n."""
    r = torch.arange(1000, dtype=torch.float32) * 0.37
    x = r * 3 - r - r
    rows = torch.stack([r, r])
    assert torch.equal(averaging.uniform_average(x, rows), (x + r + r) / 3)
    products = x * (1 / 3) + r * (1 / 3) + r * (1 / 3)
    assert not torch.equal(averaging.uniform_average(x, rows), products)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_uniform_adds_x_first_then_rows_in_order(dtype):
    """(1 + 2^60) - 2^60 = 0: x, then row 0, then row 1 (other orders give 1/3)."""
    big = 2.0 ** 60
    x = torch.ones(5, dtype=dtype)
    rows = torch.tensor([[big] * 5, [-big] * 5], dtype=dtype)
    for form in row_forms(rows).values():
        assert (averaging.uniform_average(x, form) == 0).all()
        assert (averaging.uniform_average(x.clone(), form, out=x.clone()) == 0).all()


@pytest.mark.parametrize("dtype", HALF)
def test_half_precision_is_computed_in_float32(dtype):
    """2048 + 1 + 1 in float16 stays 2048; computed in float32 and rounded once it is 2050."""
    x = torch.full((4,), 2048.0, dtype=dtype)
    rows = torch.ones((2, 4), dtype=dtype)
    expected = torch.tensor(2050.0 / 3).to(dtype)
    assert (averaging.uniform_average(x, rows) == expected).all()
    assert (averaging.window_combine(x, rows, 0.5, [0.25, 0.25]) ==
            torch.tensor(1024.5).to(dtype)).all()


def test_float64_tiny_values_stay_exact():
    x = torch.full((3,), 2.0 ** -256, dtype=torch.float64)
    rows = x.repeat(3, 1)
    assert (averaging.uniform_average(x, rows) == 2.0 ** -256).all()
    assert (averaging.weighted_sum(x, rows, 1.0, [1.0, 1.0, 1.0]) == 4 * 2.0 ** -256).all()


# ---------------------------------------------------------------- weighted sum
WEIGHTS = [(0.3, [0.5, 0.2, 0.0], 1), (1.0, [0.0, 2.0, 1.5], 4), (0.0, [0.0, 0.0, 1.0], 1),
           (0.25, [0.25, 0.25, 0.25], 1), (2.0, [], 3)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", ["stacked", "tensors", "bytes"])
@pytest.mark.parametrize("self_weight,weights,divisor", WEIGHTS)
def test_weighted_sum(dtype, form, self_weight, weights, divisor):
    x = data(dtype, 5, 3, seed=6)
    rows = data(dtype, 3, 5, 3, seed=7)
    exact = ref_weighted(x, rows, self_weight, weights, divisor)
    got = averaging.weighted_sum(x, row_forms(rows)[form], self_weight, weights, divisor)
    assert got.dtype == dtype and got.shape == x.shape
    assert close_to(got, exact, dtype)
    got = mix.weighted(self_weight, weights, divisor)(x, row_forms(rows)[form])
    assert close_to(got, exact, dtype)
    into = x.clone()
    assert mix.combine_in_place(mix.weighted(self_weight, weights, divisor), into,
                                row_forms(rows)[form]) is into
    assert close_to(into, exact, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_weighted_sum_term_order(dtype):
    """Slots in ascending order, then the self term: (2^60 - 2^60) + 1 = 1, not 0."""
    big = 2.0 ** 60
    x = torch.ones(4, dtype=dtype)
    rows = torch.tensor([[big] * 4, [-big] * 4], dtype=dtype)
    assert (averaging.weighted_sum(x, rows, 1.0, [1.0, 1.0]) == 1).all()
    assert (averaging.weighted_sum(x, rows, 1.0, [1.0, 1.0], divisor=4) == 0.25).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_weighted_sum_skips_zero_weights(dtype):
    """A row of weight 0 is not read (its inf / nan does not reach the result)."""
    x = torch.full((3,), 2.0, dtype=dtype)
    rows = torch.stack([torch.full((3,), float("nan"), dtype=dtype), torch.ones(3, dtype=dtype)])
    got = averaging.weighted_sum(x, rows, 0.5, [0.0, 3.0])
    assert (got == 4.0).all()


# ---------------------------------------------------------------- window combine, associated p
@pytest.mark.parametrize("dtype", DTYPES + [torch.int32, torch.int64])
def test_window_combine(dtype):
    x = data(dtype, 8, seed=8)
    slots = [data(dtype, 8, seed=9 + k) for k in range(3)]
    host = x.clone()
    got = averaging.window_combine(host, slots, out=host)
    if dtype.is_floating_point:
        expected = ref_uniform(x, slots)
    else:   # integers: computed in float64, truncated back
        expected = ((x.double() + slots[0] + slots[1] + slots[2]) / 4).to(dtype)
    assert got is host and torch.equal(host, expected)
    weights = [0.5, 0.0, 0.25]
    got = averaging.window_combine(x, slots, 0.25, weights)
    exact = ref_weighted(x, slots, 0.25, weights)
    if dtype.is_floating_point:
        assert close_to(got, exact, dtype)
    else:
        assert torch.equal(got, exact.to(dtype))


def test_associated_p():
    assert averaging.associated_p(1.0, [0.5, 0.25]) == (1.0 + 0.5 + 0.25) / 3
    assert averaging.associated_p(0.5, []) == 0.5
    assert averaging.associated_p(1.0, [3.0, float("nan"), 2.0], 0.5, [0.25, 0.0, 0.125]) == \
        0.25 * 3.0 + 0.125 * 2.0 + 0.5 * 1.0
    big = 2.0 ** 60          # as the tensor: uniform adds self first, weighted adds it last
    assert averaging.associated_p(1.0, [big, -big]) == 0.0
    assert averaging.associated_p(1.0, [big, -big], 1.0, [1.0, 1.0]) == 1.0
    # p follows a 1-element float64 tensor through the same combine exactly
    p, slots, weights = 0.7, [0.1, 0.35, 0.9], [0.2, 0.3, 0.1]
    tensor = averaging.window_combine(torch.tensor([p], dtype=torch.float64),
                                      [torch.tensor([q], dtype=torch.float64) for q in slots],
                                      0.4, weights)
    assert float(tensor) == averaging.associated_p(p, slots, 0.4, weights)


# ---------------------------------------------------------------- summed rows
def ref_summed(rows, divisor):
    work = work_of(rows.dtype)
    acc = rows[0].to(work)
    for row in rows[1:]:
        acc = acc + row.to(work)
    if divisor > 1:
        acc = acc / divisor
    return acc.to(rows.dtype)


# (integer data is summed, never averaged: no divisor for it)
@pytest.mark.parametrize("dtype, divisor", [(d, k) for d in DTYPES for k in (1, 3)]
                         + [(torch.int32, 1), (torch.int64, 1)])
@pytest.mark.parametrize("form", ["bytes", "tensor"])
@pytest.mark.parametrize("into", [False, True])
def test_summed_rows(dtype, divisor, form, into):
    like = data(dtype, 3, 5, seed=20)
    rows = data(dtype, 4, 3, 5, seed=21)
    stacked = (np.stack([as_bytes(r) for r in rows]) if form == "bytes" else rows.clone())
    expected = ref_summed(rows, divisor)
    out = torch.zeros_like(like) if into else None
    got = averaging.summed_rows(stacked, like, out, divisor)
    assert got.dtype == dtype and got.shape == like.shape
    assert torch.equal(got, expected)
    if into:
        assert got is out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_summed_rows_rank_order(dtype):
    """Added row after row: (2^60 + 1) - 2^60 = 0 in rank order (pairwise sums would differ)."""
    big = 2.0 ** 60
    rows = torch.tensor([[big] * 3, [1.0] * 3, [-big] * 3, [1.0] * 3], dtype=dtype)
    stacked = np.stack([as_bytes(r) for r in rows])
    assert (averaging.summed_rows(stacked, rows[0]) == 1.0).all()
    assert (averaging.summed_rows(rows, rows[0]) == 1.0).all()


# ---------------------------------------------------------------- the engine's use
def test_combined_from_round_reads_bytes():
    x = data(torch.float32, 6, seed=30)
    parts = data(torch.float32, 2, 6, seed=31)
    carried = types.SimpleNamespace(received={1: as_bytes(parts[0]), 3: as_bytes(parts[1])},
                                    delivered=frozenset({2}))
    sends = [(2, None)]
    for combine, expected in [(mix.uniform(), ref_uniform(x, parts)),
                              (mix.weighted(0.5, [0.25, 0.25]), None)]:
        got = kernels.combined_from_round(x, sends, [1, 3], combine, carried)
        if expected is None:
            assert close_to(got, ref_weighted(x, parts, 0.5, [0.25, 0.25]), torch.float32)
        else:
            assert torch.equal(got, expected)
    # something not carried: the kernel exchanges instead
    assert kernels.combined_from_round(x, [(2, None), (5, None)], [1, 3], mix.uniform(),
                                        carried) is None
    assert kernels.combined_from_round(x, sends, [1, 4], mix.uniform(), carried) is None


def test_averaging_is_a_leaf_module():
    """It imports numpy and torch only: nothing of bluefog, never mpi4py."""
    source = pathlib.Path(averaging.__file__).read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
    assert imported <= {"typing", "numpy", "torch"}
