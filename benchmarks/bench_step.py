"""Optimizer step time on a model of 100+ parameter tensors: AWC (neighbor_allreduce), gradient
allreduce, torch DDP over gloo, the same step without communication, and the raw floor of one
neighbor exchange of all parameters as a single buffer — all measured in the same run.

Run::

    bfrun -np 4 python benchmarks/bench_step.py

Data is synthetic (``torch.randn``).  A step is forward, backward and ``optimizer.step()``; the
time of a step is the slowest rank's; the variants run in interleaved blocks (so drifting load on
a shared machine hits all of them), and the table shows the median of the per-block medians.
"""

import argparse
import os
import statistics

import torch
import torch.distributed as dist
import torch.nn as nn

import bluefog.torch as bf
from common import raw_neighbor_average, timed
from mpi4py import MPI


def make_model(layers: int, width: int) -> nn.Module:
    torch.manual_seed(0)
    blocks = []
    for _ in range(layers):
        blocks += [nn.Linear(width, width), nn.Tanh()]
    return nn.Sequential(*blocks, nn.Linear(width, 10))


def training_step(model, optimizer, data, target):
    def step():
        loss = nn.functional.cross_entropy(model(data), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return step


def raw_exchange(comm, model, ins, outs):
    """Floor: one Isend/Irecv of every parameter as one flat buffer, plus the uniform average."""
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    slots = torch.empty((len(ins), flat.numel()))

    return lambda: raw_neighbor_average(comm, flat, ins, outs, slots)


def init_gloo(comm):
    port = comm.bcast(29500 + (os.getpid() % 2000) if comm.rank == 0 else None, root=0)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=comm.rank,
                            world_size=comm.size)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=60, help="hidden Linear layers")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32, help="samples per rank per step")
    parser.add_argument("--steps", type=int, default=200, help="steps per variant, in all")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--blocks", type=int, default=20, help="interleaved blocks of steps")
    parser.add_argument("--skip-ddp", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    bf.init()
    comm = MPI.COMM_WORLD.Dup()
    torch.manual_seed(bf.rank())
    data, target = torch.randn(args.batch, args.width), torch.randint(0, 10, (args.batch,))
    def sgd(model):
        return torch.optim.SGD(model.parameters(), lr=1e-3)

    steps = {}
    model = make_model(args.layers, args.width)
    steps["local step (no communication)"] = training_step(model, sgd(model), data, target)
    tensors = len(list(model.parameters()))
    elements = sum(p.numel() for p in model.parameters())
    steps["raw single-buffer neighbor exchange"] = raw_exchange(
        comm, model, bf.in_neighbor_ranks(), bf.out_neighbor_ranks())
    model = make_model(args.layers, args.width)
    steps["AWC (neighbor_allreduce)"] = training_step(
        model, bf.DistributedAdaptWithCombineOptimizer(sgd(model), model=model), data, target)
    model = make_model(args.layers, args.width)
    steps["gradient allreduce"] = training_step(
        model, bf.DistributedGradientAllreduceOptimizer(sgd(model), model=model), data, target)
    if not args.skip_ddp:
        init_gloo(comm)
        model = make_model(args.layers, args.width)
        steps["torch DDP (gloo)"] = training_step(
            nn.parallel.DistributedDataParallel(model), sgd(model), data, target)
    # Interleave: every variant runs a block of steps in turn, so drifting machine load hits all.
    samples = {label: [] for label in steps}
    for block in range(args.blocks):
        for label, step in steps.items():
            samples[label].append(timed(comm, step, args.steps // args.blocks,
                                        args.warmup if block == 0 else 1))
        if bf.rank() == 0:
            print(f"measured block {block + 1} of {args.blocks}", flush=True)
    results = {label: statistics.median(values) for label, values in samples.items()}
    if not args.skip_ddp:
        dist.destroy_process_group()
    if bf.rank() == 0:
        local = results["local step (no communication)"]
        floor = results["raw single-buffer neighbor exchange"]
        awc = results["AWC (neighbor_allreduce)"]
        print(f"\n{bf.size()} ranks, {tensors} parameter tensors, {elements} float32 elements, "
              f"batch {args.batch} per rank; ms per step: median over {args.blocks} interleaved blocks "
              "of the per-block median of the slowest rank\n")
        print("| step | ms | vs AWC |")
        print("|---|---|---|")
        for label, value in results.items():
            print(f"| {label} | {value * 1e3:.2f} | {value / awc:.2f}x |")
        print(f"\nAWC communication overhead (AWC - local) = {(awc - local) * 1e3:.2f} ms; "
              f"raw single-buffer floor = {floor * 1e3:.2f} ms; overhead / floor = "
              f"{(awc - local) / floor:.2f}x")
        if "torch DDP (gloo)" in results:
            print(f"DDP / AWC = {results['torch DDP (gloo)'] / awc:.2f}x")


if __name__ == "__main__":
    main()
