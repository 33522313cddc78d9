"""Optimizer step time on a model of 100+ parameter tensors: AWC (neighbor_allreduce), gradient
allreduce, push-sum, torch DDP over gloo, the same step without communication, and the raw floor
of one neighbor exchange of all parameters as a single buffer.

Run (it launches the ranks itself, through bfrun)::

    python benchmarks/bench_step.py                # 4 ranks, 3 floor/bluefog pairs

The floor side (local step, raw exchange, DDP) runs in its own processes, which never import
bluefog, alternated with bluefog's (``--pairs`` of each).  Data is synthetic (``torch.randn``).  A
step is forward, backward and ``optimizer.step()``; the time of a step is the slowest rank's; within
a run the variants run in interleaved blocks (so drifting load hits all of them) and a run reports
the median of the per-block medians; the table shows the median over runs (min–max).
"""

import os
import statistics

import torch
import torch.distributed as dist
import torch.nn as nn

from common import (Stat, exponential_neighbors, raw_neighbor_average, ratio, run_benchmark,
                    side_parser, timed, write_result)


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


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=1e-3)


def floor_steps(args, comm, data, target):
    """Steps without bluefog: no communication, the raw exchange, DDP over gloo."""
    steps = {}
    model = make_model(args.layers, args.width)
    steps["local step (no communication)"] = training_step(model, sgd(model), data, target)
    ins, outs = exponential_neighbors(comm.rank, comm.size)
    steps["raw single-buffer neighbor exchange"] = raw_exchange(comm, model, ins, outs)
    if not args.skip_ddp:
        init_gloo(comm)
        model = make_model(args.layers, args.width)
        steps["torch DDP (gloo)"] = training_step(
            nn.parallel.DistributedDataParallel(model), sgd(model), data, target)
    return steps


def our_steps(args, comm, data, target):
    """bluefog's optimizers, and the local step again inside this process."""
    import bluefog.torch as bf
    steps = {}
    model = make_model(args.layers, args.width)
    steps["local step in the bluefog process"] = training_step(model, sgd(model), data, target)
    model = make_model(args.layers, args.width)
    steps["AWC (neighbor_allreduce)"] = training_step(
        model, bf.DistributedAdaptWithCombineOptimizer(sgd(model), model=model), data, target)
    model = make_model(args.layers, args.width)
    steps["gradient allreduce"] = training_step(
        model, bf.DistributedGradientAllreduceOptimizer(sgd(model), model=model), data, target)
    model = make_model(args.layers, args.width)
    steps["push-sum (asynchronous, win_accumulate)"] = training_step(
        model, bf.DistributedPushSumOptimizer(sgd(model), model=model), data, target)
    return steps


def measure(args):
    from mpi4py import MPI
    torch.set_num_threads(1)
    if args.side == "ours":
        import bluefog.torch as bf
        bf.init()
    comm = MPI.COMM_WORLD.Dup()
    torch.manual_seed(comm.rank)
    data, target = torch.randn(args.batch, args.width), torch.randint(0, 10, (args.batch,))
    make = our_steps if args.side == "ours" else floor_steps
    steps = make(args, comm, data, target)
    # Interleave: every variant runs a block of steps in turn, so drifting machine load hits all.
    samples = {label: [] for label in steps}
    for block in range(args.blocks):
        for label, step in steps.items():
            samples[label].append(timed(comm, step, args.steps // args.blocks,
                                        args.warmup if block == 0 else 1))
    if args.side == "floor" and not args.skip_ddp:
        dist.destroy_process_group()
    model = make_model(args.layers, args.width)
    meta = {"tensors": len(list(model.parameters())),
            "elements": sum(p.numel() for p in model.parameters())}
    write_result(comm, args.json, {k: statistics.median(v) for k, v in samples.items()}, meta)


def report(args, runs):
    floor, ours, meta = runs["floor"], runs["ours"], runs["meta"]
    rows = {label: Stat(run[label] for run in floor) for label in floor[0]}
    rows.update({label: Stat(run[label] for run in ours) for label in ours[0]})
    awc = rows["AWC (neighbor_allreduce)"]
    print(f"\n{args.np} ranks, {meta['tensors']} parameter tensors, {meta['elements']} float32 "
          f"elements, batch {args.batch} per rank; {args.pairs} runs of each side, alternated; ms "
          "per step: median over runs (min–max) of each run's median of per-block medians of the "
          "slowest rank\n")
    print("| step | ms | vs AWC |")
    print("|---|---|---|")
    for label, value in rows.items():
        print(f"| {label} | {value.text()} | {value.median / awc.median:.2f}x |")
    overheads = [a - local for a, local in zip(
        awc.values, rows["local step in the bluefog process"].values)]
    exchange = rows["raw single-buffer neighbor exchange"]
    print(f"\nAWC communication overhead (AWC - local step, same process) = "
          f"{statistics.median(overheads) * 1e3:.2f} ms; raw single-buffer floor = "
          f"{exchange.median * 1e3:.2f} ms; overhead / floor = "
          f"{statistics.median(overheads) / exchange.median:.2f}x")
    if "torch DDP (gloo)" in rows:
        print(f"DDP / AWC = {ratio(rows['torch DDP (gloo)'], awc)}")


def main():
    parser = side_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=60, help="hidden Linear layers")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32, help="samples per rank per step")
    parser.add_argument("--steps", type=int, default=200, help="steps per variant, in all")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--blocks", type=int, default=20, help="interleaved blocks of steps")
    parser.add_argument("--skip-ddp", action="store_true")
    run_benchmark(parser, __file__, measure, report)


if __name__ == "__main__":
    main()
