"""Tensor fusion on vs off: one step = k nonblocking neighbor_allreduce (and allreduce) calls on small
tensors, then synchronize all of them.

Run::

    bfrun -np 4 python benchmarks/bench_fusion.py

"off" sets the engine's fusion threshold to 0 for the same process (what
``BLUEFOG_FUSION_THRESHOLD=0`` does); both are measured in the same run, alternating.
"""

import argparse

import torch

import bluefog.torch as bf
from common import timed
from bluefog import context
from mpi4py import MPI


def step(op, tensors):
    handles = [op(t, name=f"fusion.{k}") for k, t in enumerate(tensors)]
    for h in handles:
        bf.synchronize(h)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--elements", type=int, default=256, help="elements per tensor")
    parser.add_argument("--counts", default="1,10,100,1000")
    args = parser.parse_args()
    bf.init()
    comm = MPI.COMM_WORLD.Dup()
    engine = context.current().engine
    default = engine._fusion_threshold
    ops = {"neighbor_allreduce": bf.neighbor_allreduce_nonblocking,
           "allreduce": bf.allreduce_nonblocking}
    rows = []
    for count in [int(c) for c in args.counts.split(",")]:
        tensors = [torch.rand(args.elements) for _ in range(count)]
        repeats = max(5, min(100, 3000 // count))
        for label, op in ops.items():
            result = {}
            for mode, threshold in (("on", default), ("off", 0)):
                engine._fusion_threshold = threshold
                before = dict(engine.stats)
                result[mode] = timed(comm, lambda: step(op, tensors), repeats)
                kernels = engine.stats["kernels"] - before["kernels"]
                result[mode + " kernels"] = kernels / repeats
            engine._fusion_threshold = default
            rows.append((label, count, result))
        if bf.rank() == 0:
            print(f"measured {count} tensors", flush=True)
    if bf.rank() == 0:
        print(f"\n{bf.size()} ranks, {args.elements} float32 elements per tensor, median ms per step "
              "(slowest rank)\n")
        print("| op | tensors | fusion off | kernels/step | fusion on | kernels/step | off / on |")
        print("|---|---|---|---|---|---|---|")
        for label, count, r in rows:
            print(f"| {label} | {count} | {r['off'] * 1e3:.2f} | {r['off kernels']:.0f} | "
                  f"{r['on'] * 1e3:.2f} | {r['on kernels']:.0f} | {r['off'] / r['on']:.2f}x |")


if __name__ == "__main__":
    main()
