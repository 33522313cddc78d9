"""Average consensus: every rank starts with its own random vector and all of them converge to the
global mean by repeated neighbor averaging.

Run::

    bfrun -np 4 python examples/pytorch_average_consensus.py
    bfrun -np 4 python examples/pytorch_average_consensus.py --virtual-topology ring --dynamic-topology

The data is generated (``torch.randn`` with a per-rank seed); nothing is downloaded.
"""

import argparse
import sys

import torch

import bluefog.torch as bf
from bluefog.common import topology_util

TOPOLOGIES = {
    "expo2": lambda n: topology_util.ExponentialGraph(n),
    "expo3": lambda n: topology_util.ExponentialGraph(n, base=3),
    "expo4": lambda n: topology_util.ExponentialGraph(n, base=4),
    "ring": lambda n: topology_util.RingGraph(n),
    "mesh": lambda n: topology_util.MeshGrid2DGraph(n),
    "star": lambda n: topology_util.StarGraph(n),
    "full": lambda n: topology_util.FullyConnectedGraph(n),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-size", type=int, default=100000, help="elements per rank")
    parser.add_argument("--max-iters", type=int, default=500, help="iterations at most")
    parser.add_argument("--tolerance", type=float, default=1e-6,
                        help="stop once the relative error is below this")
    parser.add_argument("--virtual-topology", default="expo2", choices=sorted(TOPOLOGIES))
    parser.add_argument("--dynamic-topology", action="store_true",
                        help="one-peer dynamic schedule over the chosen topology")
    parser.add_argument("--print-every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=2020)
    return parser.parse_args(argv)


def relative_error(x, mean):
    """max over ranks of ||x - mean|| / ||mean||."""
    err = torch.tensor([(x - mean).norm().item() / max(mean.norm().item(), 1e-30)],
                       dtype=torch.float64)
    return bf.allgather(err, name="error").max().item()


def synchronous_consensus(args, x, mean):
    is_weighted = args.virtual_topology in ("ring", "mesh", "star") and not args.dynamic_topology
    bf.set_topology(TOPOLOGIES[args.virtual_topology](bf.size()), is_weighted=is_weighted)
    schedule = (topology_util.GetDynamicOnePeerSendRecvRanks(bf.load_topology(), bf.rank())
                if args.dynamic_topology and bf.size() > 1 else None)
    error = relative_error(x, mean)
    for it in range(1, args.max_iters + 1):
        if schedule is None:
            x = bf.neighbor_allreduce(x, name="x")
        else:
            send, recv = next(schedule)
            w = 1.0 / (len(recv) + 1)
            x = bf.neighbor_allreduce(x, name="x", self_weight=w, src_weights={r: w for r in recv},
                                      dst_weights=send, enable_topo_check=False)
        if it % args.print_every == 0 or it == args.max_iters:
            error = relative_error(x, mean)
            if bf.rank() == 0:
                print(f"iteration {it:4d}: relative error {error:.3e}", flush=True)
            if error < args.tolerance:
                break
    return x, error


def main(argv=None):
    args = parse_args(argv)
    bf.init()
    torch.manual_seed(args.seed + bf.rank())
    x = torch.randn(args.data_size, dtype=torch.float64)
    mean = bf.allreduce(x, name="mean")
    if bf.rank() == 0:
        mode = "dynamic one-peer" if args.dynamic_topology else "static"
        print(f"{bf.size()} ranks, {args.data_size} elements each, {mode} {args.virtual_topology} "
              "topology", flush=True)
    x, error = synchronous_consensus(args, x, mean)
    if bf.rank() == 0:
        verdict = "reached" if error < args.tolerance else "did NOT reach"
        print(f"final relative error {error:.3e}: {verdict} {args.tolerance:g}", flush=True)
    return 0 if error < args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
