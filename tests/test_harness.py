"""The test harness itself: a case hung inside an MPI call fails fast, with its stacks."""

import time

import pytest

import rank_runner
from harness import launch


@pytest.mark.timeout(180)
def test_a_case_hung_inside_mpi_is_reported_with_its_stack_soon():
    start = time.monotonic()
    results, output = launch("watchdog_cases.py", 2, timeout=150)
    took = time.monotonic() - start
    hung = results[0]["case_hangs_inside_mpi"]
    assert hung["status"] == "fail" and "case hung inside" in hung["error"], hung
    assert "Recv" in hung["error"], "the stack of the waiting call is missing"
    assert "case_after_the_hang" not in results[0], "the rank went on after the watchdog"
    assert took < 1 + rank_runner.WATCHDOG_GRACE + 60, took
