"""Window ops at 1, 2 and 4 ranks (see tests/cases/win_cases.py)."""

import pytest

from harness import case_params, case_result

CASES = "win_cases.py"


@pytest.mark.parametrize("case,size", case_params(CASES))
def test_win(case, size):
    case_result(CASES, case, size)
