"""Timeline: a Chrome-trace file per rank of what every op, window op and optimizer phase did.

Switched on by ``BLUEFOG_TIMELINE=<prefix>`` (or ``bfrun --timeline-filename <prefix>``) at
``bf.init()``; each rank writes ``<prefix><rank>.json``.  See ``docs/timeline.md``.

Example::

    with bf.timeline_context("epoch", "EVALUATE"):
        evaluate(model)
"""

from bluefog.timeline.tracer import (begin, end, load, running, span, start, stop,
                                     timeline_context, timeline_end_activity,
                                     timeline_start_activity, traced)
from bluefog.timeline.writer import TimelineWriter

__all__ = ["timeline_start_activity", "timeline_end_activity", "timeline_context", "begin", "end",
           "span", "traced", "start", "stop", "running", "load", "TimelineWriter"]
