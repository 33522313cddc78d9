"""Window (one-sided) ops of spec §4: create, put, get, accumulate, update, mutex, versions, p.

Memory model
------------
Each rank's window lives in MPI-allocated memory (``bluefog.engine.window``): a *self* region, one
buffer per in-neighbour, and the p, version and mutex arrays.  The tensor given to ``win_create``
stays the caller's own object with its own storage (it is registered, not moved), so every alias of
it -- ``p.data``, views into a flat parameter buffer -- keeps seeing what ``win_update`` writes into
it in place.  The self region is a *mirror* of that tensor, refreshed at ``win_create`` and at the
end of every ``win_update`` on the owner (what Bluefog 0.3.0 did for CUDA tensors): ``win_get``
reads the owner's value as of its last ``win_create`` / ``win_update``, never a half-computed
update.  Moving the tensor into window memory with ``set_`` was rejected: aliases made before
``win_create`` would silently stop sharing data with it, and views made after would dangle once
``win_free`` releases the memory.

Put, get and accumulate complete at the target before they return (their handle, when nonblocking)
without the target's help.  Blocking calls run on the caller's thread; nonblocking ones run in
order on one worker thread (window ops are never negotiated).  CUDA tensors are staged through host
memory.

Example::

    bf.win_create(x, name="x", zero_init=True)
    bf.win_accumulate(x, name="x", self_weight=0.5, dst_weights={o: 0.5 / n for o in outs},
                      require_mutex=True)
    x = bf.win_update_then_collect(name="x")
    bf.win_free("x")
"""

import functools
import hashlib
import logging
from typing import Dict, List, Optional

import numpy as np
import torch

from bluefog import context
from bluefog.context import neighbors
from bluefog.engine.handle import Handle
from bluefog.engine.kernels import scaled
from bluefog.engine.window import WINDOW_DTYPES, Window, Worker
from bluefog.ops.common import Submission, check_tensor, live_context, signature, synchronize
from bluefog.ops.window_sync import (UnknownWindowError, WindowLock, WindowMutex, lookup,
                                     win_update, win_update_then_collect)
from bluefog.timeline import tracer as timeline

logger = logging.getLogger("bluefog")
_worker = Worker()

__all__ = [
    "win_create", "win_free", "win_update", "win_update_then_collect", "win_put",
    "win_put_nonblocking", "win_get", "win_get_nonblocking", "win_accumulate",
    "win_accumulate_nonblocking", "neighbor_win_put", "neighbor_win_put_nonblocking",
    "neighbor_win_get", "neighbor_win_get_nonblocking", "neighbor_win_accumulate",
    "neighbor_win_accumulate_nonblocking", "win_wait", "win_poll", "win_mutex", "win_lock",
    "get_win_version", "get_current_created_window_names", "win_associated_p",
    "turn_on_win_ops_with_associated_p", "turn_off_win_ops_with_associated_p",
    "UnknownWindowError",
]


class Entry:
    """What ``ctx.windows`` holds for one name: the MPI window and the registered tensor."""

    __slots__ = ("name", "window", "tensor", "in_ranks", "out_ranks", "default_targets")

    def __init__(self, name: str, window: Window, tensor: torch.Tensor, in_ranks, out_ranks,
                 rank: int, size: int):
        self.name = name
        self.window = window
        self.tensor = tensor
        self.in_ranks = list(in_ranks)
        self.out_ranks = list(out_ranks)
        # put / accumulate go round the ring clockwise from self, to spread contention
        order = sorted(self.out_ranks, key=lambda r: (r - rank) % size)
        self.default_targets = [(r, 1.0) for r in order]


# ---------------------------------------------------------------------- create / free
def _signature_digest(sig: tuple) -> int:
    digest = hashlib.blake2b(repr(sig).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _agree(comm, name: str, sig: tuple, launch):
    """Kernel of the ``win_create.<name>`` op.  Negotiated, the engine already compared signatures;
    with negotiation skipped, compare them here so a mismatch is a ValueError on every rank."""
    if launch.dim0s is not None:
        return True
    mine = np.array([_signature_digest(sig)], dtype=np.int64)   # referenced until complete
    table = np.empty(comm.Get_size(), dtype=np.int64)
    yield [comm.Iallgather(mine, table)]
    if not bool((table == table[0]).all()):
        raise ValueError(f"win_create: ranks passed tensors of different shapes or dtypes for "
                         f"window '{name}' (this rank: shape {sig[3]}, {sig[1]} on {sig[2]}). "
                         "Every rank must create a window from a tensor of the same shape and "
                         "dtype.")
    return True


def win_create(tensor: torch.Tensor, name: str, zero_init: bool = False) -> bool:
    """Create window ``name`` for ``tensor`` on every rank (collective).

    Neighbour buffers start as copies of this rank's ``tensor`` (zeros with ``zero_init``).  Returns
    False, doing nothing, when this rank already has a window of that name.

    Raises:
        ValueError: unsupported tensor, or ranks passed different shapes or dtypes.

    Example::

        bf.win_create(torch.zeros(10), "w", zero_init=True)
    """
    ctx = live_context()
    check_tensor(tensor, WINDOW_DTYPES, "win_create")
    if not isinstance(name, str):
        raise TypeError(f"win_create: argument 'name' must be a str, got {type(name).__name__}.")
    if name in ctx.windows:
        return False
    if ctx.failed_ranks():
        raise RuntimeError(f"win_create: cannot create window '{name}' after ranks died "
                           f"({ctx.failed_ranks()}); in fault-tolerant mode create windows "
                           "before training starts (see docs/fault-tolerance.md).")
    sig = signature("win_create", tensor)
    comm = ctx.engine.data_comm
    synchronize(Submission("win_create", name).send(
        sig, lambda launch: _agree(comm, name, sig, launch), activity="WIN_CREATE"))
    rank = ctx.rank
    in_ranks, out_ranks = ctx.in_neighbors(), ctx.out_neighbors()
    remote = {t: neighbors(ctx.topology, t, incoming=True).index(rank) for t in out_ranks}
    try:
        window = Window(ctx.caller_comm, tuple(tensor.shape), tensor.dtype, in_ranks, remote,
                        ctx.settings.max_win_sent_length)
    except Exception as error:
        raise RuntimeError(f"Cannot allocate the MPI window for '{name}': {error}") from error
    with torch.no_grad():
        host = tensor.detach().cpu()
        window.self_tensor.copy_(host)
        for slot in window.slots.values():
            slot.zero_() if zero_init else slot.copy_(host)
    window.mutex[:] = 0
    window.version[:] = 0
    window.p[:] = 0.0
    window.p[rank] = 1.0
    window.sync()
    ctx.caller_comm.Barrier()   # nobody writes into a peer before the peer has initialised
    ctx.windows[name] = Entry(name, window, tensor, in_ranks, out_ranks, rank, ctx.size)
    return True


def win_free(name: Optional[str] = None) -> bool:
    """Free window ``name``, or every window when ``name`` is None (collective).  Returns True,
    also when there was nothing to free.

    Raises:
        KeyError: no window is called ``name``.
    """
    ctx = live_context()
    if name is None:
        names = sorted(ctx.windows)
    else:
        lookup(ctx, name)
        names = [name]
    if not names:
        return True
    _worker.drain()
    for key in names:
        entry = ctx.windows.pop(key)
        if ctx.failed_ranks():       # freeing is collective over every rank, the dead included
            entry.window.abandon()
        else:
            entry.window.free()
    return True


def get_current_created_window_names() -> List[str]:
    """Sorted names of the windows that exist on this rank."""
    return sorted(live_context().windows)


# ---------------------------------------------------------------------- put / accumulate / get
def _check_data(entry: Entry, tensor, op: str):
    window = entry.window
    if (isinstance(tensor, torch.Tensor) and tensor.dtype == window.dtype
            and tensor.numel() == window.numel and tensor.is_contiguous()):
        return
    check_tensor(tensor, WINDOW_DTYPES, op)
    raise ValueError(f"{op}: window '{entry.name}' holds {window.numel} elements of "
                     f"{window.dtype}; got a tensor of {tensor.numel()} elements of "
                     f"{tensor.dtype}.")


def _clockwise(pairs, rank: int, size: int):
    return sorted(pairs, key=lambda pair: (pair[0] - rank) % size)


def _weighted_ranks(weights, allowed: List[int], argument: str, side: str):
    if not isinstance(weights, dict):
        raise ValueError(f"Argument {argument} must be a dict {{rank: weight}}, "
                         f"got {type(weights).__name__}.")
    pairs = [(int(r), float(w)) for r, w in weights.items()]
    extra = sorted({r for r, _ in pairs} - set(allowed))
    if extra:
        raise ValueError(f"The keys of {argument} should only contain ranks that belong to "
                         f"{side}-neighbors ({allowed}); got {extra}.")
    return pairs


def _scale_(tensor: torch.Tensor, weight: float):
    with torch.no_grad():
        if tensor.is_floating_point():
            tensor.mul_(weight)
        else:
            tensor.copy_(scaled(tensor, weight))


def _send(op: str, tensor, name, self_weight, dst_weights, require_mutex: bool, wait: bool):
    """Validate on the caller, then move the data: right here when ``wait`` and the worker is
    idle (the common blocking call, kept lean), else as a job on the worker (a handle)."""
    ctx = context._context
    if ctx is None or ctx.suspended:
        ctx = live_context()               # raises the error
    entry = ctx.windows.get(name) if type(name) is str else None
    if entry is None:
        entry = lookup(ctx, name)          # raises the error
    window = entry.window
    if not (type(tensor) is torch.Tensor and tensor.dtype is window.dtype
            and tensor.numel() == window.numel and tensor.is_contiguous()):
        _check_data(entry, tensor, op)     # a subclass that passes, or raises the error
    dead = ctx.engine.ft is not None and ctx.failed_ranks()
    if (wait and dst_weights is None and self_weight is None and not require_mutex
            and not ctx.associated_p and not dead and _worker.idle() and timeline.TIMELINE is None
            and tensor.is_cpu):
        window.send(tensor, entry.default_targets, op == "win_accumulate", None, False, True)
        return True                        # the plainest call: the fewest steps
    if dst_weights is None:
        targets, reuse = entry.default_targets, True
    else:
        targets = _clockwise(_weighted_ranks(dst_weights, entry.out_ranks, "dst_weights", "out"),
                             ctx.rank, ctx.size)
        reuse = False
    if dead:                  # fault-tolerant mode: what is aimed at the dead is dropped
        targets, reuse = [(t, w) for t, w in targets if t not in dead], False
    host = tensor if tensor.is_cpu else tensor.detach().cpu()    # blocking copy at enqueue
    args = (entry, op, tensor, host, targets, reuse, self_weight, ctx.associated_p, require_mutex)
    if wait and timeline.TIMELINE is None and _worker.idle():
        return _move(*args)
    return _start(functools.partial(_move, *args), op, name, wait)


def _move(entry: Entry, op: str, tensor, host, targets, reuse: bool, self_weight,
          associated: bool, require_mutex: bool) -> bool:
    """The work of a put or accumulate (see :meth:`Window.send`), then the ``self_weight``."""
    window = entry.window
    if not window.open:
        raise ValueError(f"{op}: window '{entry.name}' was freed before the op ran.")
    p_self = float(window.p[window.rank]) if associated else None
    window.send(host, targets, op == "win_accumulate", p_self, require_mutex, reuse)
    weight = 1.0 if self_weight is None else float(self_weight)
    if weight != 1.0:
        _scale_(tensor, weight)
        if associated:
            window.p[window.rank] = p_self * weight
    return True


def _get(name, src_weights, require_mutex: bool, wait: bool):
    """Like :func:`_send`, for ``win_get``."""
    entry = lookup(live_context(), name)
    if src_weights is None:
        sources, weighted = entry.in_ranks, None
    else:
        weighted = _weighted_ranks(src_weights, entry.in_ranks, "src_weights", "in")
        sources = [source for source, _ in weighted]
    dead = live_context().failed_ranks()
    if dead:                  # fault-tolerant mode: the dead are not read
        sources = [source for source in sources if source not in dead]
        weighted = weighted and [(source, w) for source, w in weighted if source not in dead]
    args = (entry, sources, weighted, require_mutex)
    if wait and timeline.TIMELINE is None and _worker.idle():
        return _fetch(*args)
    return _start(functools.partial(_fetch, *args), "win_get", name, wait)


def _fetch(entry: Entry, sources, weighted, require_mutex: bool) -> bool:
    """The work of a get (see :meth:`Window.fetch`), then the weights other than 1."""
    window = entry.window
    if not window.open:
        raise ValueError(f"win_get: window '{entry.name}' was freed before the op ran.")
    window.fetch(sources, require_mutex)
    for source, weight in weighted or ():
        if weight != 1.0:
            _scale_(window.slots[source], weight)
    return True


_ACTIVITY = {"win_put": "WIN_PUT", "win_get": "WIN_GET", "win_accumulate": "WIN_ACCUMULATE"}


def _start(job, op: str, name: str, wait: bool):
    """Run ``job`` on the worker (a handle), or, with ``wait``, here when the worker is idle and
    else in order behind its jobs (True).  Traced on the timeline: ENQUEUE_/MPI_WIN_* spans."""
    if wait and _worker.idle():
        return timeline.traced(job, name, _ACTIVITY[op])()
    handle = _worker.submit(timeline.traced(job, name, _ACTIVITY[op]), f"{op}.{name}")
    return _worker.wait(handle) if wait else handle


def win_put_nonblocking(tensor, name, self_weight=None, dst_weights=None, require_mutex=False):
    """Nonblocking :func:`win_put`; returns a handle for :func:`win_wait`."""
    return _send("win_put", tensor, name, self_weight, dst_weights, require_mutex, wait=False)


def win_put(tensor, name, self_weight=None, dst_weights=None, require_mutex=False) -> bool:
    """Overwrite this rank's buffer on each destination with ``tensor * dst_weights[dst]``.

    ``dst_weights`` defaults to every out-neighbour with weight 1.0.  Afterwards ``tensor`` is
    scaled in place by ``self_weight`` (default 1.0).  Each put counts one version at its target.
    When this returns the data is at the targets, whatever they are doing.

    Raises:
        KeyError / ValueError: unknown window (:class:`UnknownWindowError` is both), a tensor that
            does not match the window, or destinations that are not out-neighbours.

    Example::

        bf.win_put(x, "x", self_weight=0.5, dst_weights={(bf.rank() + 1) % bf.size(): 0.5})
    """
    return _send("win_put", tensor, name, self_weight, dst_weights, require_mutex, True)


def win_accumulate_nonblocking(tensor, name, self_weight=None, dst_weights=None,
                               require_mutex=False):
    """Nonblocking :func:`win_accumulate`; returns a handle for :func:`win_wait`."""
    return _send("win_accumulate", tensor, name, self_weight, dst_weights, require_mutex,
                 wait=False)


def win_accumulate(tensor, name, self_weight=None, dst_weights=None, require_mutex=False) -> bool:
    """Add ``tensor * dst_weights[dst]`` into this rank's buffer on each destination (like
    :func:`win_put`, but summing, and without counting versions).

    Example::

        bf.win_accumulate(x, name="x", self_weight=0.5, dst_weights={o: 0.5 / k for o in outs},
                          require_mutex=True)
    """
    return _send("win_accumulate", tensor, name, self_weight, dst_weights, require_mutex, True)


def win_get_nonblocking(name, src_weights=None, require_mutex=False):
    """Nonblocking :func:`win_get`; returns a handle for :func:`win_wait`."""
    return _get(name, src_weights, require_mutex, wait=False)


def win_get(name, src_weights=None, require_mutex=False) -> bool:
    """Read each source's window tensor into this rank's buffer for it, scaled by
    ``src_weights[src]`` (default: every in-neighbour, weight 1.0); counts one version per source.

    Example::

        bf.win_get("x", src_weights={(bf.rank() - 1) % bf.size(): 1.0})
    """
    return _get(name, src_weights, require_mutex, wait=True)


neighbor_win_put = win_put
neighbor_win_put_nonblocking = win_put_nonblocking
neighbor_win_get = win_get
neighbor_win_get_nonblocking = win_get_nonblocking
neighbor_win_accumulate = win_accumulate
neighbor_win_accumulate_nonblocking = win_accumulate_nonblocking


def win_wait(handle) -> bool:
    """Block until the window op behind ``handle`` is done; True, or its error raised here.
    An unknown (or already waited) handle logs a warning and returns False."""
    if not isinstance(handle, Handle) or handle.worker is not _worker or handle.cleared:
        logger.warning("win_wait: handle %s was not created by a window op or has been cleared.",
                       handle)
        return False
    try:
        _worker.wait(handle)
    finally:
        handle.cleared = True
    return True


def win_poll(handle) -> bool:
    """True if the window op behind ``handle`` has finished (never blocks)."""
    if not isinstance(handle, Handle) or handle.worker is not _worker or handle.cleared:
        raise ValueError(f"Handle {handle} was not created or has been cleared.")
    return handle.done()


# ---------------------------------------------------------------------- mutex, versions, p
def win_mutex(name: str, for_self: bool = False, ranks: Optional[List[int]] = None) -> WindowMutex:
    """The window mutexes as a lock (a context manager, with ``acquire`` / ``release``).

    ``ranks`` defaults to the out-neighbours.  ``for_self=False`` takes, on each rank r of
    ``ranks``, the mutex guarding this rank's buffer there (what a writer to r needs);
    ``for_self=True`` takes this rank's own mutexes guarding the buffers of ``ranks`` (what a reader
    of its own buffers needs).  Not re-entrant.

    Example::

        with bf.win_mutex("x", for_self=True):
            x = bf.win_update("x")
    """
    ctx = live_context()
    entry = lookup(ctx, name)
    chosen = entry.out_ranks if ranks is None else [int(r) for r in ranks]
    for r in chosen:
        if not 0 <= r < ctx.size:
            raise ValueError(f"win_mutex: rank {r} is not in [0, {ctx.size}).")
    me = ctx.rank
    pairs = [(me, r) for r in chosen] if for_self else [(r, me) for r in chosen]
    return WindowMutex(entry.window, pairs)


def win_lock(name: str) -> WindowLock:
    """Exclusive access to this rank's own window memory (all of its mutexes) as a context manager.

    Raises:
        ValueError: no window is called ``name``.
    """
    ctx = live_context()
    entry = lookup(ctx, name)
    return WindowLock(entry.window, [(ctx.rank, r) for r in entry.in_ranks])


def get_win_version(name: str) -> Dict[int, int]:
    """``{in-neighbour: puts received from it + gets made from it since the last win_update}``."""
    ctx = live_context()
    return lookup(ctx, name).window.versions()


def win_associated_p(name: str) -> float:
    """This rank's push-sum weight p of window ``name`` (1.0 at creation)."""
    ctx = live_context()
    entry = lookup(ctx, name)
    entry.window.sync()
    return float(entry.window.p[ctx.rank])


def turn_on_win_ops_with_associated_p():
    """Make put, accumulate and update carry the push-sum weight p along with the data."""
    live_context().associated_p = True


def turn_off_win_ops_with_associated_p():
    """Stop carrying p (the default)."""
    live_context().associated_p = False
