"""win_put / win_get / win_accumulate latency against the raw mpi4py RMA floor, in the same run.

Run::

    bfrun -np 4 python benchmarks/bench_win.py            # prints a markdown table on rank 0

Each bluefog call moves the same data as its floor: ``win_put`` / ``win_accumulate`` write to every
out-neighbour, ``win_get`` reads from every in-neighbour (exponential-2 graph).  The floors use
windows from ``MPI.Win.Allocate`` laid out like bluefog's, the same source tensor and the same
target offsets:

* ``Lock/op/Unlock``: one passive-target epoch per neighbour (``Lock``, then ``Put``, ``Get`` or
  ``Accumulate``, then ``Unlock``);
* ``Lock_all+op+Flush``: one long epoch, as bluefog keeps it, with ``op`` + ``Flush`` per neighbour.

Rank 0 measures while the other ranks sleep in a polled barrier: a one-sided op must not need them.
Methods are timed call by call, round-robin in a shuffled order, so machine load hits them alike;
the table shows medians and the ratio of bluefog to each floor.
"""

import argparse
import random
import statistics
import time

import numpy as np
import torch

import bluefog.torch as bf
from bluefog.engine.engine import wait_request
from mpi4py import MPI

SIZES = {"1K": 1 << 10, "64K": 1 << 16, "1M": 1 << 20}
REPEATS = {"1K": 2000, "64K": 400, "1M": 150}


class Floor:
    """Raw RMA on windows laid out like bluefog's (``numel`` float32 of self, then one slot per
    in-neighbour): one used with a passive-target epoch per op, one kept in a ``Lock_all`` epoch
    (two windows, so both floors are timed round-robin with bluefog)."""

    def __init__(self, comm, x, topology, rank):
        def ins_of(r):
            return sorted(j for j in topology.predecessors(r) if j != r)

        numel = x.numel()
        self.ins = ins_of(rank)
        self.outs = sorted(j for j in topology.successors(rank) if j != rank)
        nbytes = numel * 4 * (1 + len(self.ins))
        self.locked_win = MPI.Win.Allocate(nbytes, 4, comm=comm)
        self.flushed_win = MPI.Win.Allocate(nbytes, 4, comm=comm)
        self.data = x.numpy()              # the very tensor bluefog sends
        self.into = {}                     # a get lands in this rank's own slot for the source
        for key, win in (("locked", self.locked_win), ("flushed", self.flushed_win)):
            local = np.frombuffer(win.tomemory(), dtype=np.float32)
            self.into[key] = {r: local[numel * (1 + k):numel * (2 + k)]
                              for k, r in enumerate(self.ins)}
        # a put goes into this rank's slot on the target; a get reads the source's self part
        self.spec = {r: (numel * (1 + ins_of(r).index(rank)), numel, MPI.FLOAT) for r in self.outs}
        self.spec.update({("get", r): (0, numel, MPI.FLOAT) for r in self.ins})

    def locked(self, op):
        win, ranks = self.locked_win, self.ins if op == "get" else self.outs

        def run():
            for r in ranks:
                win.Lock(r, MPI.LOCK_SHARED)
                self._op(win, op, r, "locked")
                win.Unlock(r)
        return run

    def flushed(self, op):
        win, ranks = self.flushed_win, self.ins if op == "get" else self.outs

        def run():
            for r in ranks:
                self._op(win, op, r, "flushed")
                win.Flush(r)
        return run

    def _op(self, win, op, r, key):
        if op == "put":
            win.Put(self.data, r, self.spec[r])
        elif op == "get":
            win.Get(self.into[key][r], r, self.spec[("get", r)])
        else:
            win.Accumulate(self.data, r, self.spec[r], MPI.SUM)

    def free(self):
        self.into.clear()
        self.locked_win.Free()
        self.flushed_win.Free()


def measure(methods, repeats):
    """Median seconds per call of each method, timed round-robin in a fresh random order each
    round (so no method always follows the same one)."""
    times = {name: [] for name in methods}
    for name, fn in methods.items():   # warm up
        fn()
    order = list(methods.items())
    shuffle = random.Random(2020).shuffle
    for _ in range(repeats):
        shuffle(order)
        for name, fn in order:
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1K,1M")
    parser.add_argument("--repeat-scale", type=float, default=1.0)
    args = parser.parse_args()
    bf.init()
    bf.set_skip_negotiate_stage(True)
    comm = MPI.COMM_WORLD.Dup()
    ins, outs = bf.in_neighbor_ranks(), bf.out_neighbor_ranks()
    rows = []
    for label in args.sizes.split(","):
        numel = SIZES[label]
        repeats = max(5, int(REPEATS[label] * args.repeat_scale))
        x = torch.ones(numel)
        floor = Floor(comm, x, bf.load_topology(), bf.rank())
        bf.win_create(x, "bench")
        methods = {}
        for op in ("put", "get", "accumulate"):
            methods[f"{op} locked"] = floor.locked(op)
            methods[f"{op} flushed"] = floor.flushed(op)
        methods["put bluefog"] = lambda: bf.win_put(x, "bench")
        methods["get bluefog"] = lambda: bf.win_get("bench")
        methods["accumulate bluefog"] = lambda: bf.win_accumulate(x, "bench")
        wait_request(comm.Ibarrier())
        if bf.rank() == 0:
            floor.flushed_win.Lock_all(MPI.MODE_NOCHECK)
            result = measure(methods, repeats)
            floor.flushed_win.Unlock_all()
            for op in ("put", "get", "accumulate"):
                ours = result[f"{op} bluefog"]
                rows.append((op, label, result[f"{op} locked"], result[f"{op} flushed"], ours))
        wait_request(comm.Ibarrier())
        bf.win_free("bench")
        floor.free()
    if bf.rank() == 0:
        print(f"\n{bf.size()} ranks, float32, exponential-2 graph ({len(outs)} out / {len(ins)} in "
              "neighbours of rank 0), median per call, "
              f"{MPI.Get_library_version().split(',')[0].strip()}\n")
        print("| op | size | raw Lock/op/Unlock | raw Lock_all+op+Flush | bluefog | "
              "vs Lock/Unlock | vs Lock_all |")
        print("|---|---|---|---|---|---|---|")
        for op, label, locked, flushed, ours in rows:
            print(f"| {op} | {label} | {fmt(locked)} | {fmt(flushed)} | {fmt(ours)} | "
                  f"{ours / locked:.2f}x | {ours / flushed:.2f}x |")


def fmt(seconds):
    return f"{seconds * 1e6:.1f} µs" if seconds < 1e-3 else f"{seconds * 1e3:.2f} ms"


if __name__ == "__main__":
    main()
