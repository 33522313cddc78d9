"""The process-wide timeline: switched on by ``bf.init()``, off (``TIMELINE is None``) otherwise.

Two audiences:

* bluefog's own code (engine, window ops, optimizers) records spans through :func:`span`,
  :func:`begin` and :func:`end`.  They never log and cost one ``is None`` test when the timeline is
  off.  The engine reads :data:`TIMELINE` directly in its hot path::

      tl = tracer.TIMELINE
      if tl is not None:
          tl.enqueued(request)

* users call the Bluefog 0.3.0 API :func:`timeline_start_activity`, :func:`timeline_end_activity`
  and :func:`timeline_context`, which return False (logging one error per process) when the
  timeline is off and False while ``bf.suspend()`` is in force.  Unlike 0.3.0, a refused call does
  not disable later calls.
"""

import atexit
import contextlib
import json
import logging
import os
import threading
from typing import Optional

from bluefog.timeline.writer import TimelineWriter

logger = logging.getLogger("bluefog")

TIMELINE: Optional[TimelineWriter] = None   # the running writer, or None when the timeline is off

_lock = threading.Lock()
_closed = {}            # path -> a writer this process closed, continued if started again
_atexit_done = False
_paused = False
_warned = False
_NOTHING = contextlib.nullcontext()

_OFF_MESSAGE = ("Cannot start activity in the timeline. Most common reason is you didn't turn on the "
                "timeline function. Use bfrun --timeline-filename file_name ... or set "
                "BLUEFOG_TIMELINE=file_name before bf.init()")


# ---------------------------------------------------------------------- switching on and off
def start(path: str) -> TimelineWriter:
    """Record into ``path`` (``bf.init()`` calls this with ``<BLUEFOG_TIMELINE><rank>.json``).

    Does nothing if a timeline is already running.  A file this process wrote and closed earlier
    (``bf.shutdown()`` then ``bf.init()``) is continued rather than truncated.
    """
    global TIMELINE, _atexit_done
    with _lock:
        if TIMELINE is not None:
            return TIMELINE
        writer = _closed.pop(os.path.abspath(path), None)
        if writer is None or not writer.reopen():
            writer = TimelineWriter(path)
        if not _atexit_done:
            atexit.register(stop)
            _atexit_done = True
        TIMELINE = writer
        return writer


def stop():
    """Close the running timeline, writing its closing ``]``.  Safe to call when off."""
    global TIMELINE
    with _lock:
        writer, TIMELINE = TIMELINE, None
        if writer is not None:
            writer.close()
            _closed[writer.path] = writer


def running() -> bool:
    """True while a timeline file is being written."""
    return TIMELINE is not None


def set_paused(paused: bool):
    """While paused (``bf.suspend()``), the user API refuses calls; bluefog's own spans go on."""
    global _paused
    _paused = bool(paused)


# ---------------------------------------------------------------------- bluefog's own spans
def begin(name: str, activity: str):
    """Open span ``activity`` on row ``name`` in the calling thread; returns a token for
    :func:`end` (None when off).  Never logs, never raises for an off timeline.

    Example::

        token = tracer.begin("conv1.weight", "GRADIENT COMPT.")
        ...
        tracer.end("conv1.weight", token)
    """
    tl = TIMELINE
    if tl is None:
        return None
    return tl.begin(name, activity)


def end(name: str, token=None):
    """Close the innermost span of row ``name``: on the thread ``token`` came from (the token
    :func:`begin` returned), or on the calling thread when ``token`` is None."""
    tl = TIMELINE
    if tl is not None:
        tl.end(name, token)


class _Span:
    __slots__ = ("writer", "name", "activity", "token")

    def __init__(self, writer, name, activity):
        self.writer, self.name, self.activity = writer, name, activity

    def __enter__(self):
        self.token = self.writer.begin(self.name, self.activity)
        return self

    def __exit__(self, *exc):
        self.writer.end(self.name, self.token)
        return False


def span(name: str, activity: str):
    """``with span("win.x", "MPI_WIN_PUT"): ...`` records the block; a shared no-op when off."""
    tl = TIMELINE
    if tl is None:
        return _NOTHING
    return _Span(tl, name, activity)


def traced(job, name: str, activity: str):
    """``job`` (a no-argument callable), recorded as ``ENQUEUE_<activity>`` from now until it
    returns (on this thread's row) and ``MPI_<activity>`` while it runs (on the row of the thread
    that runs it).  Returns ``job`` itself when the timeline is off.

    Example (window ops)::

        job = tracer.traced(job, name, "WIN_PUT")
        worker.submit(job, handle)
    """
    tl = TIMELINE
    if tl is None:
        return job
    token = tl.begin(name, "ENQUEUE_" + activity)

    def run():
        try:
            with _Span(tl, name, "MPI_" + activity):
                return job()
        finally:
            tl.end(name, token)

    return run


# ---------------------------------------------------------------------- the Bluefog 0.3.0 API
def _refuse() -> bool:
    global _warned
    if TIMELINE is None and not _warned:
        _warned = True
        logger.error(_OFF_MESSAGE)
    return False


def _check(value, argument: str, function: str):
    if not isinstance(value, str):
        raise TypeError(f"{function}: argument {argument} must be a str, got {type(value).__name__}.")


def timeline_start_activity(tensor_name: str, activity_name: str) -> bool:
    """Open a span named ``activity_name`` on the row ``tensor_name`` (in this thread).

    Returns True if recorded; False if the timeline is off (set ``BLUEFOG_TIMELINE`` before
    ``bf.init()``) or ``bf.suspend()`` is in force.

    Example::

        bf.timeline_start_activity("data", "LOAD_BATCH")
        batch = next(loader)
        bf.timeline_end_activity("data")
    """
    _check(tensor_name, "tensor_name", "timeline_start_activity")
    _check(activity_name, "activity_name", "timeline_start_activity")
    tl = TIMELINE
    if tl is None or _paused:
        return _refuse()
    tl.begin(tensor_name, activity_name)
    return True


def timeline_end_activity(tensor_name: str) -> bool:
    """Close the innermost open span of the row ``tensor_name`` opened by this thread.

    Returns True if recorded, False when the timeline is off or suspended.
    """
    _check(tensor_name, "tensor_name", "timeline_end_activity")
    tl = TIMELINE
    if tl is None or _paused:
        return _refuse()
    tl.end(tensor_name)
    return True


@contextlib.contextmanager
def timeline_context(tensor_name: str, activity_name: str):
    """Record the ``with`` block as one span.

    Example::

        with bf.timeline_context("model", "EVALUATE"):
            accuracy = evaluate(model)
    """
    started = timeline_start_activity(tensor_name, activity_name)
    try:
        yield
    finally:
        if started:
            timeline_end_activity(tensor_name)


# ---------------------------------------------------------------------- reading a file back
def load(path: str) -> list:
    """The events of a timeline file, finished (valid JSON) or still being written.

    Example::

        events = load("tl0.json")
        names = {e["name"] for e in events if e["ph"] == "B"}
    """
    with open(path) as handle:
        text = handle.read().rstrip()
    if not text.endswith("]"):
        text = text.rstrip(",") + "]"
    return json.loads(text)
