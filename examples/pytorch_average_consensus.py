"""Average consensus: every rank starts with its own random vector and all of them converge to the
global mean by repeated neighbor averaging.

Run::

    bfrun -np 4 python examples/pytorch_average_consensus.py
    bfrun -np 4 python examples/pytorch_average_consensus.py --virtual-topology ring --dynamic-topology
    bfrun -np 4 python examples/pytorch_average_consensus.py --asynchronous-mode --slow-ranks 1,3

``--asynchronous-mode`` runs push-sum with one-sided window ops: no rank ever waits for another
while it iterates, so ranks may run at different speeds (``--slow-ranks`` makes some of them sleep
every iteration), and the estimate ``x / p`` still reaches the exact average because push-sum moves
value and weight together and loses neither.

The data is generated (``torch.randn`` with a per-rank seed); nothing is downloaded.
"""

import argparse
import sys
import time

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
    parser.add_argument("--asynchronous-mode", action="store_true",
                        help="push-sum with window ops (win_accumulate / win_update_then_collect)")
    parser.add_argument("--slow-ranks", default="",
                        help="comma-separated ranks that sleep --slow-sleep seconds per iteration")
    parser.add_argument("--slow-sleep", type=float, default=0.002)
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


def asynchronous_consensus(args, x, mean):
    """Push-sum: each rank keeps 1/(outdeg+1) of its value and weight p and adds the same share into
    each out-neighbour's buffer (a mutex-guarded one-sided accumulate); it then collects whatever
    arrived.  The estimate is x / p.  A rank that has done --max-iters iterations goes on until
    every rank has (a nonblocking allreduce tells it), so slow ranks are never left alone."""
    if args.dynamic_topology:
        raise SystemExit("--asynchronous-mode uses the static --virtual-topology")
    bf.set_topology(TOPOLOGIES[args.virtual_topology](bf.size()))
    slow = {int(r) for r in args.slow_ranks.split(",") if r.strip()}
    outs = bf.out_neighbor_ranks()
    share = 1.0 / (len(outs) + 1)
    total_before = bf.allreduce(x, average=False, name="mass before")
    bf.turn_on_win_ops_with_associated_p()
    bf.win_create(x, name="x", zero_init=True)
    everyone_done, iterations = None, 0
    while everyone_done is None or not bf.poll(everyone_done):
        bf.win_accumulate(x, name="x", self_weight=share, dst_weights={o: share for o in outs},
                          require_mutex=True)
        x = bf.win_update_then_collect(name="x")
        iterations += 1
        if bf.rank() in slow:
            time.sleep(args.slow_sleep)
        if iterations == args.max_iters:
            everyone_done = bf.allreduce_nonblocking(torch.ones(1), name="done")
    bf.synchronize(everyone_done)
    bf.barrier()                                  # every accumulate has landed ...
    x = bf.win_update_then_collect(name="x")      # ... and is collected
    p = bf.win_associated_p(name="x")
    estimate = x / p
    mass = bf.allreduce(x, average=False, name="mass after")
    weight = bf.allreduce(torch.tensor([p], dtype=torch.float64), average=False, name="p after")
    bf.win_free("x")
    bf.turn_off_win_ops_with_associated_p()
    counts = bf.allgather(torch.tensor([iterations]), name="iterations").tolist()
    error = relative_error(estimate, mean)
    if bf.rank() == 0:
        drift = ((mass - total_before).norm() / total_before.norm()).item()
        print(f"iterations per rank {counts}; relative change of the total value {drift:.1e}, "
              f"total weight {weight.item():.12f} (started at {bf.size()})", flush=True)
        print(f"push-sum estimate: relative error {error:.3e}", flush=True)
    return estimate, error


def main(argv=None):
    args = parse_args(argv)
    bf.init()
    torch.manual_seed(args.seed + bf.rank())
    x = torch.randn(args.data_size, dtype=torch.float64)
    mean = bf.allreduce(x, name="mean")
    if bf.rank() == 0:
        mode = ("asynchronous push-sum on the" if args.asynchronous_mode else
                "dynamic one-peer" if args.dynamic_topology else "static")
        print(f"{bf.size()} ranks, {args.data_size} elements each, {mode} {args.virtual_topology} "
              "topology", flush=True)
    consensus = asynchronous_consensus if args.asynchronous_mode else synchronous_consensus
    x, error = consensus(args, x, mean)
    if bf.rank() == 0:
        verdict = "reached" if error < args.tolerance else "did NOT reach"
        print(f"final relative error {error:.3e}: {verdict} {args.tolerance:g}", flush=True)
    return 0 if error < args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
