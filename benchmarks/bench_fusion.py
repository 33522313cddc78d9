"""Tensor fusion: one step = k nonblocking neighbor_allreduce (or allreduce) calls on small
tensors, then synchronize all of them — fusion on, fusion off, and the raw floor.

Run (it launches the ranks itself, through bfrun)::

    python benchmarks/bench_fusion.py              # 4 ranks, 3 floor/bluefog pairs

The floor runs in its own processes, which never import bluefog, alternated with bluefog's: the
best fusion can do, the k tensors copied into one buffer, one raw exchange (``Irecv``/``Isend``
with the exponential-2 neighbors plus the uniform average, or one ``MPI_Allreduce``) and the
results copied back out.  "off" sets the engine's fusion threshold to 0 in the same process (what
``BLUEFOG_FUSION_THRESHOLD=0`` does).
"""

import torch

from common import (Stat, exponential_neighbors, raw_neighbor_average, ratio, run_benchmark,
                    side_parser, timed, write_result)


def floor_step(comm, op, tensors):
    """One packed exchange of every tensor, results unpacked into new tensors."""
    flat = torch.cat(tensors)
    if op == "neighbor_allreduce":
        ins, outs = exponential_neighbors(comm.rank, comm.size)
        slots = torch.empty((len(ins), flat.numel()))

        def step():
            out = raw_neighbor_average(comm, torch.cat(tensors, out=flat), ins, outs, slots)
            return [chunk.clone() for chunk in out.split([t.numel() for t in tensors])]
    else:
        result = torch.empty_like(flat)

        def step():
            comm.Allreduce(torch.cat(tensors, out=flat).numpy(), result.numpy())
            return [chunk.clone() for chunk in result.split([t.numel() for t in tensors])]
    return step


def our_step(op, tensors):
    import bluefog.torch as bf
    submit = {"neighbor_allreduce": bf.neighbor_allreduce_nonblocking,
              "allreduce": bf.allreduce_nonblocking}[op]

    def step():
        handles = [submit(t, name=f"fusion.{k}") for k, t in enumerate(tensors)]
        return [bf.synchronize(h) for h in handles]
    return step


def measure(args):
    from mpi4py import MPI
    if args.side == "ours":
        import bluefog.torch as bf
        from bluefog import context
        bf.init()
        engine = context.current().engine
        default = engine._fusion_threshold
    comm = MPI.COMM_WORLD.Dup()
    result = {}
    for count in [int(c) for c in args.counts.split(",")]:
        tensors = [torch.rand(args.elements) for _ in range(count)]
        repeats = max(5, min(100, 3000 // count))
        for op in ("neighbor_allreduce", "allreduce"):
            if args.side == "floor":
                result[f"{op} {count}"] = timed(comm, floor_step(comm, op, tensors), repeats, 1)
                continue
            for mode, threshold in (("on", default), ("off", 0)):
                engine._fusion_threshold = threshold
                before = engine.stats["kernels"]
                result[f"{op} {count} {mode}"] = timed(comm, our_step(op, tensors), repeats, 1)
                result[f"{op} {count} {mode} kernels"] = (engine.stats["kernels"] - before) / (
                    repeats + 1)
            engine._fusion_threshold = default
    write_result(comm, args.json, result)


def report(args, runs):
    floor, ours = runs["floor"], runs["ours"]
    print(f"\n{args.np} ranks, {args.elements} float32 elements per tensor; {args.pairs} runs of "
          "each side, alternated; per step: median over runs (min–max) of each run's median of "
          "the slowest rank\n")
    print("| op | tensors | raw packed floor | fusion on | kernels/step | vs floor | fusion off "
          "| kernels/step | off / on |")
    print("|---|---|---|---|---|---|---|---|---|")
    for op in ("neighbor_allreduce", "allreduce"):
        for count in [int(c) for c in args.counts.split(",")]:
            base = Stat(run[f"{op} {count}"] for run in floor)
            on = Stat(run[f"{op} {count} on"] for run in ours)
            off = Stat(run[f"{op} {count} off"] for run in ours)
            kernels = {m: ours[0][f"{op} {count} {m} kernels"] for m in ("on", "off")}
            print(f"| {op} | {count} | {base.text()} | {on.text()} | {kernels['on']:.0f} "
                  f"| {ratio(on, base)} | {off.text()} | {kernels['off']:.0f} "
                  f"| {off.median / on.median:.2f}x |")


def main():
    parser = side_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--elements", type=int, default=256, help="elements per tensor")
    parser.add_argument("--counts", default="1,10,100,1000")
    run_benchmark(parser, __file__, measure, report)


if __name__ == "__main__":
    main()
