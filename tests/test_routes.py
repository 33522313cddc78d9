"""The kernel routes (``kernels.MpiRoute``, ``cuda.DistRoute`` over gloo) on CPU tensors at 2 and 4
real ranks (tests/cases/routes_cases.py)."""

import pytest

from harness import case_params, case_result

CASES = "routes_cases.py"


@pytest.mark.parametrize("case,size", case_params(CASES, sizes=(2, 4)))
def test_routes(case, size):
    case_result(CASES, case, size)
