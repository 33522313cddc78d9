"""Scaling: total training samples/s at 1, 2 and 4 ranks for the same per-rank batch.

Run (it launches the ranks itself, through bfrun)::

    python benchmarks/bench_scaling.py

Each world size runs ``examples/pytorch_benchmark.py`` (synthetic data) once per optimizer; the
table shows total samples/s and the speed-up over one rank.  On this 2-core machine, 4 ranks share
2 cores, so the ideal speed-up is 2x, not 4x.
"""

import argparse
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.join(HERE, "..", "examples", "pytorch_benchmark.py")
TOTAL = re.compile(r"^(\S+)\s.*total on \d+ ranks:\s+([\d.]+)", re.M)


def run(size, optimizer, extra):
    cmd = [sys.executable, EXAMPLE, "--dist-optimizer", optimizer] + extra
    if size > 1:
        cmd = [sys.executable, "-m", "bluefog.run.run", "-np", str(size)] + cmd
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=True).stdout
    return float(TOTAL.search(out).group(2))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--optimizers", default="neighbor_allreduce,gradient_allreduce,allreduce")
    parser.add_argument("--sizes", default="1,2,4")
    parser.add_argument("--num-iters", default="5")
    parser.add_argument("--model", default="cnn", choices=("mlp", "cnn"))
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    for optimizer in args.optimizers.split(","):
        rates = [run(n, optimizer, ["--num-iters", args.num_iters, "--model", args.model])
                 for n in sizes]
        rows.append((optimizer, rates))
        print(f"measured {optimizer}", flush=True)
    print(f"\ntotal samples/s ({args.model}, batch 64 per rank, synthetic data)\n")
    print("| optimizer | " + " | ".join(f"{n} rank{'s' if n > 1 else ''}" for n in sizes)
          + " | speed-up at " + str(sizes[-1]) + " |")
    print("|---|" + "---|" * (len(sizes) + 1))
    for optimizer, rates in rows:
        print(f"| {optimizer} | " + " | ".join(f"{r:.0f}" for r in rates)
              + f" | {rates[-1] / rates[0]:.2f}x |")


if __name__ == "__main__":
    main()
