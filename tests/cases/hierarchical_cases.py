"""hierarchical_neighbor_allreduce (spec §3.8) with fake machines: run with BLUEFOG_NODES_PER_MACHINE=2."""

import torch

import bluefog.torch as bf
from bluefog.common import topology_util
from casetools import close, expect_error, sizes


def _machine_value(m):
    return float(m)


def _setup():
    assert bf.local_size() == 2, "run with BLUEFOG_NODES_PER_MACHINE=2"
    bf.set_machine_topology(topology_util.ExponentialGraph(bf.machine_size()))
    r = bf.rank()
    # rank values average to the machine id on each machine: m - 0.5 and m + 0.5
    return torch.tensor([_machine_value(r // 2) + (0.5 if r % 2 else -0.5)], dtype=torch.float64)


@sizes(4)
def case_static_default_averages_machine_means():
    x = _setup()
    m = bf.machine_rank()
    ins = bf.in_neighbor_machine_ranks()
    for dtype in (torch.float32, torch.float64):
        out = bf.hierarchical_neighbor_allreduce(x.to(dtype), name=f"h{dtype}")
        expected = (m + sum(ins)) / (len(ins) + 1)
        close(out, torch.tensor([expected]), atol=1e-6)
    bf.set_machine_topology(topology_util.ExponentialGraph(bf.machine_size()), is_weighted=True)
    own, weights = bf.GetRecvWeights(bf.load_machine_topology(), m)
    out = bf.hierarchical_neighbor_allreduce(x)
    close(out, torch.tensor([own * m + sum(w * j for j, w in weights.items())]), atol=1e-6)


@sizes(4)
def case_dynamic_move_gives_the_next_machines_mean():
    x = _setup()
    m, M = bf.machine_rank(), bf.machine_size()
    out = bf.hierarchical_neighbor_allreduce(x, self_weight=0.0, src_machine_weights={(m + 1) % M: 1.0},
                                             dst_machine_weights=[(m - 1) % M])
    close(out, torch.tensor([float((m + 1) % M)]), atol=1e-6)
    out = bf.hierarchical_neighbor_allreduce(x, self_weight=0.0, src_machine_weights={(m + 1) % M: 0.5},
                                             dst_machine_weights={(m - 1) % M: 2.0})
    close(out, torch.tensor([float((m + 1) % M)]), atol=1e-6)
    handles = [bf.hierarchical_neighbor_allreduce_nonblocking(x * k, name=f"nb{k}") for k in range(5)]
    for k, h in enumerate(handles):
        close(bf.synchronize(h), torch.tensor([k * (m + (1 - m)) / 2.0]), atol=1e-6)


@sizes(4)
def case_argument_errors():
    x = _setup()
    m, M = bf.machine_rank(), bf.machine_size()
    expect_error(ValueError, "same time", bf.hierarchical_neighbor_allreduce, x, self_weight=0.5)
    expect_error(ValueError, "src_machine_weights", bf.hierarchical_neighbor_allreduce, x,
                 self_weight=0.5, src_machine_weights={m: 0.5}, dst_machine_weights=[(m + 1) % M])
    expect_error(ValueError, "dst_machine_weights", bf.hierarchical_neighbor_allreduce, x,
                 self_weight=0.5, src_machine_weights={}, dst_machine_weights=[m])
    expect_error(ValueError, "should not be empty", bf.hierarchical_neighbor_allreduce, x,
                 self_weight=0.5, src_machine_weights={}, dst_machine_weights=[])
    expect_error(ValueError, "float", bf.hierarchical_neighbor_allreduce, x, self_weight=1,
                 src_machine_weights={}, dst_machine_weights=[(m + 1) % M])
    expect_error(TypeError, "deprecated", bf.hierarchical_neighbor_allreduce, x,
                 neighbor_machine_weights={})


@sizes(2, 4)
def case_needs_machine_topology_and_local_size():
    import os
    saved = os.environ.pop("BLUEFOG_NODES_PER_MACHINE", None)
    try:
        os.environ["BLUEFOG_NODES_PER_MACHINE"] = "1"
        bf.init()
        expect_error(AssertionError, "local size is 1", bf.hierarchical_neighbor_allreduce, torch.ones(1))
    finally:
        os.environ["BLUEFOG_NODES_PER_MACHINE"] = saved or "2"
        bf.init()
    from bluefog import context
    context.current().machine_topology = None
    expect_error(RuntimeError, "Machine topology must be set", bf.hierarchical_neighbor_allreduce,
                 torch.ones(1))
