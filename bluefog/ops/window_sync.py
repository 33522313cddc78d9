"""The local side of windows: ``win_update`` (and ``win_update_then_collect``) and the mutex locks.

``win_update`` writes no remote memory (it reads the in-neighbours' put counts to clear the
versions, one-sided).  It makes remote writes visible (``Win_sync``), combines
the registered tensor with the neighbour buffers in place using the arithmetic shared with
``neighbor_allreduce`` (``bluefog.averaging``), mirrors p when associated-p is on, optionally
zeroes the buffers it used, clears every version counter and refreshes the window's self region.
``bluefog.ops.window`` re-exports everything public here.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import torch

from bluefog import averaging
from bluefog.engine.mpi import mpi
from bluefog.engine.window import Window
from bluefog.ops.common import check_float_weight, live_context
from bluefog.timeline import tracer


class UnknownWindowError(KeyError, ValueError):
    """No window has this name.  A ``KeyError`` (as for ``win_update`` / ``win_free`` in Bluefog)
    and a ``ValueError`` (as for ``win_lock``), so either ``except`` clause catches it."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""


def lookup(ctx, name):
    """The window entry called ``name``; :class:`UnknownWindowError` when there is none."""
    try:
        return ctx.windows[name]
    except (KeyError, TypeError):
        raise UnknownWindowError(
            f"Cannot find a window called {name!r}; create it with bf.win_create first "
            f"(existing: {sorted(ctx.windows)}).") from None


# ---------------------------------------------------------------------- update
def _plan(ctx, entry, self_weight, neighbor_weights):
    """(self_weight, {in-neighbour: weight}) or (None, None) for the uniform average."""
    if (self_weight is None) != (neighbor_weights is None):
        raise ValueError("Arguments self_weight and neighbor_weights have to be presented at the "
                         "same time")
    if self_weight is None:
        if not ctx.is_weighted:
            return None, None
        own, weights = ctx.recv_weights()
        return float(own), {j: float(weights.get(j, 0.0)) for j in entry.in_ranks}
    if not isinstance(neighbor_weights, dict):
        raise ValueError("Argument neighbor_weights has to be a dict {rank: weight}, got "
                         f"{type(neighbor_weights).__name__}.")
    check_float_weight(self_weight, "self_weight")
    weights = {int(j): float(w) for j, w in neighbor_weights.items()}
    extra = sorted(set(weights) - set(entry.in_ranks))
    if extra:
        raise ValueError("The key of weights should only contain the ranks that belong to "
                         f"in-neighbors and self rank: {extra} are not in-neighbors "
                         f"({entry.in_ranks}).")
    return float(self_weight), weights


def win_update(name: str, self_weight: Optional[float] = None,
               neighbor_weights: Optional[Dict[int, float]] = None, reset: bool = False,
               clone: bool = False, require_mutex: bool = False) -> torch.Tensor:
    """Combine this rank's window tensor with its neighbour buffers, in place (local only).

    Explicit weights give ``x <- self_weight * x + sum_j neighbor_weights[j] * buf[j]``; no weights
    give the topology's receive weights on a weighted topology, else the uniform average of x and
    every buffer.  ``reset`` then zeroes the buffers used (and their p entries); every version
    counter is cleared; ``require_mutex`` holds this rank's mutexes of those buffers throughout.

    Returns the tensor given to ``win_create`` (the very object), or a new tensor with ``clone``
    (the window tensor is then left unchanged).

    Raises:
        KeyError: unknown window.  ValueError: bad weights.  RuntimeError: MPI failed.

    Example::

        x = bf.win_update("x", self_weight=0.5, neighbor_weights={(bf.rank() - 1) % bf.size(): 0.5})
    """
    ctx = live_context()
    entry = lookup(ctx, name)
    own, weights = _plan(ctx, entry, self_weight, neighbor_weights)
    window, in_ranks = entry.window, entry.in_ranks
    used = in_ranks if weights is None else sorted(weights)
    work = entry.tensor.detach().clone() if clone else entry.tensor
    held: List[int] = []
    try:
        if require_mutex:
            for j in used:
                window.acquire(window.rank, j)
                held.append(j)
        window.sync()
        with torch.no_grad(), tracer.span(name, "WIN_SYNC_COMPUTE_AVERAGE"):
            host = work.detach() if work.is_cpu else work.detach().cpu()
            for j in ctx.failed_ranks():      # fault-tolerant mode: a dead in-neighbor's weight
                if j in window.slots:         # goes to this rank (its buffer holds our value)
                    window.slots[j].copy_(host)
                    window.p[j] = window.p[window.rank]
            slot_weights = None if weights is None else [weights.get(j, 0.0) for j in in_ranks]
            averaging.window_combine(host, [window.slots[j] for j in in_ranks], own,
                                     slot_weights, out=host)
            if ctx.associated_p and not clone:
                p = window.p
                p[window.rank] = averaging.associated_p(float(p[window.rank]),
                                                        [float(p[j]) for j in in_ranks], own,
                                                        slot_weights)
            if reset:
                for j in used:
                    window.slots[j].zero_()
                    window.p[j] = 0.0
            window.clear_versions()
            if not clone:
                window.self_tensor.copy_(host)
            if host.data_ptr() != work.data_ptr():
                work.copy_(host)
        window.sync()
    except mpi().Exception as error:
        raise RuntimeError(f"Cannot apply win_update on {name}: {error}") from error
    finally:
        for j in reversed(held):
            window.release(window.rank, j)
    return work


def win_update_then_collect(name: str, require_mutex: bool = True) -> torch.Tensor:
    """``x <- x + sum of every neighbour buffer``, then zero the buffers: the push-sum consumer.

    Example::

        x = bf.win_update_then_collect(name="x")
        estimate = x / bf.win_associated_p(name="x")
    """
    ctx = live_context()
    entry = lookup(ctx, name)
    return win_update(name, 1.0, {j: 1.0 for j in entry.in_ranks}, reset=True,
                      require_mutex=require_mutex)


# ---------------------------------------------------------------------- locks
class WindowMutex:
    """A set of window mutexes (``(rank, entry)`` pairs) held together, like ``threading.Lock``.

    Acquired in ascending order, so two holders of overlapping sets cannot deadlock.
    """

    def __init__(self, window: Window, pairs: Sequence[Tuple[int, int]]):
        self._window = window
        self._pairs = sorted(set(pairs))
        self._held: List[Tuple[int, int]] = []

    def acquire(self, blocking: bool = True) -> bool:
        """Take every mutex of the set; with ``blocking=False`` give up (holding none) if one is
        taken, returning False."""
        if self._held:
            raise RuntimeError("win_mutex is not re-entrant: release it before acquiring again.")
        window = self._window
        for target, index in self._pairs:
            if blocking:
                window.acquire(target, index)
            elif not window.try_acquire(target, index):
                self.release()
                return False
            self._held.append((target, index))
        return True

    def release(self):
        for target, index in reversed(self._held):
            self._window.release(target, index)
        self._held = []

    def locked(self) -> bool:
        return bool(self._held)

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
        return False


class WindowLock(WindowMutex):
    """This rank's own window memory, exclusively (every mutex guarding its buffers), with the
    memory synchronised on entry and exit."""

    def acquire(self, blocking: bool = True) -> bool:
        taken = super().acquire(blocking)
        if taken:
            self._window.sync()
        return taken

    def release(self):
        if self._held:
            self._window.sync()
        super().release()
