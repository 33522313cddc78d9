"""Fault-tolerant mode with real processes that SIGKILL themselves (cases in cases/fault_cases.py).

Each test starts one job under ULFM (``mpirun --with-ft ulfm`` with the failure detector, and
``BLUEFOG_FAULT_TOLERANT=1``), in which chosen ranks die; every survivor writes its facts, and the
test checks that every survivor finished, agrees on ``failed_ranks()`` and on the values.  The
job's exit status is not checked (the launcher's reporting is tested with bfrun).
"""

import os
import subprocess
import sys
import tempfile

import pytest

# bfrun --fault-tolerant's failure detector (shared memory + heartbeats: a death is seen in ~30 ms)
from bluefog.run.mpi_command import fault_tolerant_flags
from harness import run_and_collect

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = os.path.join(HERE, "cases", "fault_cases.py")


def _launcher():
    from bluefog.run.mpi_command import OPEN_MPI, find_launcher, identify_launcher
    try:
        launcher = identify_launcher(find_launcher())
    except Exception as error:  # no MPI launcher at all
        pytest.skip(f"no MPI launcher: {error}")
    if launcher.flavor != OPEN_MPI or (launcher.version and launcher.version[0] < 5):
        pytest.skip("fault-tolerant mode is tested with Open MPI 5 (ULFM)")
    return launcher.path


def _command(size, script_args, ulfm=True, forward=()):
    cmd = [_launcher(), "-np", str(size), "--oversubscribe", "--bind-to", "none",
           "--mca", "mpi_yield_when_idle", "1", "--mca", "osc", "^ucx"]
    if os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    if ulfm:
        cmd += fault_tolerant_flags({})
    for name in ("BLUEFOG_FAULT_TOLERANT", "PYTHONPATH", "FAULT_OPTIMIZER") + tuple(forward):
        cmd += ["-x", name]
    return cmd + [sys.executable] + script_args


# Open MPI 5's failure detector, when it ran in a thread of its own, now and then aborted a job
# with this message, with or without a failure, or a rank crashed (SIGSEGV) while MPI started; the
# detector now runs in MPI's progress engine (run/mpi_command.py), which removed the start-up
# crashes in 105 trial jobs.  A job ended so, where no rank got to write its facts, still runs
# again, up to twice.
DETECTOR_CRASH = "Send error after request freed"


def run_job(scenario, size, env=None, timeout=300):
    """Run ``scenario`` at ``size`` ranks; return ({rank: facts} of the survivors, output).  A job
    that the detector's known crash ended (``DETECTOR_CRASH``), or that ended before any rank
    wrote its facts, runs again (at most twice)."""
    facts, output = _run_once(scenario, size, env, timeout)
    for _ in range(2):
        if DETECTOR_CRASH not in output and facts:
            break
        facts, output = _run_once(scenario, size, env, timeout)
    return facts, output


def _run_once(scenario, size, env, timeout):
    out_dir = tempfile.mkdtemp(prefix="bf-fault-")
    full_env = dict(os.environ, BLUEFOG_FAULT_TOLERANT="1",
                    PYTHONPATH=os.pathsep.join([os.path.dirname(HERE),
                                                os.environ.get("PYTHONPATH", "")]),
                    FAULT_OPTIMIZER="")
    full_env.update(env or {})
    if full_env.get("OMPI_ALLOW_RUN_AS_ROOT") is None and os.geteuid() == 0:
        full_env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return run_and_collect(_command(size, [CASES, scenario, out_dir], forward=sorted(env or {})),
                           size, out_dir, full_env, timeout)


def survivors(scenario, size, dead, env=None):
    """Run the job and check that exactly the ranks not in ``dead`` finished, without errors, and
    agree that ``dead`` died; return their facts."""
    facts, output = run_job(scenario, size, env)
    live = [r for r in range(size) if r not in dead]
    problems = [f"rank {r}: {facts[r].get('error')}" for r in facts
                if facts[r].get("status") != "ok"]
    assert sorted(facts) == live and not problems, (
        f"finished: {sorted(facts)}, expected {live}\n" + "\n".join(problems)
        + f"\n--- job output ---\n{output}")
    for r in live:
        assert facts[r]["failed"] == sorted(dead), (r, facts[r]["failed"])
    return [facts[r] for r in live]


def same(values, tol=1e-6):
    return max(values) - min(values) <= tol


def test_collectives_go_on_over_survivors_after_a_death_at_4_ranks():
    facts = survivors("collectives", 4, dead=[2])
    for f in facts:
        assert f["live_count"] == 3.0                 # allreduce sums over the 3 survivors
        assert f["gathered_ranks"] == [0, 1, 3]       # allgather over the survivors
        assert f["x_spread"] < 1e-5                   # neighbor_allreduce reached consensus
        assert f["dead_root"].startswith("PeerFailureError: broadcast: root rank 2 has died")
        got, want = f["default_weights"]
        assert abs(got - want) < 1e-9, f
        got, want = f["explicit_weights"]
        assert abs(got - want) < 1e-9, f
    assert same([f["x"] for f in facts])
    assert 0.0 < facts[0]["x"] < 3.0


def test_a_rank_idle_longer_than_the_failure_timeout_is_not_declared_dead():
    facts = survivors("idle", 4, dead=[], env={"BLUEFOG_FAILURE_TIMEOUT": "2"})
    assert all(f["counts"] == [4.0, 4.0] for f in facts), facts


def test_dynamic_one_peer_with_two_deaths_one_during_recovery_at_8_ranks():
    facts = survivors("dynamic", 8, dead=[3, 6])
    for f in facts:
        assert f["live_count"] == 6.0
        assert f["x_spread"] < 1e-4
    assert same([f["x"] for f in facts], 1e-4)
    assert 0.0 < facts[0]["x"] < 7.0


def test_optimizers_keep_training_when_ranks_die():
    facts = survivors("optimizers", 4, dead=[1, 3])
    for f in facts:
        for label in ("awc", "atc", "gradient_allreduce"):
            assert f[f"{label}_clean"] > 0.85, f
            assert f[f"{label}_faulty"] >= f[f"{label}_clean"] - 0.02, (label, f)


def test_window_ops_skip_the_dead_and_reach_consensus():
    facts = survivors("windows", 4, dead=[1])
    for f in facts:
        assert f["failed_seen"] == [1]
        assert f["x_spread"] < 1e-4
    assert 0.0 < facts[0]["x"] < 3.0


@pytest.mark.parametrize("optimizer", ["win_put", "push_sum", "pull_get"])
def test_window_optimizers_keep_training_when_a_rank_dies(optimizer):
    facts = survivors("window_optimizer", 4, dead=[2], env={"FAULT_OPTIMIZER": optimizer})
    for f in facts:
        assert f["clean"] > 0.85, f
        assert f["faulty"] >= f["clean"] - 0.02, f


def test_fault_tolerant_mode_without_ulfm_is_a_clear_error():
    script = "import bluefog.torch as bf; bf.init()"
    env = dict(os.environ, BLUEFOG_FAULT_TOLERANT="1",
               PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]),
               FAULT_OPTIMIZER="")
    if os.geteuid() == 0:
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    proc = subprocess.run(_command(2, ["-c", script], ulfm=False), capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode != 0
    assert "was not started with ULFM on" in proc.stdout + proc.stderr


def test_failed_ranks_is_empty_without_fault_tolerance():
    script = ("import bluefog.torch as bf; bf.init(); assert bf.failed_ranks() == [], "
              "bf.failed_ranks(); print('ok')")
    env = {k: v for k, v in os.environ.items() if k != "BLUEFOG_FAULT_TOLERANT"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr
