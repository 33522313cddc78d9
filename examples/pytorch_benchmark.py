"""Training throughput of each distributed optimizer on synthetic data (samples per second).

Every rank trains the same MLP (or a small CNN) on random data it generates; the script times
``--num-iters`` rounds of ``--num-batches-per-iter`` batches after a warm-up and reports the
per-rank rate as mean +- 1.96 standard deviations over the rounds, and the total over all ranks.

Run::

    bfrun -np 4 python examples/pytorch_benchmark.py --dist-optimizer neighbor_allreduce
    bfrun -np 4 python examples/pytorch_benchmark.py --dist-optimizer all     # a table of all
"""

import argparse
import os
import sys
import timeit

import numpy as np
import torch
import torch.nn.functional as F

import bluefog.torch as bf

CHOICES = ("allreduce", "neighbor_allreduce", "hierarchical_neighbor_allreduce",
           "gradient_allreduce", "win_put", "pull_get", "push_sum", "empty")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dist-optimizer", default="neighbor_allreduce",
                        choices=("all",) + CHOICES)
    parser.add_argument("--atc-style", action="store_true")
    parser.add_argument("--dynamic-topology", action="store_true")
    parser.add_argument("--model", default="mlp", choices=("mlp", "cnn"))
    parser.add_argument("--batch-size", type=int, default=64, help="per rank")
    parser.add_argument("--num-warmup-batches", type=int, default=5)
    parser.add_argument("--num-batches-per-iter", type=int, default=10)
    parser.add_argument("--num-iters", type=int, default=10)
    parser.add_argument("--ranks-per-machine", type=int, default=0,
                        help="treat every N consecutive ranks as one machine (for the hierarchical "
                             "optimizer on one host)")
    parser.add_argument("--no-cuda", action="store_true",
                        help="run on the CPU even where CUDA is available")
    return parser.parse_args(argv)


def make_model(kind):
    if kind == "mlp":
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 512), torch.nn.ReLU(),
                                   torch.nn.Linear(512, 512), torch.nn.ReLU(),
                                   torch.nn.Linear(512, 10))
    return torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.MaxPool2d(2), torch.nn.Conv2d(16, 32, 3, padding=1),
                               torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                               torch.nn.Linear(32 * 7 * 7, 10))


def make_optimizer(kind, atc, model, base):
    types = {"allreduce": bf.CommunicationType.allreduce,
             "neighbor_allreduce": bf.CommunicationType.neighbor_allreduce,
             "hierarchical_neighbor_allreduce": bf.CommunicationType.hierarchical_neighbor_allreduce,
             "empty": bf.CommunicationType.empty}
    if kind in types:
        factory = (bf.DistributedAdaptThenCombineOptimizer if atc
                   else bf.DistributedAdaptWithCombineOptimizer)
        return factory(base, model=model, communication_type=types[kind])
    return {"gradient_allreduce": bf.DistributedGradientAllreduceOptimizer,
            "win_put": bf.DistributedWinPutOptimizer,
            "pull_get": bf.DistributedPullGetOptimizer,
            "push_sum": bf.DistributedPushSumOptimizer}[kind](base, model=model)


def one_peer(kind, optimizer):
    """Per-batch weight setter for --dynamic-topology (neighbor_allreduce and win_put)."""
    if kind == "neighbor_allreduce" and bf.size() > 1:
        ranks = bf.GetDynamicOnePeerSendRecvRanks(bf.load_topology(), bf.rank())

        def update(batch):
            send, recv = next(ranks)
            optimizer.dst_weights = send
            optimizer.src_weights = {r: 1.0 / (len(recv) + 1) for r in recv}
            optimizer.self_weight = 1.0 / (len(recv) + 1)
        return update
    if kind == "win_put" and bf.size() > 1:
        outs = bf.out_neighbor_ranks()

        def update(batch):
            optimizer.dst_weights = {outs[batch % len(outs)]: 1.0}
        return update
    return lambda batch: None


def benchmark(args, kind):
    """(mean, half-width) of this rank's samples per second with optimizer ``kind``."""
    torch.manual_seed(bf.rank())
    device = torch.device("cpu")
    if not args.no_cuda and torch.cuda.is_available():
        device = torch.device("cuda", bf.local_rank() % torch.cuda.device_count())
    model = make_model(args.model).to(device)
    bf.broadcast_parameters(model.state_dict(), root_rank=0)
    base = torch.optim.SGD(model.parameters(), lr=0.01)
    optimizer = make_optimizer(kind, args.atc_style, model, base)
    data = torch.randn(args.batch_size, 1, 28, 28, device=device)
    target = torch.randint(0, 10, (args.batch_size,), device=device)
    schedule = one_peer(kind, optimizer) if args.dynamic_topology else (lambda batch: None)
    batch = 0

    def train_batches(count):
        nonlocal batch
        for _ in range(count):
            schedule(batch)
            batch += 1
            optimizer.zero_grad()
            F.cross_entropy(model(data), target).backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    train_batches(args.num_warmup_batches)
    bf.barrier()
    rates = []
    for _ in range(args.num_iters):
        seconds = timeit.timeit(lambda: train_batches(args.num_batches_per_iter), number=1)
        rates.append(args.batch_size * args.num_batches_per_iter / seconds)
    if hasattr(optimizer, "unregister_window"):
        optimizer.unregister_window()
    optimizer.remove_hooks()
    return float(np.mean(rates)), float(1.96 * np.std(rates))


def main(argv=None):
    args = parse_args(argv)
    if args.ranks_per_machine > 0:
        os.environ["BLUEFOG_NODES_PER_MACHINE"] = str(args.ranks_per_machine)
    bf.init()
    kinds = CHOICES if args.dist_optimizer == "all" else (args.dist_optimizer,)
    if "hierarchical_neighbor_allreduce" in kinds:
        if bf.local_size() > 1 and bf.machine_size() > 1:
            bf.set_machine_topology(bf.ExponentialGraph(bf.machine_size()))
        elif args.dist_optimizer == "all":
            kinds = tuple(k for k in kinds if k != "hierarchical_neighbor_allreduce")
        else:
            if bf.rank() == 0:
                print("hierarchical_neighbor_allreduce needs several machines with several ranks "
                      "each; on one host pass --ranks-per-machine 2", file=sys.stderr)
            return 2
    if bf.rank() == 0:
        print(f"{bf.size()} ranks, {args.model}, batch {args.batch_size} per rank, "
              f"{args.num_iters} x {args.num_batches_per_iter} timed batches", flush=True)
    for kind in kinds:
        mean, spread = benchmark(args, kind)
        table = bf.allgather(torch.tensor([[mean, spread]], dtype=torch.float64), name="rates")
        if bf.rank() == 0:
            per_rank, per_spread = table[:, 0].mean().item(), table[:, 1].mean().item()
            total, total_spread = table[:, 0].sum().item(), table[:, 1].pow(2).sum().sqrt().item()
            print(f"{kind:32s} {per_rank:9.1f} +- {per_spread:7.1f} samples/s per rank   "
                  f"total on {bf.size()} ranks: {total:9.1f} +- {total_spread:7.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
