"""CUDA tensors: allreduce and neighbor_allreduce time per call by size, with the route in use
(NCCL, or host staging over MPI), against floors measured in the same run.

Run where CUDA exists, e.g. ``bfrun -np 1 python benchmarks/bench_cuda.py`` (NCCL on one GPU),
``BLUEFOG_OPS_ON_CPU=1 bfrun -np 1 ...`` (staged) and ``bfrun -np 2 ...`` (two ranks sharing one
GPU: staged).  Floors: ``copy`` is a device-to-device copy of the tensor (what NCCL at one rank
must at least do), ``stage`` a device-to-host plus host-to-device copy (what staging must at least
do).  Each number is the median over repeats of the slowest rank, in milliseconds; ``GB/s`` is the
tensor's bytes over the op's time.
"""

import argparse
import json

import torch

import bluefog.torch as bf
from bluefog import context
from common import timed

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

    rows = []
    for n in SIZES:
        x = torch.rand(n, device=device)
        reps = args.repeats if n < (1 << 24) else max(5, args.repeats // 4)
        row = {"elements": n, "route": route, "ranks": bf.size()}
        row["copy_ms"] = 1e3 * timed(comm, synced(lambda: x.clone()), reps, warmup=2)
        row["stage_ms"] = 1e3 * timed(comm, synced(lambda: x.cpu().to(device)), reps, warmup=2)
        row["allreduce_ms"] = 1e3 * timed(comm, synced(lambda: bf.allreduce(x, name="ar")), reps,
                                          warmup=2)
        row["neighbor_allreduce_ms"] = 1e3 * timed(
            comm, synced(lambda: bf.neighbor_allreduce(x, name="nar")), reps, warmup=2)
        rows.append(row)
    if bf.rank() == 0:
        floor = "copy_ms" if route == "nccl" else "stage_ms"
        print(f"# {bf.size()} rank(s), route {route}{': ' + rt.reason if rt.reason else ''}; "
              f"ratios against {floor[:-3]}")
        print(f"{'elements':>10} {'copy ms':>9} {'stage ms':>9} {'allreduce ms':>13} {'GB/s':>7} "
              f"{'ratio':>6} {'nbr_allreduce ms':>17} {'GB/s':>7} {'ratio':>6}")
        for row in rows:
            nbytes = row["elements"] * 4
            ar, nar = row["allreduce_ms"], row["neighbor_allreduce_ms"]
            print(f"{row['elements']:>10} {row['copy_ms']:>9.3f} {row['stage_ms']:>9.3f} {ar:>13.3f} "
                  f"{nbytes / ar / 1e6:>7.2f} {ar / row[floor]:>6.2f} {nar:>17.3f} "
                  f"{nbytes / nar / 1e6:>7.2f} {nar / row[floor]:>6.2f}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
