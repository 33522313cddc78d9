"""Every ``BLUEFOG_*`` environment variable, read in one place.

Each variable is a named constant below; :func:`read` returns the parsed values at the moment it is
called (``bf.init()`` calls it, so variables set from Python right before ``init`` take effect).
Unknown or malformed values raise ``ValueError`` naming the variable and what is allowed.
"""

import dataclasses
import logging
import os
from typing import Optional

LOG_LEVEL = "BLUEFOG_LOG_LEVEL"
LOG_HIDE_TIME = "BLUEFOG_LOG_HIDE_TIME"
TIMELINE = "BLUEFOG_TIMELINE"
FUSION_THRESHOLD = "BLUEFOG_FUSION_THRESHOLD"
CYCLE_TIME = "BLUEFOG_CYCLE_TIME"
MPI_THREAD_LEVEL = "BLUEFOG_MPI_THREAD_LEVEL"
NODES_PER_MACHINE = "BLUEFOG_NODES_PER_MACHINE"
OPS_ON_CPU = "BLUEFOG_OPS_ON_CPU"
MAX_WIN_SENT_LENGTH = "BLUEFOG_MAX_WIN_SENT_LENGTH"
START_TIMEOUT = "BLUEFOG_START_TIMEOUT"
OUTPUT_POOL_MB = "BLUEFOG_OUTPUT_POOL_MB"         # limit of the engine's one buffer pool
FAILURE_DIR = "BLUEFOG_FAILURE_DIR"
FAULT_TOLERANT = "BLUEFOG_FAULT_TOLERANT"       # 1 under `mpirun --with-ft ulfm` (bfrun --fault-tolerant)
FAILURE_TIMEOUT = "BLUEFOG_FAILURE_TIMEOUT"     # read by bfrun: seconds before a frozen rank is dead

# Per-op switches, read at every op: 1 sends that op's CUDA tensors over MPI (host staging), not NCCL.
BY_MPI = {
    "allreduce": "BLUEFOG_ALLREDUCE_BY_MPI", "allgather": "BLUEFOG_ALLGATHER_BY_MPI",
    "broadcast": "BLUEFOG_BROADCAST_BY_MPI", "neighbor_allreduce": "BLUEFOG_NEIGHBOR_ALLREDUCE_BY_MPI",
    "neighbor_allgather": "BLUEFOG_NEIGHBOR_ALLGATHER_BY_MPI",
}
# Bluefog 0.3.0 variables that have no effect here (windows always live in host memory and move
# over MPI): accepted silently, so that scripts setting them keep working.
WITHOUT_EFFECT = (
    "BLUEFOG_WIN_OPS_BY_MPI", "BLUEFOG_WIN_ON_GPU", "BLUEFOG_NUM_FINALIZER_THREADS",
    "BLUEFOG_SLEEP_USEC_FOR_WIN_PASSIVE",
)
KNOWN = (LOG_LEVEL, LOG_HIDE_TIME, TIMELINE, FUSION_THRESHOLD, CYCLE_TIME, MPI_THREAD_LEVEL,
         NODES_PER_MACHINE, OPS_ON_CPU, MAX_WIN_SENT_LENGTH, START_TIMEOUT, FAILURE_DIR,
         OUTPUT_POOL_MB, FAULT_TOLERANT, FAILURE_TIMEOUT) + tuple(BY_MPI.values()) + WITHOUT_EFFECT

LOG_LEVELS = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO,
              "warning": logging.WARNING, "error": logging.ERROR, "fatal": logging.CRITICAL}
THREAD_LEVELS = {0: "single", 1: "funneled", 2: "serialized", 3: "multiple"}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Parsed environment, as read by :func:`read`."""

    log_level: str = "warning"
    log_hide_time: bool = False
    timeline: Optional[str] = None
    fusion_threshold: int = 8 * 1024 * 1024
    cycle_time_ms: float = 0.5
    mpi_thread_level: str = "multiple"
    nodes_per_machine: Optional[int] = None
    ops_on_cpu: bool = False
    max_win_sent_length: int = 1 << 20
    output_pool_mb: int = 1024
    fault_tolerant: bool = False


def _number(name, cast, default, minimum):
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = cast(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a valid {cast.__name__}; unset it or give a number "
                         f">= {minimum}.") from None
    if value != value or value < minimum:   # NaN, or below the minimum
        raise ValueError(f"{name}={raw!r} must be >= {minimum}.")
    return value


def _flag(name):
    raw = os.environ.get(name, "").strip().lower()
    if raw in ("", "0", "false", "off", "no"):
        return False
    if raw in ("1", "true", "on", "yes"):
        return True
    raise ValueError(f"{name}={raw!r} is not a switch; use 1 or 0.")


def log_level(strict: bool = True) -> str:
    """The ``BLUEFOG_LOG_LEVEL`` value (default ``warning``); ``strict=False`` maps bad values to
    ``warning`` instead of raising."""
    raw = os.environ.get(LOG_LEVEL, "warning").strip().lower() or "warning"
    if raw not in LOG_LEVELS:
        if not strict:
            return "warning"
        raise ValueError(f"{LOG_LEVEL}={raw!r} is not a log level; use one of "
                         f"{', '.join(LOG_LEVELS)}.")
    return raw


def log_hide_time(strict: bool = True) -> bool:
    """``BLUEFOG_LOG_HIDE_TIME``: an integer; > 0 drops the timestamp from log lines."""
    try:
        return _number(LOG_HIDE_TIME, int, 0, 0) > 0
    except ValueError:
        if strict:
            raise
        return False


def mpi_thread_level() -> str:
    """mpi4py's name for the thread level requested at MPI initialisation.

    bluefog drives MPI from its progress thread and from the caller's thread (window ops), so it
    asks for ``multiple`` unless ``BLUEFOG_MPI_THREAD_LEVEL`` says otherwise.
    """
    level = _number(MPI_THREAD_LEVEL, int, 3, 0)
    if level not in THREAD_LEVELS:
        raise ValueError(f"{MPI_THREAD_LEVEL}={level} is not a thread level; use 0, 1, 2 or 3 "
                         "(single, funneled, serialized, multiple).")
    return THREAD_LEVELS[level]


def start_timeout() -> float:
    """``BLUEFOG_START_TIMEOUT``: seconds ``ibfrun`` waits for its engines (default 600)."""
    return _number(START_TIMEOUT, float, 600.0, 1.0)


def ops_on_cpu() -> bool:
    """``BLUEFOG_OPS_ON_CPU``, read now."""
    return _flag(OPS_ON_CPU)


def fault_tolerant() -> bool:
    """``BLUEFOG_FAULT_TOLERANT``, read now: survive dead ranks (needs an MPI with ULFM)."""
    return _flag(FAULT_TOLERANT)


def failure_timeout() -> Optional[float]:
    """``BLUEFOG_FAILURE_TIMEOUT``: seconds without a heartbeat before a rank counts as dead (None:
    the launcher's default)."""
    return _number(FAILURE_TIMEOUT, float, None, 0.1)


def by_mpi(op: str) -> bool:
    """``BLUEFOG_<OP>_BY_MPI`` for ``op`` (a key of :data:`BY_MPI`), read now."""
    return _flag(BY_MPI[op])


def unknown_names() -> list:
    """``BLUEFOG_*`` variables in the environment that bluefog does not know (likely typos)."""
    return sorted(name for name in os.environ
                  if name.startswith("BLUEFOG_") and name not in KNOWN)


def read() -> Settings:
    """Parse every variable now (``bf.init()`` calls it); raises ``ValueError`` on a bad value.

    Example::

        settings = read()
        settings.fusion_threshold  # 8388608 unless BLUEFOG_FUSION_THRESHOLD says otherwise
    """
    return Settings(
        log_level=log_level(),
        log_hide_time=log_hide_time(),
        timeline=os.environ.get(TIMELINE) or None,
        fusion_threshold=_number(FUSION_THRESHOLD, int, Settings.fusion_threshold, 0),
        cycle_time_ms=_number(CYCLE_TIME, float, Settings.cycle_time_ms, 0.0),
        mpi_thread_level=mpi_thread_level(),
        nodes_per_machine=_number(NODES_PER_MACHINE, int, None, 1),
        ops_on_cpu=ops_on_cpu(),
        max_win_sent_length=_number(MAX_WIN_SENT_LENGTH, int, Settings.max_win_sent_length, 1),
        output_pool_mb=_number(OUTPUT_POOL_MB, int, Settings.output_pool_mb, 0),
        fault_tolerant=fault_tolerant(),
    )
