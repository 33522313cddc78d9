"""CUDA tensors: allreduce and neighbor_allreduce time per call by size, with the route in use
(NCCL, or host staging over MPI), against floors measured in the same run.

Run where CUDA exists, e.g. ``bfrun -np 1 python benchmarks/bench_cuda.py`` (NCCL on one GPU),
``BLUEFOG_OPS_ON_CPU=1 bfrun -np 1 ...`` (staged) and ``bfrun -np 2 ...`` (two ranks sharing one
GPU: staged).  Floors: ``copy`` is a device-to-device copy of the tensor (what NCCL at one rank
must at least do), ``stage`` a device-to-host plus host-to-device copy through a preallocated pinned
buffer (what staging must at least do), ``pageable`` the same round trip as ``x.cpu().cuda()``, and
``mpi`` the op in raw mpi4py on a host buffer of the same size (``Allreduce``; for the neighbor op
``Isend``/``Irecv`` with the neighbors and the average).  Staged ops are compared with
``stage + mpi``.  Each number is the median over repeats of the slowest rank, in milliseconds; ``GB/s`` is the
tensor's bytes over the op's time.
"""

import argparse
import json

import torch

import bluefog.torch as bf
from bluefog import context
from common import raw_neighbor_average, timed

SIZES = [1 << 10, 1 << 16, 1 << 20, 1 << 24]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", help="also write the rows to this file (rank 0)")
    args = parser.parse_args()
    bf.init()
    comm = context.current().world
    device = torch.device("cuda", bf.local_rank() % torch.cuda.device_count())
    torch.cuda.set_device(device)
    bf.allreduce(torch.ones(1, device=device), name="warm")      # the one-time route decision
    rt = context.current().cuda
    route = "nccl" if rt.nccl else "staged"

    def synced(fn):
        def run():
            fn()
            torch.cuda.synchronize(device)
        return run

    from mpi4py import MPI
    ins, outs = bf.in_neighbor_ranks(), bf.out_neighbor_ranks()
    rows = []
    for n in SIZES:
        x = torch.rand(n, device=device)
        reps = args.repeats if n < (1 << 24) else max(5, args.repeats // 4)
        row = {"elements": n, "route": route, "ranks": bf.size()}
        row["copy_ms"] = 1e3 * timed(comm, synced(lambda: x.clone()), reps, warmup=2)
        pinned, back = torch.empty(n, pin_memory=True), torch.empty_like(x)
        row["stage_ms"] = 1e3 * timed(comm, synced(lambda: back.copy_(pinned.copy_(x))), reps,
                                      warmup=2)
        row["pageable_ms"] = 1e3 * timed(comm, synced(lambda: x.cpu().to(device)), reps, warmup=2)
        host = pinned.numpy()
        row["mpi_ms"] = 1e3 * timed(comm, lambda: comm.Allreduce(MPI.IN_PLACE, host, MPI.SUM), reps,
                                    warmup=2)
        slots = torch.empty(len(ins), n)
        hx = pinned.clone()
        row["nbr_mpi_ms"] = 1e3 * timed(
            comm, lambda: raw_neighbor_average(comm, hx, ins, outs, slots), reps, warmup=2)
        row["allreduce_ms"] = 1e3 * timed(comm, synced(lambda: bf.allreduce(x, name="ar")), reps,
                                          warmup=2)
        row["neighbor_allreduce_ms"] = 1e3 * timed(
            comm, synced(lambda: bf.neighbor_allreduce(x, name="nar")), reps, warmup=2)
        rows.append(row)
    if bf.rank() == 0:
        def floor(row, mpi_key):
            return row["copy_ms"] if route == "nccl" else row["stage_ms"] + row[mpi_key]
        print(f"# {bf.size()} rank(s), route {route}{': ' + rt.reason if rt.reason else ''}; "
              f"ratios against {'copy' if route == 'nccl' else 'stage + mpi'}; times in ms")
        print(f"{'elements':>10} {'copy':>7} {'stage':>7} {'pageable':>8} | {'mpi':>7} "
              f"{'allreduce':>9} {'GB/s':>6} {'ratio':>5} | {'mpi':>7} {'nbr_allreduce':>13} "
              f"{'GB/s':>6} {'ratio':>5}")
        for row in rows:
            nbytes = row["elements"] * 4
            ar, nar = row["allreduce_ms"], row["neighbor_allreduce_ms"]
            print(f"{row['elements']:>10} {row['copy_ms']:>7.3f} {row['stage_ms']:>7.3f} "
                  f"{row['pageable_ms']:>8.3f} | {row['mpi_ms']:>7.3f} {ar:>9.3f} "
                  f"{nbytes / ar / 1e6:>6.2f} {ar / floor(row, 'mpi_ms'):>5.2f} | "
                  f"{row['nbr_mpi_ms']:>7.3f} {nar:>13.3f} {nbytes / nar / 1e6:>6.2f} "
                  f"{nar / floor(row, 'nbr_mpi_ms'):>5.2f}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
