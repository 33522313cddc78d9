"""Every collective and neighbor op at 1, 2 and 4 ranks (see tests/cases/ops_cases.py)."""

import pytest

from harness import case_params, case_result

CASES = "ops_cases.py"


@pytest.mark.parametrize("case,size", case_params(CASES))
def test_ops(case, size):
    case_result(CASES, case, size)
