"""The neighbor kernels receive into buffers of the engine's one pool, which come back by
themselves once the op is done: a loop of ops reuses a few blocks instead of making one per call.
Run on 4 ranks by tests/test_memory_pool.py."""

import collections
import contextlib
import os

import torch

import bluefog.torch as bf
from bluefog.common import topology_util
from bluefog.engine import memory
from bluefog.ops.neighbor import neighbor_average_into_at_sync
from casetools import close, sizes

N = 1 << 18           # float32 elements: 1 MB, well above memory.POOL_BYTES
MB = N * 4
CALLS = 12


class Recording(memory.BufferPool):
    """The pool, counting per size in bytes the tensors asked for and the blocks made."""

    def __init__(self, limit_bytes=memory.LIMIT_BYTES):
        super().__init__(limit_bytes)
        self.asked, self.new = collections.Counter(), collections.Counter()

    def tensor(self, shape, dtype):
        made = self.made
        out = super().tensor(shape, dtype)
        self.asked[out.nbytes] += 1
        self.new[out.nbytes] += self.made - made
        return out


@contextlib.contextmanager
def skipping_negotiation():
    """pair_gossip runs only with the negotiation stage skipped."""
    bf.set_skip_negotiate_stage(True)
    try:
        yield
    finally:
        bf.set_skip_negotiate_stage(False)


@contextlib.contextmanager
def recording(limit_bytes=memory.LIMIT_BYTES):
    saved = memory.pool
    memory.pool = Recording(limit_bytes)
    try:
        yield memory.pool
    finally:
        memory.pool = saved


def _check_reused(pool, nbytes):
    """Buffers of ``nbytes`` were asked for on every call, and a few blocks served them all."""
    assert pool.asked[nbytes] >= CALLS, (nbytes, pool.asked)
    assert pool.new[nbytes] <= pool.per_size, (nbytes, pool.new, pool.asked)
    assert pool.held <= pool.limit


def _uniform_expected():
    ins = bf.in_neighbor_ranks()
    return (bf.rank() + sum(ins)) / (len(ins) + 1), len(ins)


@sizes(4)
def case_neighbor_allreduce_receives_into_reused_blocks():
    expected, count = _uniform_expected()
    x = torch.full((N,), float(bf.rank()))
    with recording() as pool:
        for k in range(CALLS):
            out = bf.neighbor_allreduce(x * (k + 1))
            close(out, torch.full((N,), expected * (k + 1)))
            del out
    _check_reused(pool, count * MB)


@sizes(4)
def case_averaged_at_synchronize_receives_into_reused_blocks():
    expected, count = _uniform_expected()
    with recording() as pool:
        for k in range(CALLS):
            x = torch.full((N,), float(bf.rank() * (k + 1)))
            handle = neighbor_average_into_at_sync(x, self_weight=None, src_weights=None,
                                                   dst_weights=None, enable_topo_check=True,
                                                   name="pool.defer")
            assert bf.synchronize(handle) is x
            close(x, torch.full((N,), expected * (k + 1)))
            del handle
    _check_reused(pool, count * MB)


@sizes(4)
def case_pair_gossip_receives_into_reused_blocks():
    r = bf.rank()
    with recording() as pool, skipping_negotiation():
        for k in range(CALLS):
            out = bf.pair_gossip(torch.full((N,), float(r + k)), r ^ 1)
            close(out, torch.full((N,), (r + (r ^ 1)) / 2 + k))
            del out
    _check_reused(pool, MB)


@sizes(4)
def case_hierarchical_buffers_are_reused():
    os.environ["BLUEFOG_NODES_PER_MACHINE"] = "2"
    try:
        bf.init()
        bf.set_machine_topology(topology_util.ExponentialGraph(bf.machine_size()))
        # machine means 0.5 and 2.5; two machines, each the other's neighbor: 1.5 everywhere
        with recording() as pool:
            for k in range(CALLS):
                out = bf.hierarchical_neighbor_allreduce(torch.full((N,), float(bf.rank() + k)))
                close(out, torch.full((N,), 1.5 + k))
                del out
    finally:
        del os.environ["BLUEFOG_NODES_PER_MACHINE"]
        bf.init()
    # leaders receive their member's tensor and the other machine's sum (1 MB each); members
    # receive both sums from their leader (2 MB)
    _check_reused(pool, MB if bf.rank() % 2 == 0 else 2 * MB)


@sizes(4)
def case_fused_ops_are_right_and_the_pool_stays_in_its_limit():
    expected, _ = _uniform_expected()
    with recording(limit_bytes=8 * MB) as pool:
        for k in range(3):
            parts = [torch.full((N // 4,), float(bf.rank() + j)) for j in range(6)]
            handles = [bf.neighbor_allreduce_nonblocking(part, name=f"pool.fused{j}")
                       for j, part in enumerate(parts)]
            for j, handle in enumerate(handles):
                close(bf.synchronize(handle), torch.full((N // 4,), expected + j))
            assert pool.held <= pool.limit
    assert sum(pool.asked.values()) > 0


@sizes(4)
def case_a_pool_of_zero_is_off_and_ops_still_right():
    expected, _ = _uniform_expected()
    with recording(limit_bytes=0) as pool:
        for k in range(3):
            out = bf.neighbor_allreduce(torch.full((N,), float(bf.rank())))
            close(out, torch.full((N,), expected))
            with skipping_negotiation():
                out = bf.pair_gossip(torch.full((N,), float(bf.rank())), bf.rank() ^ 1)
            close(out, torch.full((N,), (bf.rank() + (bf.rank() ^ 1)) / 2))
    assert pool.made == 0 and pool.held == 0 and not pool.asked
