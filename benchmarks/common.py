"""Timing helpers shared by the benchmark scripts (run under ``bfrun``)."""

import random
import statistics
import time

import torch

import numpy as np


def slowest_median(comm, times) -> float:
    """Median over iterations of the slowest rank's time for that iteration."""
    return statistics.median(np.max(np.array(comm.allgather(list(times))), axis=0).tolist())


def timed(comm, fn, repeats: int, warmup: int = 0) -> float:
    """Run ``fn`` ``warmup`` times, then time it ``repeats`` times, each after a barrier."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        comm.Barrier()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return slowest_median(comm, times)


def timed_round_robin(comm, methods, repeats: int, seed: int = 2020) -> dict:
    """Median (slowest rank) seconds per call of each method, timed call by call in a fresh
    shuffled order every round (the same order on every rank), each call after a barrier: drift
    in the machine's speed hits every method alike.  A method is ``fn`` or ``(fn, before,
    after)``, where the untimed ``before`` / ``after`` run around the timed call."""
    plain = {name: m if isinstance(m, tuple) else (m, None, None) for name, m in methods.items()}
    for fn, before, after in plain.values():       # warm up
        if before:
            before()
        fn()
        if after:
            after()
    times = {name: [] for name in plain}
    order = sorted(plain)
    shuffle = random.Random(seed).shuffle
    for _ in range(repeats):
        shuffle(order)
        for name in order:
            fn, before, after = plain[name]
            if before:
                before()
            comm.Barrier()
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
            if after:
                after()
    return {name: slowest_median(comm, t) for name, t in times.items()}


def raw_neighbor_average(comm, x, ins, outs, slots):
    """The floor of a neighbor average in raw mpi4py: Irecv/Isend with the neighbors, then the
    same uniform average bluefog computes (``slots`` holds one preallocated row per in-neighbor),
    with the same arithmetic in numpy (cheaper per call than torch on small tensors, and numpy
    puts large results on huge pages, as bluefog does)."""
    from mpi4py import MPI
    requests = [comm.Irecv(slots[k].numpy(), source=r, tag=11) for k, r in enumerate(ins)]
    requests += [comm.Isend(x.numpy(), dest=r, tag=11) for r in outs]
    MPI.Request.Waitall(requests)
    rows = slots.numpy()
    out = np.add(x.numpy(), rows[0]) if len(ins) else x.numpy().copy()
    for k in range(1, len(ins)):
        np.add(out, rows[k], out=out)
    return torch.from_numpy(np.divide(out, len(ins) + 1, out=out))
