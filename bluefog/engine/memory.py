"""The memory the engine keeps: one pool of host buffers, and bounded caches.

**The buffer pool.**  A fresh multi-megabyte tensor pays a page fault per 4 KB page when first
written (an out-of-place 1M allreduce spent as long in page faults as in MPI), so every CPU buffer
the engine makes of ``POOL_BYTES`` or more -- op outputs and kernels' receive buffers alike -- comes
from :func:`empty`, a view of a block kept here:

* when the last tensor using a block is dropped, the block comes back by itself (nobody gives it
  back, so nobody can give it back too early) for the next buffer of that many bytes;
* the one limit: at most ``PER_SIZE`` idle blocks of a size and ``BLUEFOG_OUTPUT_POOL_MB``
  (``LIMIT_BYTES`` unless set, read at ``bf.init()``) idle bytes in all; 0 turns the pool off;
* new blocks are advised ``MADV_HUGEPAGE`` (one fault per 2 MB where transparent huge pages are
  ``always`` or ``madvise``).

A pooled tensor cannot be resized (``resize_``), as any tensor made by ``torch.from_numpy``.

**Bounded caches.**  :class:`BoundedCache`, a dict emptied when full: the rule of the engine's
lookup caches, whose keys repeat in a training loop but must not grow without end.

Example::

    output = empty_like(tensor)      # what torch.empty_like gives, cheaper to fill when large
    slots = empty((2,) + tuple(tensor.shape), tensor.dtype)   # dropped when done: back to the pool
"""

import ctypes
import math
import sys
import threading
import weakref
from typing import Dict, List, Tuple

import numpy as np
import torch

from bluefog import config

HUGE_PAGE = 2 << 20
POOL_BYTES = 64 << 10
LIMIT_BYTES = config.Settings.output_pool_mb << 20     # BLUEFOG_OUTPUT_POOL_MB unless set
PER_SIZE = 4
ALIGN = 64             # block start, as torch's own CPU allocator (numpy's gives 16)
_MADV_HUGEPAGE = 14
NUMPY_DTYPES = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64,
          torch.int8: np.int8, torch.int16: np.int16, torch.int32: np.int32, torch.int64: np.int64,
          torch.uint8: np.uint8, torch.bool: np.bool_}   # torch dtype -> numpy's (if any)


def _madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise


_advise = _madvise()


def _aligned_span(address: int, nbytes: int) -> Tuple[int, int]:
    start = (address + HUGE_PAGE - 1) // HUGE_PAGE * HUGE_PAGE
    return start, (address + nbytes) // HUGE_PAGE * HUGE_PAGE


def prefer_huge_pages(address: int, nbytes: int) -> None:
    """Ask for huge pages under the whole 2 MB pages of fresh (untouched) memory."""
    if _advise is None:
        return
    start, end = _aligned_span(address, nbytes)
    if end > start:
        _advise(start, end - start, _MADV_HUGEPAGE)     # advice: failure changes nothing


class BufferPool:
    """Blocks of host memory handed out as tensors, taken back when the last tensor using one is
    dropped, and kept (at most ``per_size`` idle blocks of a size, ``limit`` idle bytes in all) for
    the next tensor of the same number of bytes.  ``held``: the idle bytes kept now; ``made``:
    how many blocks were allocated so far (a steady loop stops adding to it)."""

    def __init__(self, limit_bytes: int = LIMIT_BYTES, per_size: int = PER_SIZE):
        self.limit = limit_bytes
        self.per_size = per_size
        self.held = 0
        self.made = 0
        self._free: Dict[int, List[np.ndarray]] = {}
        # re-entrant: a garbage collection inside _give can drop another pooled tensor, whose
        # finalizer calls _give again on this thread
        self._lock = threading.RLock()

    def tensor(self, shape, dtype: torch.dtype) -> torch.Tensor:
        """A new (uninitialised) contiguous CPU tensor of ``shape`` and ``dtype`` on a block."""
        nbytes = math.prod(shape) * dtype.itemsize
        with self._lock:
            stack = self._free.get(nbytes)
            block = stack.pop() if stack else None
            if block is not None:
                self.held -= nbytes
            else:
                self.made += 1
        if block is None:
            raw = np.empty(nbytes + ALIGN, dtype=np.uint8)
            start = -raw.ctypes.data % ALIGN
            block = raw[start:start + nbytes]
            prefer_huge_pages(block.ctypes.data, nbytes)
        # The tensor's storage keeps ``lent`` (a fresh numpy view of the block) alive, and every
        # view of the tensor shares that storage: ``lent`` dies, and the block returns, with the
        # last one.  (Typed in numpy when numpy has the dtype: half the cost of a torch view.)
        kind = NUMPY_DTYPES.get(dtype)
        lent = block.view(kind).reshape(shape) if kind is not None else block[:]
        weakref.finalize(lent, self._give, block).atexit = False
        if kind is not None:
            return torch.from_numpy(lent)
        return torch.from_numpy(lent).view(dtype).view(shape)

    def _give(self, block: np.ndarray) -> None:
        nbytes = block.nbytes
        with self._lock:
            stack = self._free.setdefault(nbytes, [])
            if len(stack) < self.per_size and self.held + nbytes <= self.limit:
                stack.append(block)
                self.held += nbytes


pool = BufferPool()


def empty(shape, dtype: torch.dtype) -> torch.Tensor:
    """``torch.empty(shape, dtype=dtype)`` (CPU), from the pool when large and the pool is on."""
    shape = tuple(map(int, shape))     # (math.prod: np.prod costs 6 us per call)
    if pool.limit > 0 and math.prod(shape) * dtype.itemsize >= POOL_BYTES:
        return pool.tensor(shape, dtype)
    return torch.empty(shape, dtype=dtype)


def empty_like(tensor: torch.Tensor) -> torch.Tensor:
    """``torch.empty_like(tensor)`` (a contiguous CPU tensor) through :func:`empty`."""
    if not tensor.is_cpu:
        return torch.empty_like(tensor)
    return empty(tensor.shape, tensor.dtype)


def new_empty(tensor: torch.Tensor, shape) -> torch.Tensor:
    """``tensor.new_empty(shape)`` through :func:`empty` for CPU tensors."""
    if not tensor.is_cpu:
        return tensor.new_empty(shape)
    return empty(shape, tensor.dtype)


class BoundedCache(dict):
    """A dict of at most ``limit`` entries: :meth:`put` into a full one first empties it.

    For lookups whose keys repeat (the same tensors, the same ops, call after call): a loop refills
    the few entries it uses at once, and keys that never come back cannot pile up.

    Example::

        cache = BoundedCache(64)
        found = cache.get(key)
        if found is None:
            found = cache.put(key, make(key))
    """

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def put(self, key, value):
        """``self[key] = value`` (emptying a full cache first); returns ``value``."""
        if len(self) >= self.limit:
            self.clear()
        self[key] = value
        return value
