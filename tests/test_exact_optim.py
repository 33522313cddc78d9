"""Gradient tracking, exact diffusion, push-DIGing, quasi-global momentum and periodic global
averaging at 1, 2 and 4 ranks (see tests/cases/exact_optim_cases.py)."""

import pytest

from harness import case_params, case_result

CASES = "exact_optim_cases.py"


@pytest.mark.parametrize("case,size", case_params(CASES))
def test_exact_optim(case, size):
    case_result(CASES, case, size)
