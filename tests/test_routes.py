"""The kernel routes (``kernels.MpiRoute``, ``cuda.DistRoute`` over gloo) on CPU tensors at 2 and 4
real ranks (tests/cases/routes_cases.py)."""

import pytest

from harness import case_params, case_result

CASES = "routes_cases.py"


@pytest.mark.parametrize("case,size", case_params(CASES, sizes=(2, 4)))
def test_routes(case, size):
    case_result(CASES, case, size)


def test_every_route_has_the_same_kernels():
    """``kernels.ROUTE_METHODS`` on both routes, with the same parameters (names, defaults)."""
    import inspect

    from bluefog.engine import cuda, kernels

    def parameters(route, name):
        return [(p.name, p.default) for p in inspect.signature(getattr(route, name)).parameters.values()]

    for name in kernels.ROUTE_METHODS:
        assert parameters(cuda.DistRoute, name) == parameters(kernels.MpiRoute, name), name
    assert kernels.MpiRoute.by_mpi and not cuda.DistRoute.by_mpi
