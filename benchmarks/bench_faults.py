"""Fault-tolerant mode: recovery time, cost in normal operation, and accuracy through a death.

Prints three tables (run alone on the machine: ``cpuslot bench python benchmarks/bench_faults.py``):

1. *Recovery*: a loop of 1K-float ``neighbor_allreduce`` calls; one rank records the time and
   SIGKILLs itself; every survivor records when its first op after the death completed.  The time
   from the death to that completion, median over the survivors, per job; several jobs at 4 and 8
   ranks.
2. *Cost*: median time of a blocking ``neighbor_allreduce`` (exponential graph, 4 ranks) at 1K, 1M
   and 16M floats, in normal mode and in fault-tolerant mode (ULFM + detector, no failure), the two
   jobs alternated ``--pairs`` times; the ratio of the medians of the per-job medians.
3. *Accuracy*: the digits model trained by AWC, ATC and gradient allreduce without a death and
   with deaths (tests/cases/fault_cases.py, scenario ``optimizers``).

Example::

    cpuslot bench python benchmarks/bench_faults.py --pairs 3 --deaths 3
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SIZES = {"1K": 1 << 10, "1M": 1 << 20, "16M": 16 << 20}


# ----------------------------------------------------------------------------- rank side
def rank_recovery(out_dir):
    import torch
    import bluefog.torch as bf
    bf.init()
    r, n = bf.rank(), bf.size()
    victim = n // 2
    x = torch.ones(1024)
    done = []
    for step in range(400):
        if step == 200 and r == victim:
            with open(os.path.join(out_dir, "death"), "w") as f:
                f.write(repr(time.time()))
            os.kill(os.getpid(), signal.SIGKILL)
        x = bf.neighbor_allreduce(x, name="x")
        done.append(time.time())
    with open(os.path.join(out_dir, f"rank{r}.json"), "w") as f:
        json.dump({"done": done, "failed": bf.failed_ranks()}, f)


def rank_cost(out_dir):
    import torch
    import bluefog.torch as bf
    bf.init()
    result = {}
    for label, numel in SIZES.items():
        x = torch.ones(numel)
        repeats = 200 if numel < 1e5 else (30 if numel < 1e7 else 8)
        for _ in range(3):
            bf.neighbor_allreduce(x, name=label)
        times = []
        for _ in range(repeats):
            bf.barrier()
            start = time.perf_counter()
            bf.neighbor_allreduce(x, name=label)
            times.append(time.perf_counter() - start)
        result[label] = statistics.median(times)
    if bf.rank() == 0:
        with open(os.path.join(out_dir, "cost.json"), "w") as f:
            json.dump(result, f)


# ----------------------------------------------------------------------------- driver side
def command(size, args, fault_tolerant):
    from bluefog.run.mpi_command import fault_tolerant_flags, find_launcher
    cmd = [find_launcher(), "-np", str(size), "--oversubscribe", "--bind-to", "none",
           "--mca", "mpi_yield_when_idle", "1", "--mca", "osc", "^ucx"]
    if os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    if fault_tolerant:
        cmd += fault_tolerant_flags({}) + ["-x", "BLUEFOG_FAULT_TOLERANT=1"]
    return cmd + ["-x", f"PYTHONPATH={ROOT}", sys.executable] + args


def run(size, args, fault_tolerant, timeout=600):
    env = dict(os.environ)
    env.pop("BLUEFOG_FAULT_TOLERANT", None)
    if os.geteuid() == 0:
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return subprocess.run(command(size, args, fault_tolerant), capture_output=True, text=True,
                          timeout=timeout, env=env)


def recovery(size):
    """(median delay over the survivors, survivors) of one job; None when the job did not run to
    the end (Open MPI's detector thread sometimes aborts a job: then it is counted as failed)."""
    out_dir = tempfile.mkdtemp(prefix="bf-bench-fault-")
    try:
        run(size, [__file__, "--rank", "recovery", out_dir], True, timeout=180)
    except subprocess.TimeoutExpired:
        return None
    if not os.path.exists(os.path.join(out_dir, "death")):
        return None
    with open(os.path.join(out_dir, "death")) as f:
        death = float(f.read())
    delays = []
    for r in range(size):
        path = os.path.join(out_dir, f"rank{r}.json")
        if os.path.exists(path):
            with open(path) as f:
                done = json.load(f)["done"]
            delays.append(min(t for t in done if t > death) - death)
    return statistics.median(delays), len(delays)


def cost(pairs):
    per_mode = {False: [], True: []}
    for _ in range(pairs):
        for ft in (False, True):
            for _attempt in range(2):     # (a job the detector's crash ended runs again)
                out_dir = tempfile.mkdtemp(prefix="bf-bench-fault-")
                try:
                    run(4, [__file__, "--rank", "cost", out_dir], ft, timeout=300)
                except subprocess.TimeoutExpired:
                    continue
                if os.path.exists(os.path.join(out_dir, "cost.json")):
                    with open(os.path.join(out_dir, "cost.json")) as f:
                        per_mode[ft].append(json.load(f))
                    break
    rows = []
    for label in SIZES:
        normal = [m[label] for m in per_mode[False]]
        tolerant = [m[label] for m in per_mode[True]]
        rows.append((label, normal[:len(tolerant)], tolerant[:len(normal)]))
    return rows


def accuracy():
    out_dir = tempfile.mkdtemp(prefix="bf-bench-fault-")
    run(4, [os.path.join(ROOT, "tests", "cases", "fault_cases.py"), "optimizers", out_dir], True)
    with open(os.path.join(out_dir, "rank0.json")) as f:
        return json.load(f)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", nargs=2, metavar=("ROLE", "OUT_DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--pairs", type=int, default=3, help="normal/fault-tolerant job pairs")
    parser.add_argument("--deaths", type=int, default=3, help="recovery jobs per size")
    parser.add_argument("--skip", nargs="*", default=[], choices=["recovery", "cost", "accuracy"])
    args = parser.parse_args()
    if args.rank:
        role, out_dir = args.rank
        return {"recovery": rank_recovery, "cost": rank_cost}[role](out_dir)
    if "recovery" not in args.skip:
        print("## Recovery: death -> survivors' next completed neighbor_allreduce (1K floats)")
        print("| ranks | median over jobs | range | jobs |")
        print("|---|---|---|---|")
        for size in (4, 8):
            outcomes = [recovery(size) for _ in range(args.deaths)]
            delays = [o[0] for o in outcomes if o is not None and o[1] == size - 1]
            broken = len(outcomes) - len(delays)
            if delays:
                print(f"| {size} | {1e3 * statistics.median(delays):.0f} ms | "
                      f"{1e3 * min(delays):.0f}-{1e3 * max(delays):.0f} ms | {len(delays)}"
                      f"{f' ({broken} more did not finish)' if broken else ''} |", flush=True)
            else:
                print(f"| {size} | - | - | 0 ({broken} did not finish) |", flush=True)
    if "cost" not in args.skip:
        print("\n## Cost: blocking neighbor_allreduce, 4 ranks, exponential graph, no failure")
        print("| size | normal (median of jobs) | fault-tolerant | ratio | per-job ratios |")
        print("|---|---|---|---|---|")
        for label, normal, tolerant in cost(args.pairs):
            ratios = [t / n for n, t in zip(normal, tolerant)]
            print(f"| {label} | {1e3 * statistics.median(normal):.3f} ms | "
                  f"{1e3 * statistics.median(tolerant):.3f} ms | "
                  f"{statistics.median(tolerant) / statistics.median(normal):.2f}x | "
                  f"{', '.join(f'{q:.2f}' for q in ratios)} |", flush=True)
    if "accuracy" not in args.skip:
        facts = accuracy()
        print("\n## Digits accuracy (4 ranks; rank 1 dies in AWC's run, rank 3 in ATC's)")
        print("| optimizer | no death | with deaths |")
        print("|---|---|---|")
        for label in ("awc", "atc", "gradient_allreduce"):
            print(f"| {label} | {100 * facts[label + '_clean']:.2f}% | "
                  f"{100 * facts[label + '_faulty']:.2f}% |")


if __name__ == "__main__":
    main()
