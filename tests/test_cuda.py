"""CUDA tensors through every op, windows and optimizers (tests/cases/cuda_cases.py), at 1, 2 and 4
ranks sharing this machine's GPUs.  Skipped (never passed) where CUDA is missing."""

import pytest
import torch

from harness import case_params, case_result

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CASES = "cuda_cases.py"


@pytest.mark.parametrize("case,size", case_params(CASES))
def test_cuda(case, size):
    case_result(CASES, case, size)


@pytest.mark.parametrize("case,size", case_params(CASES, sizes=(1,)))
def test_cuda_staged_by_switch(case, size):
    case_result(CASES, case, size, env={"BLUEFOG_OPS_ON_CPU": "1"})


@pytest.mark.parametrize("case,size", case_params("cuda_hierarchical_cases.py", sizes=(4,)))
def test_cuda_hierarchical(case, size):
    case_result("cuda_hierarchical_cases.py", case, size, env={"BLUEFOG_NODES_PER_MACHINE": "2"})
