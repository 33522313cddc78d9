"""neighbor_allreduce and allreduce against the raw mpi4py floor.

Run (it launches the ranks itself, through bfrun)::

    python benchmarks/bench_ops.py                 # 4 ranks, 3 floor/bluefog pairs

The floor runs in its own processes, which never import bluefog, alternated with bluefog's
(``--pairs`` of each).  Floors: for neighbor_allreduce, ``Irecv``/``Isend`` with the exponential-2
neighbors plus the same uniform average (in numpy, as bluefog computes it); for allreduce,
``MPI_Allreduce`` on the numpy view.  Within a run the methods are timed call by call, round-robin
in a shuffled order, each call after a barrier; a call's time is the slowest rank's; a run reports
the median.  The table shows the median over runs (min–max) and the ratio of medians (with the
range of the per-pair ratios).
"""

import warnings

import torch

from common import (exponential_neighbors, raw_neighbor_average, ratio, run_benchmark,
                    side_parser, stat, timed_round_robin, write_result)

SIZES = {"1K": 1 << 10, "64K": 1 << 16, "1M": 1 << 20, "16M": 1 << 24}
REPEATS = {"1K": 300, "64K": 150, "1M": 40, "16M": 10}


def floor_methods(comm, label):
    n = SIZES[label]
    ins, outs = exponential_neighbors(comm.rank, comm.size)
    x, slots, result = torch.rand(n), torch.empty((len(ins), n)), torch.empty(n)
    return {f"{label} nar": lambda: raw_neighbor_average(comm, x, ins, outs, slots),
            f"{label} ar": lambda: comm.Allreduce(x.numpy(), result.numpy())}


def our_methods(comm, label):
    import bluefog.torch as bf
    n = SIZES[label]
    assert (bf.in_neighbor_ranks(), bf.out_neighbor_ranks()) == exponential_neighbors(bf.rank(),
                                                                                      bf.size())
    x = torch.rand(n)
    scratch = torch.rand(n)   # in place: its values grow to inf, which costs the same
    warnings.filterwarnings("ignore", "overflow", RuntimeWarning)      # (numpy says so)
    skip = (lambda: bf.neighbor_allreduce(x, name="bench.nar"),
            lambda: bf.set_skip_negotiate_stage(True),
            lambda: bf.set_skip_negotiate_stage(False))
    return {f"{label} nar": lambda: bf.neighbor_allreduce(x, name="bench.nar"),
            f"{label} nar unnamed": lambda: bf.neighbor_allreduce(x),
            f"{label} ar": lambda: bf.allreduce(x, average=False, name="bench.ar"),
            f"{label} ar unnamed": lambda: bf.allreduce(x, average=False),
            f"{label} ar_": lambda: bf.allreduce_(scratch, average=False, name="bench.ar_"),
            f"{label} skip nar": skip}


def measure(args):
    from mpi4py import MPI
    if args.side == "ours":
        import bluefog.torch as bf
        bf.init()
    comm = MPI.COMM_WORLD.Dup()
    make = our_methods if args.side == "ours" else floor_methods
    result = {}
    for label in args.sizes.split(","):
        repeats = max(3, int(REPEATS[label] * args.repeat_scale))
        result.update(timed_round_robin(comm, make(comm, label), repeats))
    write_result(comm, args.json, result, {"library": MPI.Get_library_version().split(",")[0]})


def report(args, runs):
    floor, ours = runs["floor"], runs["ours"]
    print(f"\n{args.np} ranks, float32, exponential-2 graph, {runs['meta']['library'].strip()}; "
          f"{args.pairs} runs of each side, alternated; per call: median over runs (min–max) of "
          "each run's median of the slowest rank. 'skip': neighbor_allreduce with "
          "set_skip_negotiate_stage(True); allreduce_ is in place.\n")
    print("| size | raw Isend/Irecv+avg | neighbor_allreduce | ratio | skip | ratio "
          "| raw MPI_Allreduce | allreduce | ratio | allreduce_ | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for label in args.sizes.split(","):
        fn, fa = stat(floor, f"{label} nar"), stat(floor, f"{label} ar")
        on, sn = stat(ours, f"{label} nar"), stat(ours, f"{label} skip nar")
        oa, ia = stat(ours, f"{label} ar"), stat(ours, f"{label} ar_")
        print(f"| {label} | {fn.text()} | {on.text()} | {ratio(on, fn)} | {sn.text()} "
              f"| {ratio(sn, fn)} | {fa.text()} | {oa.text()} | {ratio(oa, fa)} | {ia.text()} "
              f"| {ratio(ia, fa)} |")
    print("\nThe same ops without a name (a new internal name per call):\n")
    print("| size | neighbor_allreduce | ratio | allreduce | ratio |")
    print("|---|---|---|---|---|")
    for label in args.sizes.split(","):
        fn, fa = stat(floor, f"{label} nar"), stat(floor, f"{label} ar")
        un, ua = stat(ours, f"{label} nar unnamed"), stat(ours, f"{label} ar unnamed")
        print(f"| {label} | {un.text()} | {ratio(un, fn)} | {ua.text()} | {ratio(ua, fa)} |")


def main():
    parser = side_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1K,64K,1M,16M")
    parser.add_argument("--repeat-scale", type=float, default=1.0)
    run_benchmark(parser, __file__, measure, report)


if __name__ == "__main__":
    main()
