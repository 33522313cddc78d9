"""Asynchronous window optimizers with ranks at different speeds and step counts (see
tests/cases/async_optim_cases.py): push-sum mass conservation without a barrier, no waiting on a
slow or absent peer inside step(), and training with a straggler that stops early."""

import pytest

from harness import case_params, case_result

CASES = "async_optim_cases.py"


@pytest.mark.parametrize("case,size", case_params(CASES))
def test_async_optim(case, size):
    if "digits" in case or "straggler" in case:
        pytest.importorskip("sklearn")
    case_result(CASES, case, size)
