"""Timing helpers shared by the benchmark scripts (run under ``bfrun``)."""

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
