"""Small helpers kept at their Bluefog 0.3.0 import path."""

import contextlib
import os


@contextlib.contextmanager
def env(**kwargs):
    """Set environment variables for the duration of a ``with`` block (None values are skipped).

    Example::

        with env(BLUEFOG_TIMELINE="./timeline"):
            bf.init()
    """
    saved = {key: os.environ.get(key) for key in kwargs}
    for key, value in kwargs.items():
        if value is not None:
            os.environ[key] = str(value)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
