"""Handles: the Future-like objects that nonblocking ops (and window ops) return."""

import itertools
from typing import Any, Optional

_ids = itertools.count(1)


class Handle:
    """The pending result of one op.

    ``bf.synchronize(handle)`` waits for it and returns the output tensor; ``bf.poll(handle)`` tells
    whether it is done.  ``int(handle)`` is its process-wide number (starting at 1).  A window op's
    handle has the window ``worker`` that runs it, which numbers its handles apart, as in Bluefog
    (``bf.win_wait``, ``bf.win_poll``).

    Example::

        h = bf.allreduce_nonblocking(x)
        ...            # compute while the engine communicates
        y = bf.synchronize(h)
    """

    __slots__ = ("id", "name", "output", "worker", "_done", "_error", "cleared", "convert")

    def __init__(self, name: str, output: Any = None, worker=None):
        self.id = next(_ids if worker is None else worker.numbers)
        self.name = name
        self.worker = worker
        self.output = output
        self._done = False      # set once by the engine; waiters poll it while driving
        self._error: Optional[BaseException] = None
        self.cleared = False
        self.convert = None     # applied once to the output by the caller (CUDA: back to the device)

    def __int__(self):
        return self.id

    def __index__(self):
        return self.id

    def __repr__(self):
        state = "done" if self.done() else "pending"
        return f"<bluefog Handle {self.id} {self.name!r} {state}>"

    def done(self) -> bool:
        return self._done

    def set_result(self, output: Any) -> None:
        if output is not None:
            self.output = output
        self._done = True

    def set_error(self, error: BaseException) -> None:
        self._error = error
        self._done = True

    def result(self) -> Any:
        """The output, or the op's error raised here.  Call only when :meth:`done`."""
        if self._error is not None:
            raise self._error
        if self.convert is not None:
            self.output, self.convert = self.convert(self.output), None
        return self.output
