"""Failure records: how a dying rank tells ``bfrun`` that it was the root cause.

``bfrun`` creates a fresh directory per job and exports it to every rank as ``BLUEFOG_FAILURE_DIR``.
A rank that dies from an uncaught Python exception calls :func:`record_failure` (the runtime does this
from its excepthook) before aborting; the file ``<dir>/rank<N>.json`` then holds
``{"rank": N, "time": <unix time>, "error": "<type>: <message>"}``. After ``mpirun`` returns,
``bfrun`` reads the earliest record with :func:`first_failure` and names that rank.

Records written on a remote host land in that host's file system and are not seen by ``bfrun``;
the directory is never created here, so a missing directory simply means "do not record".

Example::

    try:
        train()
    except BaseException as exc:
        record_failure(rank, exc)
        raise
"""

import json
import os
import tempfile
import time

FAILURE_DIR_ENV = "BLUEFOG_FAILURE_DIR"

__all__ = ["FAILURE_DIR_ENV", "record_failure", "first_failure", "describe_exception"]


def describe_exception(exc: BaseException) -> str:
    """One line naming the exception type and its message, e.g. ``"ValueError: boom"``."""
    cls = type(exc)
    name = cls.__qualname__
    if cls.__module__ not in ("builtins", "__main__"):
        name = f"{cls.__module__}.{name}"
    try:
        message = " ".join(str(exc).split())
    except Exception:  # a broken __str__ must not stop the report
        message = "<unprintable message>"
    return f"{name}: {message}" if message else name


def record_failure(rank: int, exc: BaseException) -> None:
    """Write ``rank<N>.json`` into ``$BLUEFOG_FAILURE_DIR``, atomically; do nothing if unset.

    Never raises: it runs while the process is already going down.
    """
    try:
        directory = os.environ.get(FAILURE_DIR_ENV)
        if not directory or not os.path.isdir(directory):
            return
        record = {"rank": int(rank), "time": time.time(), "error": describe_exception(exc)}
        fd, tmp_path = tempfile.mkstemp(prefix=f".rank{int(rank)}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(record, handle)
            os.replace(tmp_path, os.path.join(directory, f"rank{int(rank)}.json"))
        except BaseException:
            try:
                os.unlink(tmp_path)
            except OSError:
                pass
            raise
    except BaseException:
        pass


def first_failure(directory) -> "dict | None":
    """The record with the earliest ``time`` in ``directory`` (ties: lowest rank), or ``None``.

    Unreadable or malformed files are skipped.
    """
    best = None
    try:
        names = os.listdir(directory)
    except OSError:
        return None
    for name in names:
        if not (name.startswith("rank") and name.endswith(".json")):
            continue
        try:
            with open(os.path.join(directory, name)) as handle:
                record = json.load(handle)
            key = (float(record["time"]), int(record["rank"]))
            str(record["error"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if best is None or key < best[0]:
            best = (key, record)
    return None if best is None else best[1]
