"""Helpers shared by the case modules that ``rank_runner.py`` executes on every rank."""

import torch


def sizes(*allowed):
    """Run the decorated case only at these world sizes."""
    def mark(func):
        func.sizes = allowed
        return func
    return mark


def timeout(seconds):
    def mark(func):
        func.timeout = seconds
        return func
    return mark


def expect_error(kind, fragment, func, *args, **kwargs):
    """Call ``func`` and check it raises ``kind`` with ``fragment`` in its message."""
    try:
        func(*args, **kwargs)
    except kind as error:
        assert fragment in str(error), f"message {str(error)!r} lacks {fragment!r}"
        return error
    raise AssertionError(f"{getattr(func, '__name__', func)} did not raise {kind.__name__}")


def close(actual, expected, atol=1e-5):
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.allclose(actual.double(), expected.double(), atol=atol), (actual, expected)
