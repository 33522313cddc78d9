"""Distributed optimizers and parameter utilities at 1, 2 and 4 ranks (see tests/cases/optim_cases.py)."""

import pytest

from harness import case_params, case_result

CASES = "optim_cases.py"


@pytest.mark.parametrize("case,size", case_params(CASES))
def test_optim(case, size):
    case_result(CASES, case, size)
