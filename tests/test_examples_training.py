"""Smoke runs of the training examples at 2 ranks, as a user would start them (short settings)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bfrun(script, *args, size=2, timeout=300):
    cmd = [sys.executable, "-m", "bluefog.run.run", "-np", str(size), sys.executable,
           os.path.join(ROOT, "examples", script), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_optimization_example_reaches_the_exact_optimum():
    out = _bfrun("pytorch_optimization.py", "--max-iters", "2000", "--print-every", "1000")
    finals = [line for line in out.splitlines() if line.startswith("Final:")]
    assert len(finals) == 4 and all("reached" in line and "NOT" not in line for line in finals), out


def test_mnist_example_trains_with_push_sum():
    pytest.importorskip("sklearn")
    out = _bfrun("pytorch_mnist.py", "--dist-optimizer", "push_sum", "--epochs", "3")
    final = [line for line in out.splitlines() if line.startswith("Final:")]
    assert final, out
    accuracy = float(final[0].split("test accuracy")[1].split("%")[0])
    assert accuracy > 85.0, final


def test_benchmark_example_runs_every_optimizer():
    out = _bfrun("pytorch_benchmark.py", "--dist-optimizer", "all", "--num-iters", "2",
                 "--num-batches-per-iter", "2", "--num-warmup-batches", "1")
    for kind in ("allreduce", "neighbor_allreduce", "gradient_allreduce", "win_put", "push_sum"):
        assert any(line.startswith(kind + " ") for line in out.splitlines()), out
