"""win_put / win_get / win_accumulate latency against the raw mpi4py RMA floor.

Run (it launches the ranks itself, through bfrun)::

    python benchmarks/bench_win.py                 # 4 ranks, 3 floor/bluefog pairs

The floor runs in its own processes, which never import bluefog, alternated with bluefog's
(``--pairs`` of each).  Each bluefog call moves the same data as its floor: ``win_put`` /
``win_accumulate`` write to every out-neighbour, ``win_get`` reads from every in-neighbour
(exponential-2 graph).  The floors use windows from ``MPI.Win.Allocate`` laid out like bluefog's
and the same target offsets:

* ``Lock/op/Unlock``: one passive-target epoch per neighbour (``Lock``, then ``Put``, ``Get`` or
  ``Accumulate``, then ``Unlock``);
* ``Lock_all+op+Flush``: one long epoch, as bluefog keeps it, with ``op`` + ``Flush`` per neighbour.

Rank 0 measures while the other ranks sleep in a polled barrier: a one-sided op must not need them.
Methods are timed call by call, round-robin in a shuffled order; a run reports medians; the table
shows the median over runs (min–max) and the ratio of medians.
"""

import random
import statistics
import time

import numpy as np
import torch

from common import Stat, exponential_neighbors, ratio, run_benchmark, side_parser, write_result

SIZES = {"1K": 1 << 10, "64K": 1 << 16, "1M": 1 << 20}
REPEATS = {"1K": 2000, "64K": 400, "1M": 150}


class Floor:
    """Raw RMA on windows laid out like bluefog's (``numel`` float32 of self, then one slot per
    in-neighbour): one used with a passive-target epoch per op, one kept in a ``Lock_all`` epoch
    (two windows, so both floors are timed round-robin with bluefog)."""

    def __init__(self, comm, x):
        from mpi4py import MPI

        def ins_of(r):
            return exponential_neighbors(r, comm.size)[0]

        numel = x.numel()
        self.ins, self.outs = exponential_neighbors(comm.rank, comm.size)
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
        self.spec = {r: (numel * (1 + ins_of(r).index(comm.rank)), numel, MPI.FLOAT)
                     for r in self.outs}
        self.spec.update({("get", r): (0, numel, MPI.FLOAT) for r in self.ins})

    def locked(self, op):
        from mpi4py import MPI
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
        from mpi4py import MPI
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


def timed_calls(methods, repeats):
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


def polite_wait(request):
    """Wait for ``request`` without spinning (the ranks that are not measuring sleep here)."""
    while not request.Test():
        time.sleep(1e-4)


def measure(args):
    from mpi4py import MPI
    if args.side == "ours":
        import bluefog.torch as bf
        bf.init()
        bf.set_skip_negotiate_stage(True)
    comm = MPI.COMM_WORLD.Dup()
    result = {}
    for label in args.sizes.split(","):
        numel = SIZES[label]
        repeats = max(5, int(REPEATS[label] * args.repeat_scale))
        x = torch.ones(numel)
        methods, floor = {}, None
        if args.side == "ours":
            assert (bf.in_neighbor_ranks(), bf.out_neighbor_ranks()) == exponential_neighbors(
                comm.rank, comm.size)
            bf.win_create(x, "bench")
            methods[f"{label} put"] = lambda: bf.win_put(x, "bench")
            methods[f"{label} get"] = lambda: bf.win_get("bench")
            methods[f"{label} accumulate"] = lambda: bf.win_accumulate(x, "bench")
        else:
            floor = Floor(comm, x)
            for op in ("put", "get", "accumulate"):
                methods[f"{label} {op} locked"] = floor.locked(op)
                methods[f"{label} {op} flushed"] = floor.flushed(op)
        polite_wait(comm.Ibarrier())
        if comm.rank == 0:
            if floor is not None:
                floor.flushed_win.Lock_all(MPI.MODE_NOCHECK)
            result.update(timed_calls(methods, repeats))
            if floor is not None:
                floor.flushed_win.Unlock_all()
        polite_wait(comm.Ibarrier())
        if floor is not None:
            floor.free()
        else:
            bf.win_free("bench")
    meta = {"library": MPI.Get_library_version().split(",")[0].strip(),
            "neighbors": [len(n) for n in exponential_neighbors(0, comm.size)]}
    write_result(comm, args.json, result, meta)


def report(args, runs):
    floor, ours = runs["floor"], runs["ours"]
    ins, outs = runs["meta"]["neighbors"]
    print(f"\n{args.np} ranks, float32, exponential-2 graph ({outs} out / {ins} in neighbours of "
          f"rank 0), {runs['meta']['library']}; {args.pairs} runs of each side, alternated; per "
          "call: median over runs (min–max) of each run's median\n")
    print("| op | size | raw Lock/op/Unlock | raw Lock_all+op+Flush | bluefog | "
          "vs Lock/Unlock | vs Lock_all |")
    print("|---|---|---|---|---|---|---|")
    for label in args.sizes.split(","):
        for op in ("put", "get", "accumulate"):
            locked = Stat(run[f"{label} {op} locked"] for run in floor)
            flushed = Stat(run[f"{label} {op} flushed"] for run in floor)
            mine = Stat(run[f"{label} {op}"] for run in ours)
            print(f"| {op} | {label} | {locked.text()} | {flushed.text()} | {mine.text()} | "
                  f"{ratio(mine, locked)} | {ratio(mine, flushed)} |")


def main():
    parser = side_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1K,1M")
    parser.add_argument("--repeat-scale", type=float, default=1.0)
    run_benchmark(parser, __file__, measure, report)


if __name__ == "__main__":
    main()
