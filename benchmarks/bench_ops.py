"""neighbor_allreduce and allreduce against the raw mpi4py floor, measured in the same run.

Run::

    bfrun -np 4 python benchmarks/bench_ops.py            # prints a markdown table on rank 0

Floors: for neighbor_allreduce, ``Irecv``/``Isend`` with the exponential-2 neighbors plus the same
uniform average (in numpy, as bluefog computes it); for allreduce, ``MPI_Allreduce`` on the numpy
view.  The methods are timed call by call, round-robin in a shuffled order, each call after a
barrier; the time of a call is the slowest rank's; the table shows medians.
"""

import argparse

import torch

import bluefog.torch as bf
from common import raw_neighbor_average, timed_round_robin
from mpi4py import MPI

SIZES = {"1K": 1 << 10, "64K": 1 << 16, "1M": 1 << 20, "16M": 1 << 24}
REPEATS = {"1K": 300, "64K": 150, "1M": 40, "16M": 10}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1K,64K,1M,16M")
    parser.add_argument("--repeat-scale", type=float, default=1.0)
    args = parser.parse_args()
    bf.init()
    comm = MPI.COMM_WORLD.Dup()
    ins, outs = bf.in_neighbor_ranks(), bf.out_neighbor_ranks()
    rows = []
    for label in args.sizes.split(","):
        n = SIZES[label]
        repeats = max(3, int(REPEATS[label] * args.repeat_scale))
        x = torch.rand(n)
        slots = torch.empty((len(ins), n))
        result = torch.empty(n)
        scratch = torch.rand(n)   # in place: its values grow to inf, which costs the same
        skip = (lambda: bf.neighbor_allreduce(x, name="bench.nar"),
                lambda: bf.set_skip_negotiate_stage(True),
                lambda: bf.set_skip_negotiate_stage(False))
        got = timed_round_robin(comm, {
            "floor_nar": lambda: raw_neighbor_average(comm, x, ins, outs, slots),
            "nar": lambda: bf.neighbor_allreduce(x, name="bench.nar"),
            "floor_ar": lambda: comm.Allreduce(x.numpy(), result.numpy()),
            "ar": lambda: bf.allreduce(x, average=False, name="bench.ar"),
            "ar_": lambda: bf.allreduce_(scratch, average=False, name="bench.ar_"),
            "skip_nar": skip}, repeats)
        floor_nar, ours_nar, skip_nar = got["floor_nar"], got["nar"], got["skip_nar"]
        floor_ar, ours_ar, inplace_ar = got["floor_ar"], got["ar"], got["ar_"]
        rows.append((label, floor_nar, ours_nar, skip_nar, floor_ar, ours_ar, inplace_ar))
        if bf.rank() == 0:
            print(f"measured {label} ({repeats} calls each)", flush=True)
    if bf.rank() == 0:
        print(f"\n{bf.size()} ranks, float32, exponential-2 graph, median ms per call (slowest rank). "
              "'skip': neighbor_allreduce with bf.set_skip_negotiate_stage(True); allreduce_ is in "
              "place (the floor also reduces into memory it already has)\n")
        print("| size | raw Isend/Irecv+avg | neighbor_allreduce | ratio | skip | ratio "
              "| raw MPI_Allreduce | allreduce | ratio | allreduce_ | ratio |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for label, fn, on, sn, fa, oa, ia in rows:
            print(f"| {label} | {fn * 1e3:.3f} | {on * 1e3:.3f} | {on / fn:.2f}x | {sn * 1e3:.3f} "
                  f"| {sn / fn:.2f}x | {fa * 1e3:.3f} | {oa * 1e3:.3f} | {oa / fa:.2f}x "
                  f"| {ia * 1e3:.3f} | {ia / fa:.2f}x |")


if __name__ == "__main__":
    main()
