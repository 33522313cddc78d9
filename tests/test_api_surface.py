"""The public surface of the facades: ``__all__`` lists exactly what they export, and no public
op takes a private keyword."""

import inspect
import types

import pytest


@pytest.mark.parametrize("facade", ["bluefog.torch"])
def test_all_lists_every_public_name(facade):
    module = __import__(facade, fromlist=["__all__"])
    public = {name for name, value in vars(module).items()
              if not name.startswith("_") and not isinstance(value, types.ModuleType)}
    assert sorted(public - set(module.__all__)) == []
    assert sorted(set(module.__all__) - public) == []
    assert len(module.__all__) == len(set(module.__all__))


def test_no_public_function_takes_a_private_keyword():
    import bluefog.torch as bf
    leaks = []
    for name in bf.__all__:
        value = getattr(bf, name)
        if inspect.isfunction(value):
            leaks += [f"{name}({p})" for p in inspect.signature(value).parameters
                      if p.startswith("_")]
    assert leaks == []
