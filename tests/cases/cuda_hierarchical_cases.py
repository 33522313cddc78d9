"""Hierarchical ops on CUDA tensors (always staged through host memory), with fake machines: run
with BLUEFOG_NODES_PER_MACHINE=2 where CUDA exists (tests/test_cuda.py)."""

import torch

import bluefog.torch as bf
from bluefog.common import topology_util
from casetools import close, sizes, timeout


@sizes(4)
@timeout(120)
def case_hierarchical_ops_match_cpu():
    assert bf.local_size() == 2, "run with BLUEFOG_NODES_PER_MACHINE=2"
    device = torch.device("cuda", bf.rank() % torch.cuda.device_count())
    bf.set_machine_topology(topology_util.ExponentialGraph(bf.machine_size()))
    x = torch.arange(5, dtype=torch.float32) * (bf.rank() + 1)
    for gpu_out, cpu_out in [
            (bf.hierarchical_neighbor_allreduce(x.to(device), name="h"),
             bf.hierarchical_neighbor_allreduce(x, name="h")),
            (bf.allreduce(x.to(device), is_hierarchical_local=True, name="l"),
             bf.allreduce(x, is_hierarchical_local=True, name="l"))]:
        assert gpu_out.device == device
        close(gpu_out.cpu(), cpu_out, atol=1e-6)
