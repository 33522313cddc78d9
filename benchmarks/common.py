"""Timing helpers shared by the benchmark scripts.  Nothing here imports bluefog: the floors run
in processes that never load it.

Every benchmark script is both a driver and a rank program.  Run plainly
(``python benchmarks/bench_ops.py``) it launches, through ``bfrun``, the floor side (a process that
never imports bluefog) and bluefog's side alternately, ``--pairs`` times each, and prints medians,
spread and ratios.  Each side measures its methods round-robin and writes ``{method: seconds}`` to
a JSON file on rank 0.
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time

import numpy as np
import torch


# ----------------------------------------------------------------------------------- rank side
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


def exponential_neighbors(rank: int, size: int):
    """In- and out-neighbors of ``rank`` in the exponential-2 graph (bluefog's default topology),
    computed without bluefog: out to ``rank + 2**k``, in from ``rank - 2**k``, for ``2**k < size``."""
    steps = [1 << k for k in range(size.bit_length()) if (1 << k) < size]
    ins = sorted({(rank - s) % size for s in steps} - {rank})
    outs = sorted({(rank + s) % size for s in steps} - {rank})
    return ins, outs


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


def write_result(comm, path: str, result: dict, meta: dict = None):
    """Rank 0 writes ``{"times": result, "meta": meta}`` to ``path``."""
    if comm.rank == 0:
        with open(path, "w") as f:
            json.dump({"times": result, "meta": meta or {}}, f)


# ----------------------------------------------------------------------------------- driver side
def side_parser(description: str) -> argparse.ArgumentParser:
    """Arguments every benchmark takes: the driver's (``--np``, ``--pairs``) and the internal
    ``--side`` / ``--json`` a rank program is started with."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--np", type=int, default=4, help="ranks")
    parser.add_argument("--pairs", type=int, default=3, help="alternating floor/bluefog pairs")
    parser.add_argument("--side", choices=("floor", "ours"), help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    return parser


def run_benchmark(parser: argparse.ArgumentParser, script: str, measure, report):
    """The entry point of a benchmark script: under ``--side`` measure one side on this rank;
    otherwise drive (alternate the two sides, passing on every option but ``--np`` / ``--pairs``)
    and ``report(args, runs)``."""
    args = parser.parse_args()
    if args.side:
        measure(args)
        return
    passed = _without(sys.argv[1:], ("--np", "--pairs", "--json"))
    report(args, alternate(script, passed, args.np, args.pairs))


def alternate(script: str, argv, size: int, pairs: int, verbose: bool = True):
    """Run ``script`` as the floor side and as bluefog's side, alternately, ``pairs`` times each
    (floor first in odd pairs, ours first in even ones) under ``bfrun -np size``.  Returns
    ``{"floor": [times, ...], "ours": [times, ...], "meta": meta}``, one ``times`` dict a run."""
    out = {"floor": [], "ours": [], "meta": {}}
    for pair in range(pairs):
        order = ("floor", "ours") if pair % 2 == 0 else ("ours", "floor")
        for side in order:
            path = os.path.join(os.environ.get("TMPDIR", "/tmp"),
                                f"bench-{os.getpid()}-{side}-{pair}.json")
            cmd = [sys.executable, "-m", "bluefog.run.run", "-np", str(size), sys.executable,
                   script, "--side", side, "--json", path] + list(argv)
            started = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            with open(path) as f:
                got = json.load(f)
            os.remove(path)
            out[side].append(got["times"])
            out["meta"].update(got["meta"])
            if verbose:
                print(f"pair {pair + 1}/{pairs}: {side} side done in "
                      f"{time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return out


class Stat:
    """Median and spread (min–max) of one method's per-run times."""

    def __init__(self, values):
        self.values = list(values)
        self.median = statistics.median(self.values)

    def text(self) -> str:
        """``median (min–max)`` in one unit: µs below a millisecond, else ms."""
        scale, unit = (1e6, "µs") if self.median < 1e-3 else (1e3, "ms")
        lo, hi = min(self.values) * scale, max(self.values) * scale
        return f"{_digits(self.median * scale)} {unit} ({_digits(lo)}–{_digits(hi)})"


def _digits(value: float) -> str:
    """Three significant digits, never in exponent form."""
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def stat(runs, method) -> Stat:
    return Stat(run[method] for run in runs)


def ratio(ours: Stat, floor: Stat) -> str:
    """Ratio of medians, with the range of the per-pair ratios."""
    pairs = [o / f for o, f in zip(ours.values, floor.values)]
    return f"{ours.median / floor.median:.2f}x ({min(pairs):.2f}–{max(pairs):.2f})"


def _without(argv, options):
    """``argv`` less the driver's own ``options`` (as ``--name value`` or ``--name=value``)."""
    kept, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token in options:
            skip = True
        elif not token.startswith(tuple(option + "=" for option in options)):
            kept.append(token)
    return kept
