"""Rank program of tests/test_multihost.py: Bluefog across two "hosts"; prints one JSON line per rank.

Run as ``bfrun -np 4 -H hostA:2,hostB:2 python tests/multihost_job.py``.
"""

import json
import os
import socket

import torch

import bluefog.torch as bf

bf.init()
rank, size = bf.rank(), bf.size()
x = torch.tensor([float(rank)], dtype=torch.float64)
for _ in range(60):                     # consensus over the default (exponential-2) graph
    x = bf.neighbor_allreduce(x, name="consensus")
total = bf.allreduce(torch.tensor([float(rank)]), average=False, name="total").item()

bf.set_machine_topology(bf.ExponentialGraph(bf.machine_size()))
mine = torch.tensor([float(rank)], dtype=torch.float64)
uniform = bf.hierarchical_neighbor_allreduce(mine, name="hier_uniform").item()
other = 1 - bf.machine_rank()
weighted = bf.hierarchical_neighbor_allreduce(
    mine, self_weight=0.75, src_machine_weights={other: 0.25}, dst_machine_weights={other: 1.0},
    name="hier_weighted").item()

print(json.dumps({
    "rank": rank, "size": size, "host": socket.gethostname(),
    "local_rank": bf.local_rank(), "local_size": bf.local_size(),
    "machine_rank": bf.machine_rank(), "machine_size": bf.machine_size(),
    "in_machines": bf.in_neighbor_machine_ranks(), "out_machines": bf.out_neighbor_machine_ranks(),
    "consensus": x.item(), "total": total, "hier_uniform": uniform, "hier_weighted": weighted,
    "nccl_ifname": os.environ.get("NCCL_SOCKET_IFNAME"),
}), flush=True)
bf.shutdown()
