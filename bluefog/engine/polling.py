"""Polling politely: how the engine and the window lock wait without starving the other ranks.

Four ranks on two cores share the CPU: a thread that spins on a test while a peer needs the core
delays that peer, and so itself.  :class:`Backoff` yields the CPU a few times, then sleeps with
growing pauses.

Example::

    backoff = Backoff(longest=1e-3)
    while not request.Test():
        backoff.pause()
"""

import os
import time

CALLER_SPINS = 200     # sched_yield()s a waiting caller makes before it starts to sleep


class Backoff:
    """Poll politely: yield the CPU a few times, then sleep with growing pauses, at most ``brisk``
    for the first ``brisk_for`` seconds without progress and at most ``longest`` after that."""

    def __init__(self, longest: float = 1e-3, spins: int = 20, brisk: float = 1e-3,
                 brisk_for: float = 0.0):
        self.longest = longest
        self.spins = spins
        self.brisk = min(brisk, longest)
        self.brisk_for = brisk_for
        self.reset()

    def reset(self):
        self._spins = 0
        self._pause = 2e-5
        self._since = None

    def pause(self):
        if self._spins < self.spins:
            self._spins += 1
            os.sched_yield()
            return
        now = time.monotonic()
        if self._since is None:
            self._since = now
        time.sleep(self._pause)
        cap = self.brisk if now - self._since < self.brisk_for else self.longest
        self._pause = min(self._pause * 2, cap)


def wait_request(request) -> None:
    """Wait for one MPI request on the calling thread, politely (no busy spin past a short while)."""
    backoff = Backoff(spins=CALLER_SPINS)
    while not request.Test():
        backoff.pause()
