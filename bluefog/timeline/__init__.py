"""The timeline tracer's Python API.

The Chrome-trace writer is not part of this build yet: with the timeline off (as it always is here)
the first call logs one error and every call returns False, as Bluefog 0.3.0 does when
``BLUEFOG_TIMELINE`` is unset.
"""

import contextlib
import logging

logger = logging.getLogger("bluefog")
_warned = False


def _off() -> bool:
    global _warned
    if not _warned:
        _warned = True
        logger.error("Cannot start activity in the timeline. Most common reason is you didn't turn on "
                     "the timeline function. Use bfrun --timeline-filename file_name ... or set "
                     "BLUEFOG_TIMELINE=file_name")
    return False


def timeline_start_activity(tensor_name: str, activity_name: str) -> bool:
    """Open a span named ``activity_name`` on the row ``tensor_name``."""
    return _off()


def timeline_end_activity(tensor_name: str) -> bool:
    """Close the innermost open span on the row ``tensor_name``."""
    return _off()


@contextlib.contextmanager
def timeline_context(tensor_name: str, activity_name: str):
    """``with bf.timeline_context("x", "COMPUTE"): ...`` records the block as one span."""
    timeline_start_activity(tensor_name, activity_name)
    try:
        yield
    finally:
        timeline_end_activity(tensor_name)
