"""Waiting: for what a kernel in flight waits on, and politely, without starving the other ranks.

A kernel (a round too) is a generator that yields what it waits for, a list of MPI requests or,
for GPU work, a function that tells whether that work is done, and returns its output.
:func:`resume` moves a :class:`Running` kernel on once that is done; :func:`wait_any` blocks inside
MPI until something in flight can move.  Four ranks on two cores share the CPU: a thread that
spins on a test while a peer needs the core delays that peer, and so itself.  :class:`Backoff`
yields the CPU a few times, then sleeps with growing pauses.

Example::

    backoff = Backoff(longest=1e-3)
    while not request.Test():
        backoff.pause()
"""

import os
import time

from bluefog.engine.mpi import mpi

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


class Running:
    """A kernel in flight: the requests it serves (several when fused) and what it waits for."""

    __slots__ = ("requests", "kernel", "waiting")

    def __init__(self, requests, kernel):
        self.requests = requests
        self.kernel = kernel
        self.waiting: list = []


def complete(waiting) -> bool:
    """True once what a kernel yielded (MPI requests, or a test of GPU work) is done."""
    if not waiting:
        return True
    if callable(waiting):
        return waiting()
    return mpi().Request.Testall(waiting)


def resume(entry: Running) -> bool:
    """Resume ``entry``'s kernel once what it waits for is done (True; False while it waits): its
    output comes as ``StopIteration``, its failure as the exception."""
    if not complete(entry.waiting):
        return False
    entry.waiting = entry.kernel.send(None)
    return True


def wait_any(entries) -> bool:
    """Block inside MPI until a request of ``entries`` completes (all of them, when one entry
    waits): MPI then polls in C and yields, as a blocking MPI call does.  False, without waiting,
    when nothing waits on MPI requests or some entry waits on GPU work (which is polled)."""
    entries = [entry for entry in entries if entry.waiting]
    if not entries or any(callable(entry.waiting) for entry in entries):
        return False
    if len(entries) == 1:
        mpi().Request.Waitall(entries[0].waiting)
    else:
        mpi().Request.Waitany([req for entry in entries for req in entry.waiting])
    return True
