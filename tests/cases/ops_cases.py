"""Collective and neighbor ops (spec §3) checked against plain-torch references on every rank."""

import math

import numpy as np
import torch

import bluefog.torch as bf
from bluefog.common import topology_util
from casetools import close, expect_error, sizes, timeout

FLOATS = [torch.float16, torch.float32, torch.float64]
ALL_MOVE = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64] + FLOATS
SHAPES = [(5,), (4, 3), (2, 3, 2)]


def _value(rank, dtype, shape):
    return torch.full(shape, rank + 1).to(dtype)


def case_allreduce_average_and_sum_every_dtype():
    n, r = bf.size(), bf.rank()
    for dtype in [torch.int32, torch.int64] + FLOATS:
        for shape in SHAPES:
            x = _value(r, dtype, shape)
            total = sum(range(1, n + 1))
            out = bf.allreduce(x, average=False, name=f"sum {dtype} {shape}")
            assert out.dtype == dtype and out.shape == x.shape
            assert out.min() == out.max() == total, (dtype, out)
            assert torch.equal(x, _value(r, dtype, shape)), "input must stay unchanged"
            if dtype in FLOATS:
                avg = bf.allreduce(x, name=f"avg {dtype} {shape}")
                close(avg, torch.full(shape, total / n, dtype=torch.float64), atol=1e-3)


def case_allreduce_zero_dim_inplace_and_nonblocking():
    n, r = bf.size(), bf.rank()
    loss = torch.tensor(float(r))
    assert bf.allreduce(loss).item() == sum(range(n)) / n
    x = torch.tensor([float(r)] * 3)
    y = bf.allreduce_(x, average=False)
    assert y is x and x.tolist() == [float(sum(range(n)))] * 3
    h = bf.allreduce_nonblocking_(x, average=True, name="nb_inplace")
    assert bf.synchronize(h) is x
    handles = [bf.allreduce_nonblocking(torch.tensor([float(r + k)]), name=f"nb{k}") for k in range(8)]
    for k, h in enumerate(handles):
        assert bf.synchronize(h).item() == sum(range(n)) / n + k


def case_ops_read_the_data_of_tensors_that_require_grad():
    """The ops are not autograd-aware (spec §3.2): given a tensor that requires grad they read and
    write its ``.data``, and return plain tensors; in place, the tensor itself is returned."""
    n, r = bf.size(), bf.rank()
    x = torch.full((4,), float(r + 1), requires_grad=True)
    total = n * (n + 1) / 2
    for name in (None, "grad.ar"):      # (a named one runs as a lone round)
        out = bf.allreduce(x, average=False, name=name)
        assert not out.requires_grad and out.tolist() == [total] * 4
    rows = bf.allgather(x, name="grad.ag")
    assert rows.shape == (4 * n,) and not rows.requires_grad
    assert bf.broadcast(x, 0, name="grad.bc").tolist() == [1.0] * 4
    nar = bf.neighbor_allreduce(x, name="grad.nar")
    ins = bf.in_neighbor_ranks()
    close(nar, torch.full((4,), (r + 1 + sum(q + 1 for q in ins)) / (len(ins) + 1)))
    nag = bf.neighbor_allgather(x.reshape(1, 4), name="grad.nag")
    assert nag.shape == (len(ins), 4)
    w = torch.full((3,), float(r), requires_grad=True)
    assert bf.allreduce_(w, average=False, name="grad.inplace") is w
    assert w.requires_grad and w.detach().tolist() == [float(sum(range(n)))] * 3
    assert bf.allreduce(torch.ones(2), average=False, name="grad.after").tolist() == [n, n]


@sizes(2, 4)
def case_a_round_that_fails_fails_its_ops_and_the_engine_goes_on():
    """An error while a round is prepared (here: on every rank, before anything is sent) reaches
    the waiting caller as that error; the engine keeps working."""
    from bluefog.engine import kernels

    def broken(comm, tensor):
        raise RuntimeError("carry failed on purpose")

    saved, kernels.carry_to_all = kernels.carry_to_all, broken
    try:
        handle = bf.allreduce_nonblocking(torch.ones(3), name="round.fails")
        expect_error(RuntimeError, "on purpose", bf.synchronize, handle)
    finally:
        kernels.carry_to_all = saved
    assert bf.allreduce(torch.ones(3), average=False, name="round.after").tolist() == [bf.size()] * 3


def case_allreduce_rejects_bad_input():
    expect_error(AssertionError, "only float or double", bf.allreduce, torch.ones(3, dtype=torch.int32))
    expect_error(ValueError, "not supported", bf.allreduce, torch.ones(3, dtype=torch.bool))
    expect_error(ValueError, "contiguous", bf.allreduce, torch.ones(4, 4).t())
    expect_error(TypeError, "tensor", bf.allreduce, [1.0, 2.0])
    for op in (bf.allreduce, bf.neighbor_allreduce):    # a prepared (lone) round checks the name too
        x = torch.ones(3)
        op(x, name="checked")
        op(x)
        expect_error(TypeError, "Argument name must be a str", op, x, name=5)
        expect_error(TypeError, "Argument name must be a str", op, x, name=b"checked")
        close(bf.allreduce(x, average=False), torch.full((3,), float(bf.size())))


def case_broadcast_every_root_and_dtype():
    n, r = bf.size(), bf.rank()
    for root in range(n):
        for dtype in ALL_MOVE:
            x = _value(r, dtype, (3, 2))
            out = bf.broadcast(x, root_rank=root, name=f"b{root}{dtype}")
            assert torch.equal(out, _value(root, dtype, (3, 2))) and out.dtype == dtype
            y = _value(r, dtype, (3,))
            assert bf.broadcast_(y, root, name=f"bi{root}{dtype}") is y
            assert torch.equal(y, _value(root, dtype, (3,)))
    assert bf.broadcast(torch.tensor(float(r)), root_rank=0).item() == 0.0
    expect_error(ValueError, "root_rank", bf.broadcast, torch.ones(2), root_rank=n)


def case_allgather_variable_first_dims():
    n, r = bf.size(), bf.rank()
    for dtype in ALL_MOVE:
        x = torch.full((r + 1, 2), r).to(dtype)
        out = bf.allgather(x, name=f"ag{dtype}")
        expected = torch.cat([torch.full((k + 1, 2), k).to(dtype) for k in range(n)])
        assert out.dtype == dtype and torch.equal(out, expected)
    sizes_ = [17, 32, 81, 12]
    x = torch.full((sizes_[r % 4], 3), float(r))
    out = bf.allgather(x)
    assert out.shape == (sum(sizes_[k % 4] for k in range(n)), 3)
    empty = bf.allgather(torch.zeros((0,), dtype=torch.int32))
    assert empty.shape == (0,) and empty.dtype == torch.int32
    some = bf.allgather(torch.full((r % 2,), r, dtype=torch.int64))
    assert some.tolist() == [k for k in range(n) if k % 2]
    expect_error(ValueError, "rank-zero", bf.allgather, torch.tensor(1.0))


def case_neighbor_allgather_static_and_dynamic():
    n, r = bf.size(), bf.rank()
    for dtype in ALL_MOVE:
        got = bf.neighbor_allgather(torch.tensor([r]).to(dtype), name=f"nag{dtype}")
        assert got.to(torch.int64).tolist() == bf.in_neighbor_ranks()
    got = bf.neighbor_allgather(torch.full((r + 1, 2), float(r)))
    expected = torch.cat([torch.full((k + 1, 2), float(k)) for k in bf.in_neighbor_ranks()]
                         or [torch.zeros((0, 2))])
    assert torch.equal(got, expected)
    if n > 1:
        rng = np.random.RandomState(7)
        perms = [rng.permutation([k for k in range(n) if k != me]) for me in range(n)]
        dst = np.array([k for k in range(n) if k != r])
        got = bf.neighbor_allgather(torch.tensor([float(r)]), src_ranks=perms[r], dst_ranks=dst)
        assert got.tolist() == [float(k) for k in perms[r]]
        expect_error(ValueError, "do not match", bf.neighbor_allgather, torch.tensor([1.0]),
                     src_ranks=[(r - 1) % n], dst_ranks=[(r + 2) % n] if n > 2 else [])
    expect_error(ValueError, "at the same time", bf.neighbor_allgather, torch.ones(1), src_ranks=[])


def _neighbor_reference(x_of, self_weight, weights):
    acc = sum(w * x_of(j) for j, w in sorted(weights.items())) if weights else 0.0
    return acc + self_weight * x_of(bf.rank())


def case_neighbor_allreduce_static_default_and_sum():
    r = bf.rank()
    ins = bf.in_neighbor_ranks()
    for dtype in FLOATS:
        for shape in SHAPES:
            x = torch.full(shape, float(r)).to(dtype)
            avg = bf.neighbor_allreduce(x, name=f"avg{dtype}{shape}")
            expected = (r + sum(ins)) / (len(ins) + 1)
            atol = 1e-3 * (len(ins) + 1) if dtype == torch.float16 else 1e-5
            close(avg, torch.full(shape, expected, dtype=torch.float64), atol=atol)
            total = bf.neighbor_allreduce(x, self_weight=1.0, src_weights={j: 1.0 for j in ins})
            close(total, torch.full(shape, float(r + sum(ins)), dtype=torch.float64), atol=atol)


def case_neighbor_allreduce_float64_precision_is_exact():
    ins = bf.in_neighbor_ranks()
    tiny = torch.full((4,), 2.0 ** -256, dtype=torch.float64)
    total = bf.neighbor_allreduce(tiny, self_weight=1.0, src_weights={j: 1.0 for j in ins})
    assert torch.equal(total, torch.full((4,), (len(ins) + 1) * 2.0 ** -256, dtype=torch.float64))
    assert torch.equal(bf.neighbor_allreduce(tiny), tiny)


def case_neighbor_allreduce_weighted_topologies():
    n, r = bf.size(), bf.rank()
    graphs = [topology_util.StarGraph(n), topology_util.RingGraph(n),
              topology_util.MeshGrid2DGraph(n), topology_util.RingGraph(n, connect_style=1)]
    from bluefog import context
    stats = context.current().engine.stats
    for graph in graphs:
        assert bf.set_topology(graph, is_weighted=True)
        own, weights = bf.GetRecvWeights(graph, r)
        x = torch.tensor([float(r), 2.0 * r], dtype=torch.float64)
        lone = stats["lone"]
        for _ in range(2):     # the first round is settled in full, the second is a lone round
            out = bf.neighbor_allreduce(x)
            close(out, _neighbor_reference(
                lambda k: torch.tensor([k, 2.0 * k], dtype=torch.float64), own, weights))
        # (alone, a rank has nothing to carry: its op takes the engine's kernel)
        assert n == 1 or stats["lone"] > lone, "a weighted topology's blocking op ran no lone round"
    bf.set_topology(topology_util.StarGraph(n), is_weighted=True)
    out = bf.neighbor_allreduce(torch.tensor([float(r)]))
    expected = sum(range(n)) / n if r == 0 else (1 - 1 / n) * r
    assert abs(out.item() - expected) < 1e-5, (out, expected)


def case_neighbor_allreduce_partial_src_weights_apply_by_rank():
    r = bf.rank()
    ins = bf.in_neighbor_ranks()
    if not ins:
        return
    keep = {ins[-1]: 0.25}
    out = bf.neighbor_allreduce(torch.tensor([float(r)], dtype=torch.float64), self_weight=0.75,
                                src_weights=keep)
    assert abs(out.item() - (0.75 * r + 0.25 * ins[-1])) < 1e-12, out
    uniform = bf.neighbor_allreduce(torch.tensor([float(r)]), self_weight=0.5,
                                    src_weights={ins[0]: 0.5})
    assert abs(uniform.item() - (r + ins[0]) / 2) < 1e-6, uniform


@sizes(2, 4)
def case_neighbor_allreduce_dynamic_move_and_dst_weights():
    n, r = bf.size(), bf.rank()
    for dtype in FLOATS:
        x = torch.full((3, 2), float(r)).to(dtype)
        moved = bf.neighbor_allreduce(x, self_weight=0.0, src_weights={(r - 1) % n: 1.0},
                                      dst_weights=[(r + 1) % n], name=f"move{dtype}")
        close(moved, torch.full((3, 2), float((r - 1) % n), dtype=torch.float64))
        half = bf.neighbor_allreduce(x, self_weight=0.5, src_weights={(r - 1) % n: 1.0},
                                     dst_weights={(r + 1) % n: 0.5}, name=f"dstw{dtype}")
        close(half, torch.full((3, 2), 0.5 * (r + (r - 1) % n), dtype=torch.float64), atol=1e-2)


@sizes(2, 4)
def case_neighbor_allreduce_empty_send_or_receive():
    r = bf.rank()
    x = torch.tensor([float(r), 1.0])
    if r % 2 == 0:
        out = bf.neighbor_allreduce(x, self_weight=0.5, src_weights={}, dst_weights=[r + 1])
        close(out, x * 0.5)
        assert x.tolist() == [float(r), 1.0], "zero receivers must not touch the input"
    else:
        out = bf.neighbor_allreduce(x, self_weight=1.0, src_weights={r - 1: 1.0}, dst_weights=[])
        close(out, torch.tensor([2.0 * r - 1, 2.0]))


@sizes(2, 4)
def case_neighbor_allreduce_topology_check_fails_everywhere_and_recovers():
    n, r = bf.size(), bf.rank()
    for k in range(9):
        dtype = FLOATS[k % 3]
        expect_error(ValueError, "do not match", bf.neighbor_allreduce,
                     torch.ones((2,) * (1 + k // 3)).to(dtype), self_weight=0.0,
                     src_weights={(r - 1) % n: 1.0}, dst_weights=[(r + 2) % n] if n > 2 else [],
                     name="same_name")
    out = bf.neighbor_allreduce(torch.tensor([float(r)]), name="same_name")
    ins = bf.in_neighbor_ranks()
    assert abs(out.item() - (r + sum(ins)) / (len(ins) + 1)) < 1e-5


def case_neighbor_allreduce_argument_errors():
    r = bf.rank()
    x = torch.ones(2)
    ins = bf.in_neighbor_ranks()
    expect_error(ValueError, "same time", bf.neighbor_allreduce, x, self_weight=0.5)
    expect_error(ValueError, "same time", bf.neighbor_allreduce, x, src_weights={})
    expect_error(ValueError, "dynamic topology", bf.neighbor_allreduce, x, dst_weights=[])
    expect_error(ValueError, "float", bf.neighbor_allreduce, x, self_weight=1, src_weights={})
    expect_error(ValueError, "float", bf.neighbor_allreduce, x, self_weight=np.float32(0.5),
                 src_weights={})
    expect_error(ValueError, "must be a dict", bf.neighbor_allreduce, x, self_weight=0.5,
                 src_weights=[1])
    outsider = [k for k in range(bf.size()) if k not in ins and k != r]
    if outsider:
        expect_error(ValueError, "in-neighbors", bf.neighbor_allreduce, x, self_weight=0.5,
                     src_weights={outsider[0]: 0.5})
    if bf.size() > 1:
        other = (r + 1) % bf.size()
        expect_error(ValueError, "unique", bf.neighbor_allreduce, x, self_weight=0.5, src_weights={},
                     dst_weights=[other, other])
    expect_error(TypeError, "deprecated", bf.neighbor_allreduce, x, neighbor_weights={})
    expect_error(ValueError, "not supported", bf.neighbor_allreduce, torch.ones(2, dtype=torch.int32))


def case_neighbor_allreduce_fifty_in_flight():
    r = bf.rank()
    ins = bf.in_neighbor_ranks()
    n = bf.size()
    handles = []
    for k in range(50):
        x = torch.full((7,), float(r + k), dtype=torch.float64)
        if k % 2 and n > 1:
            handles.append(bf.neighbor_allreduce_nonblocking(
                x, self_weight=0.5, src_weights={(r - 1) % n: 0.5}, dst_weights={(r + 1) % n: 1.0},
                name=f"many{k}"))
        else:
            handles.append(bf.neighbor_allreduce_nonblocking(x, name=f"many{k}"))
    for k, h in enumerate(handles):
        out = bf.synchronize(h)
        if k % 2 and n > 1:
            expected = 0.5 * (r + k) + 0.5 * ((r - 1) % n + k)
        else:
            expected = (r + k + sum(j + k for j in ins)) / (len(ins) + 1)
        assert abs(out[0].item() - expected) < 1e-9, (k, out[0].item(), expected)


@sizes(2, 4)
def case_ops_matched_by_name_in_any_order():
    r = bf.rank()
    names = ["first", "second", "third"]
    order = names if r % 2 == 0 else list(reversed(names))
    handles = {nm: bf.allreduce_nonblocking(torch.tensor([float(i)]), name=nm)
               for i, nm in ((names.index(nm), nm) for nm in order)}
    handles["nb"] = bf.neighbor_allreduce_nonblocking(torch.tensor([1.0]), name="nb")
    for i, nm in enumerate(names):
        assert bf.synchronize(handles[nm]).item() == float(i)
    assert bf.synchronize(handles["nb"]).item() == 1.0


@sizes(2, 4)
def case_mismatched_shape_dtype_and_op_raise_everywhere():
    r = bf.rank()
    expect_error(ValueError, "Mismatched", bf.allreduce, torch.ones(r + 1), name="shape")
    dtype = torch.float32 if r == 0 else torch.float64
    expect_error(ValueError, "Mismatched", bf.allreduce, torch.ones(2, dtype=dtype), name="dtype")
    expect_error(ValueError, "Mismatched", bf.broadcast, torch.ones(2), root_rank=r % 2, name="root")
    if r == 0:
        expect_error(ValueError, "Mismatched", bf.allreduce, torch.ones(2), name="kind")
    else:
        expect_error(ValueError, "Mismatched", bf.broadcast, torch.ones(2), 0, name="kind")
    assert bf.allreduce(torch.ones(2), name="shape").tolist() == [1.0, 1.0]


@sizes(2, 4)
def case_handles_and_duplicate_names():
    import time
    if bf.rank() != 0:
        time.sleep(0.3)   # rank 0's first "dup" cannot finish before this rank submits it
    h = bf.allreduce_nonblocking(torch.ones(2), name="dup")
    if bf.rank() == 0:
        expect_error(ValueError, "same name", bf.allreduce_nonblocking, torch.ones(2), name="dup")
    assert isinstance(bf.poll(h), bool)
    bf.synchronize(h)
    expect_error(ValueError, "Cannot find handle", bf.synchronize, h)
    expect_error(ValueError, "cleared", bf.poll, h)
    expect_error(ValueError, "Cannot find handle", bf.synchronize, 12345)
    assert int(bf.allreduce_nonblocking(torch.ones(1), name="dup")) > 0
    bf.barrier()


@sizes(2, 4)
def case_skip_negotiation_pair_gossip_and_barrier():
    r, n = bf.rank(), bf.size()
    expect_error(ValueError, "negotiate", bf.pair_gossip if hasattr(bf, "pair_gossip") else
                 __import__("bluefog.ops.neighbor", fromlist=["x"]).pair_gossip, torch.ones(1), r ^ 1)
    from bluefog.ops.neighbor import pair_gossip
    bf.set_skip_negotiate_stage(True)
    try:
        assert bf.get_skip_negotiate_stage()
        x = torch.tensor([float(r)])
        assert pair_gossip(x, r ^ 1).item() == (r + (r ^ 1)) / 2
        out = pair_gossip(x, r ^ 1, self_weight=0.25, pair_weight=0.75)
        assert abs(out.item() - (0.25 * r + 0.75 * (r ^ 1))) < 1e-6
        ins = bf.in_neighbor_ranks()
        assert abs(bf.neighbor_allreduce(x).item() - (r + sum(ins)) / (len(ins) + 1)) < 1e-5
        moved = bf.neighbor_allreduce(x, self_weight=0.0, src_weights={(r - 1) % n: 1.0},
                                      dst_weights=[(r + 1) % n])
        assert moved.item() == float((r - 1) % n)
        expect_error(ValueError, "do not match", bf.neighbor_allreduce, x, self_weight=0.0,
                     src_weights={(r - 1) % n: 1.0}, dst_weights=[(r + 2) % n] if n > 2 else [])
        assert bf.allgather(torch.full((r + 1,), r)).tolist() == sum(([k] * (k + 1) for k in range(n)), [])
        bf.barrier()
    finally:
        bf.set_skip_negotiate_stage(False)


@sizes(2, 4)
@timeout(120)
def case_dynamic_one_peer_consensus_reaches_average():
    n, r = bf.size(), bf.rank()
    bf.set_topology(topology_util.ExponentialTwoGraph(n))
    schedule = topology_util.GetDynamicOnePeerSendRecvRanks(bf.load_topology(), r)
    x = torch.tensor([float(r)], dtype=torch.float64)
    for _ in range(max(1, int(math.log2(n))) * 3):
        send, recv = next(schedule)
        w = 1.0 / (len(recv) + 1)
        x = bf.neighbor_allreduce(x, self_weight=w, src_weights={k: w for k in recv},
                                  dst_weights=send, enable_topo_check=False)
    assert abs(x.item() - (n - 1) / 2) < 1e-12, x


def _fusion_inputs(r):
    torch.manual_seed(100 + r)
    shapes = [(), (1,), (7,), (3, 5), (2, 2, 2), (64,)]
    return [torch.randn(shapes[k % len(shapes)]).to(FLOATS[k % 3 if k % 5 else 1])
            for k in range(120)]


def case_fusion_changes_no_result():
    from bluefog import context
    r, n = bf.rank(), bf.size()
    engine = context.current().engine
    inputs = _fusion_inputs(r)
    before = engine.stats["fused_requests"]
    ar = [bf.allreduce_nonblocking(t, name=f"far{k}") for k, t in enumerate(inputs)]
    nar = [bf.neighbor_allreduce_nonblocking(t, name=f"fnar{k}") for k, t in enumerate(inputs)]
    dyn = [bf.neighbor_allreduce_nonblocking(t, self_weight=0.25, src_weights={(r - 1) % n: 0.75},
                                             dst_weights={(r + 1) % n: 2.0}, name=f"fdyn{k}")
           for k, t in enumerate(inputs)] if n > 1 else []
    fused = [bf.synchronize(h) for h in ar + nar + dyn]
    assert engine.stats["fused_requests"] > before, "nothing was fused"
    alone = [bf.allreduce(t, name=f"far{k}") for k, t in enumerate(inputs)]
    alone += [bf.neighbor_allreduce(t, name=f"fnar{k}") for k, t in enumerate(inputs)]
    if n > 1:
        alone += [bf.neighbor_allreduce(t, self_weight=0.25, src_weights={(r - 1) % n: 0.75},
                                        dst_weights={(r + 1) % n: 2.0}, name=f"fdyn{k}")
                  for k, t in enumerate(inputs)]
    for k, (a, b) in enumerate(zip(fused, alone)):
        assert a.dtype == b.dtype and a.shape == b.shape, k
        if k < len(inputs):   # a small allreduce alone is summed from the round (in rank order)
            tol = 2e-3 if a.dtype == torch.float16 else 1e-6
            assert torch.allclose(a.double(), b.double(), rtol=tol, atol=tol), (k, a, b)
        else:
            assert torch.equal(a, b), (k, a, b)


@sizes(2, 4)
def case_a_rank_waiting_for_late_peers_warns_naming_the_op():
    import logging
    import time
    from bluefog import context
    engine = context.current().engine
    engine.stall_warning_seconds = 0.5
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("bluefog").addHandler(handler)
    try:
        if bf.rank() != 0:
            time.sleep(1.5)
        assert bf.allreduce(torch.ones(1), name="late").item() == 1.0
    finally:
        logging.getLogger("bluefog").removeHandler(handler)
        engine.stall_warning_seconds = 60.0
    if bf.rank() == 0:
        messages = [r.getMessage() for r in records]
        assert any("Stalled ops" in m and "allreduce.late" in m for m in messages), messages


@sizes(2, 4)
def case_small_neighbor_allreduce_data_rides_with_the_round():
    """A lone small neighbor_allreduce sends its data with the negotiation record (one hop instead
    of two): same bits as the plain exchange (skip-negotiate mode), for static, weighted and
    dynamic weights; larger tensors and bursts of several ops take the usual exchange."""
    from bluefog import context
    from bluefog.engine.mailbox import CARRY_MAX
    r, n = bf.rank(), bf.size()
    stats = context.current().engine.stats
    ins = bf.in_neighbor_ranks()
    variants = [{}, dict(self_weight=0.4, src_weights={j: 0.6 / len(ins) for j in ins}),
                dict(self_weight=0.5, src_weights={(r - 1) % n: 0.5}, dst_weights={(r + 1) % n: 2.0}),
                dict(self_weight=0.5, src_weights={(r - 1) % n: 0.5}, dst_weights=[(r + 1) % n],
                     enable_topo_check=False)]
    for dtype in FLOATS:
        x = (torch.arange(30.0).reshape(5, 6) * (r + 1) / 7).to(dtype)
        for k, kwargs in enumerate(variants):
            before = stats["carried"]
            carried = bf.neighbor_allreduce(x, name=f"ride{k}", **kwargs)
            assert stats["carried"] == before + 1, "the data did not ride with the round"
            bf.set_skip_negotiate_stage(True)
            try:
                plain = bf.neighbor_allreduce(x, name=f"plain{k}", **kwargs)
            finally:
                bf.set_skip_negotiate_stage(False)
            assert carried.dtype == dtype and torch.equal(carried, plain), (dtype, k, carried, plain)
    before = stats["carried"]
    big = torch.full((CARRY_MAX // 4 + 1,), float(r))
    close(bf.neighbor_allreduce(big, name="big"),
          torch.full_like(big, (r + sum(ins)) / (len(ins) + 1)))
    from bluefog.ops.common import submission_batch
    with submission_batch():       # negotiated together: several heads, fused, not carried
        handles = [bf.neighbor_allreduce_nonblocking(x.float() + k, name=f"burst{k}")
                   for k in range(3)]
    [bf.synchronize(h) for h in handles]
    assert stats["carried"] == before, "a large op or a burst was carried"


@sizes(2, 4)
def case_small_allreduce_is_summed_from_the_round():
    """A lone small allreduce rides with the negotiation records and is summed on every rank in
    rank order: right for every dtype, average and sum, in and out of place, and the same bits on
    every rank; a burst is not carried (the ops run through MPI)."""
    from bluefog import context
    r, n = bf.rank(), bf.size()
    stats = context.current().engine.stats
    for dtype in [torch.int32, torch.int64] + list(FLOATS):
        x = (torch.arange(12).reshape(3, 4) * (r + 1) + r).to(dtype)
        expected = sum((torch.arange(12).reshape(3, 4) * (q + 1) + q) for q in range(n)).double()
        for average in ((False, True) if dtype in FLOATS else (False,)):
            want = expected / n if average else expected
            before = stats["carried"]
            out = bf.allreduce(x, average=average, name=f"carried.{dtype}.{average}")
            assert stats["carried"] == before + 1, "the allreduce did not ride with the round"
            assert out.dtype == dtype and out.shape == x.shape
            close(out.double(), want, atol=5e-2 if dtype == torch.float16 else 1e-9)
            inplace = x.clone()
            assert bf.allreduce_(inplace, average=average, name="carried.inplace") is not None
            assert torch.equal(inplace, out), (inplace, out)
            everyone = bf.allgather(out.reshape(1, -1), name="carried.check")
            assert all(torch.equal(row, everyone[0]) for row in everyone), "ranks differ"
    before = stats["carried"]
    from bluefog.ops.common import submission_batch
    with submission_batch():
        handles = [bf.allreduce_nonblocking(torch.ones(3) * k, name=f"arburst{k}") for k in range(3)]
    outs = [bf.synchronize(h) for h in handles]
    assert stats["carried"] == before, "a burst was carried"
    for k, out in enumerate(outs):
        close(out, torch.ones(3) * k)


@sizes(2, 4)
def case_blocking_allreduce_alone_meets_other_work_on_other_ranks():
    """A blocking allreduce with nothing else in flight runs as a lone round on the caller's thread
    (engine/lone.py).  Its round is an ordinary one: when another rank has other work pending the
    round is read in full (handed over), and when another rank calls the op nonblocking both
    paths agree; every op ends right, with the same bits on every rank."""
    from bluefog import context
    r, n = bf.rank(), bf.size()
    stats = context.current().engine.stats
    x = torch.arange(5, dtype=torch.float32) * (r + 1) / 7
    want = torch.arange(5, dtype=torch.float64) * sum(range(1, n + 1)) / 7 / n
    bf.barrier()
    lone, handed = stats["lone"], stats["handed_over"]
    if r == 0:            # rank 0 has another op pending: its record is no lone one
        first = bf.allreduce_nonblocking(x * 2, name="lone.first")
        main = bf.allreduce(x, name="lone.main")
        second = bf.synchronize(first)
    else:                 # the others try the lone round, see rank 0's record, hand it over
        main = bf.allreduce(x, name="lone.main")
        second = bf.allreduce(x * 2, name="lone.first")
    close(main.double(), want, atol=1e-6)
    close(second.double(), 2 * want, atol=1e-6)
    if r != 0:
        assert stats["handed_over"] >= handed + 1, "the lone round did not see rank 0's other op"
    for k in range(3):    # odd ranks wait on a nonblocking call: its round looks the same
        if r % 2:
            out = bf.synchronize(bf.allreduce_nonblocking_(x.clone(), name="lone.mixed"))
        else:
            out = bf.allreduce_(x.clone(), name="lone.mixed")
        close(out.double(), want, atol=1e-6)
        everyone = bf.allgather(out.reshape(1, -1), name="lone.check")
        assert all(torch.equal(row, everyone[0]) for row in everyone), "ranks differ"
    before = stats["lone"]
    for shape, dtype in [((5,), torch.float32), ((2, 3), torch.float32), ((2, 3), torch.int64),
                         ((), torch.float64)]:   # one name, a new plan whenever the tensor changes
        t = torch.full(shape, r + 1, dtype=dtype)
        for _ in range(2):   # the first round of a new shape is settled and remembered; then lone
            out = bf.allreduce(t, average=False, name="lone.refit")
            assert out.dtype == dtype and out.shape == t.shape
            assert torch.equal(out, torch.full(shape, n * (n + 1) // 2, dtype=dtype)), out
    assert stats["lone"] >= before + 4 and stats["lone"] > lone, "blocking allreduce ran no lone round"
    from bluefog.engine.mailbox import MAX_PERSISTENT_SENDS
    for count in range(1, MAX_PERSISTENT_SENDS + 9):   # more message lengths than are kept
        out = bf.allreduce(torch.full((count,), r + 1.0), average=False, name=f"lone.len{count % 3}")
        assert out.tolist() == [n * (n + 1) / 2] * count, (count, out)


@sizes(2, 4)
def case_blocking_neighbor_allreduce_alone_meets_other_work_on_other_ranks():
    """The lone round of a blocking static neighbor_allreduce: the same bits as the plain exchange
    (skip-negotiate mode) whether ranks call it blocking or nonblocking, handed over to the engine
    when a rank has other work pending, and a new plan after ``set_topology``."""
    from bluefog import context
    r, n = bf.rank(), bf.size()
    stats = context.current().engine.stats
    for dtype in (torch.float16, torch.float32, torch.float64):
        x = (torch.arange(12.0).reshape(3, 4) * (r + 1) / 7).to(dtype)
        bf.set_skip_negotiate_stage(True)
        try:
            plain = bf.neighbor_allreduce(x, name="nlone.plain")
        finally:
            bf.set_skip_negotiate_stage(False)
        before = stats["lone"]
        for k in range(3):
            if r % 2:
                out = bf.synchronize(bf.neighbor_allreduce_nonblocking(x, name="nlone.mixed"))
            else:
                out = bf.neighbor_allreduce(x, name="nlone.mixed")
            assert out.dtype == dtype and torch.equal(out, plain), (k, out, plain)
        # (the first round of this table may be settled in full, and its verdict remembered)
        assert r % 2 or stats["lone"] >= before + 2, "blocking neighbor_allreduce ran no lone round"
        handed = stats["handed_over"]
        if r == 0:
            first = bf.neighbor_allreduce_nonblocking(x * 2, name="nlone.first")
            main = bf.neighbor_allreduce(x, name="nlone.main")
            second = bf.synchronize(first)
        else:
            main = bf.neighbor_allreduce(x, name="nlone.main")
            second = bf.neighbor_allreduce(x * 2, name="nlone.first")
        assert torch.equal(main, plain), (main, plain)
        close(second.double(), 2 * plain.double(), atol=1e-5)
        if r != 0:
            assert stats["handed_over"] >= handed + 1, "the lone round did not see rank 0's op"
    bf.set_topology(topology_util.RingGraph(n))
    try:
        x = torch.full((4,), float(r))
        ring = bf.neighbor_allreduce(x, name="nlone.topology")
        ins = bf.in_neighbor_ranks()
        close(ring, torch.full((4,), (r + sum(ins)) / (len(ins) + 1)))
    finally:
        bf.set_topology(topology_util.ExponentialGraph(n))


@sizes(2, 4)
def case_blocking_ops_run_their_round_on_the_calling_thread():
    """A blocking op finding the engine idle runs its round and kernel on the calling thread (a
    dynamic neighbor_allreduce, a broadcast), or a lone round (a static neighbor_allreduce, an
    allreduce: without a name too); a loop of them under new names reuses the decision of the
    first round.  Results are those of plain exchanges, whether the other ranks call the op
    blocking or nonblocking, and when this rank has other work in flight the op is queued."""
    from bluefog import context
    engine = context.current().engine
    stats = engine.stats
    r, n = bf.rank(), bf.size()
    x = torch.arange(6, dtype=torch.float64) * (r + 1) / 7
    bf.set_skip_negotiate_stage(True)
    try:
        plain = bf.neighbor_allreduce(x)
        dynamic = dict(self_weight=0.5, src_weights={(r - 1) % n: 0.5}, dst_weights=[(r + 1) % n])
        plain_dynamic = bf.neighbor_allreduce(x, **dynamic)
    finally:
        bf.set_skip_negotiate_stage(False)
    total = torch.arange(6, dtype=torch.float64) * sum(range(1, n + 1)) / 7
    bf.barrier()
    here, decided = stats["here"], len(engine.mailbox.decided)
    lone, handed = stats["lone"], stats["handed_over"]
    for k in range(4):
        if r % 2 and k % 2:
            outs = [bf.synchronize(bf.neighbor_allreduce_nonblocking(x)),
                    bf.synchronize(bf.neighbor_allreduce_nonblocking(x, **dynamic)),
                    bf.synchronize(bf.allreduce_nonblocking(x, average=False)),
                    bf.synchronize(bf.broadcast_nonblocking(x, 1))]
        else:
            outs = [bf.neighbor_allreduce(x), bf.neighbor_allreduce(x, **dynamic),
                    bf.allreduce(x, average=False), bf.broadcast(x, 1)]
        assert torch.equal(outs[0], plain) and torch.equal(outs[1], plain_dynamic), k
        close(outs[2], total)
        assert torch.equal(outs[3], torch.arange(6, dtype=torch.float64) * 2 / 7)
    blocking_calls = 8 if r % 2 == 0 else 4          # of each kind
    assert stats["here"] == here + blocking_calls, (stats["here"], here)
    # (the first round of each lone kind may be settled in full, its verdict then remembered)
    assert stats["handed_over"] - handed <= 2, (stats, handed)
    assert stats["lone"] - lone >= blocking_calls - 2, "nameless blocking ops ran no lone round"
    # one remembered verdict per kind of round (not per call), made by the first loop
    assert len(engine.mailbox.decided) <= decided + 4, (len(engine.mailbox.decided), decided)
    bf.barrier()
    here = stats["here"]
    if r == 0:                    # another op in flight here: the blocking op is queued
        first = bf.allreduce_nonblocking(x, name="here.first")
        second = bf.allreduce(x, name="here.second")
        bf.synchronize(first)
    else:
        bf.allreduce(x, name="here.first")
        second = bf.allreduce(x, name="here.second")
    close(second, total / n)
    assert r != 0 or stats["here"] == here, "a blocking op ran its round while another was in flight"


@sizes(2, 4)
def case_rounds_by_allgather_above_the_point_to_point_limit():
    """Worlds above ``P2P_ROUND_LIMIT`` ranks negotiate with one ``Iallgather`` per round (and carry
    no data); forced here by giving the idle engine, on every rank, the mailbox made under a
    lower limit."""
    from bluefog import context
    from bluefog.engine import negotiation
    r, n = bf.rank(), bf.size()
    engine = context.current().engine
    stats = engine.stats
    bf.barrier()
    saved, negotiation.P2P_ROUND_LIMIT = negotiation.P2P_ROUND_LIMIT, 1
    box, engine.mailbox = engine.mailbox, negotiation.mailbox_for(n, r)
    try:
        assert not engine.mailbox.point_to_point
        carried = stats["carried"]
        x = torch.full((6,), float(r))
        close(bf.neighbor_allreduce(x, name="ag_nar"),
              torch.full((6,), (r + sum(bf.in_neighbor_ranks())) / (len(bf.in_neighbor_ranks()) + 1)))
        assert stats["carried"] == carried, "no data may ride with an Iallgather round"
        assert bf.allreduce(x, average=False, name="ag_ar").max() == n * (n - 1) / 2
        rows = bf.allgather(torch.full((r + 1, 2), r), name="ag_ag")
        assert rows.shape == (n * (n + 1) // 2, 2)
        names = ["ag_a", "ag_b"] if r % 2 == 0 else ["ag_b", "ag_a"]   # slow path: other orders
        handles = {k: bf.allreduce_nonblocking(x, name=k) for k in names}
        assert all(bf.synchronize(h).max() == (n - 1) / 2 for h in handles.values())
        bf.barrier()
    finally:
        negotiation.P2P_ROUND_LIMIT = saved
        engine.mailbox.free()
        engine.mailbox = box
