"""Runtime basics at 1, 2 and 4 ranks (tests/cases/basics_cases.py), plus what needs no MPI job."""

import subprocess
import sys

import pytest

from harness import case_params, case_result

CASES = "basics_cases.py"
HIER = "hierarchical_cases.py"


@pytest.mark.parametrize("case,size", case_params(CASES))
def test_basics(case, size):
    case_result(CASES, case, size)


@pytest.mark.parametrize("case,size", case_params(HIER))
def test_hierarchical(case, size):
    case_result(HIER, case, size, env={"BLUEFOG_NODES_PER_MACHINE": "2"})


def _python(code, **kwargs):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          **kwargs)


@pytest.mark.timeout(120)
def test_calls_before_init_raise_value_error():
    code = ("import bluefog.torch as bf, torch\n"
            "for call in (bf.size, bf.rank, lambda: bf.allreduce(torch.ones(1))):\n"
            "    try:\n        call()\n    except ValueError as e:\n"
            "        assert 'bf.init()' in str(e), e\n    else:\n        raise SystemExit('no error')\n"
            "import torch.distributed as dist\n"
            "assert bf.nccl_built() is (torch.cuda.is_available() and dist.is_nccl_available())\n"
            "assert bf.get_skip_negotiate_stage() is False\n"
            "print('ok')")
    proc = _python(code)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr


@pytest.mark.timeout(120)
def test_shutdown_fails_pending_and_init_again_works():
    code = ("import bluefog.torch as bf, torch\n"
            "bf.init()\n"
            "bf.shutdown()\n"
            "try:\n    bf.rank()\nexcept ValueError:\n    pass\nelse:\n    raise SystemExit('alive')\n"
            "bf.init()\n"
            "assert bf.allreduce(torch.ones(2)).tolist() == [1.0, 1.0]\n"
            "print('ok')")
    proc = _python(code)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr


@pytest.mark.timeout(120)
def test_a_rank_that_raises_ends_the_job_naming_it():
    code = ("import time, torch, bluefog.torch as bf\n"
            "bf.init()\n"
            "if bf.rank() == 2:\n    raise RuntimeError('rank two exploded')\n"
            "bf.allreduce(torch.ones(1))\n")
    proc = subprocess.run([sys.executable, "-m", "bluefog.run.run", "-np", "4", sys.executable, "-c",
                           code], capture_output=True, text=True, timeout=90)
    assert proc.returncode != 0
    assert "rank 2" in proc.stderr and "rank two exploded" in proc.stderr, proc.stderr[-3000:]
