"""Fresh host buffers for op outputs: recycled when the caller drops them, and on transparent huge
pages where the kernel offers them.

A new multi-megabyte tensor costs one page fault per 4 KB page the first time it is written (the
kernel maps and zeroes each page, and on a VM each fault is dear): an out-of-place allreduce of 1M
float32 spent as long in page faults as in MPI.  Two remedies, both for CPU outputs of at least
``RECYCLE_BYTES``:

* recycling: the output is a view of a block this module keeps; when the last tensor using it is
  gone, the block comes back here and the next output of that size reuses it, already mapped
  (at most ``PER_SIZE`` blocks per size and ``BLUEFOG_OUTPUT_POOL_MB`` in all are kept, 256 MB
  unless set; 0 turns recycling off and outputs are plain ``torch.empty`` tensors);
* huge pages: new blocks are advised ``MADV_HUGEPAGE`` (honoured when
  ``/sys/kernel/mm/transparent_hugepage/enabled`` is ``always`` or ``madvise``), one fault per 2 MB.

Example::

    output = empty_like(tensor)      # what torch.empty_like gives, cheaper to fill when large
"""

import ctypes
import sys
import threading
import weakref
from typing import Dict, List, Tuple

import numpy as np
import torch

HUGE_PAGE = 2 << 20
RECYCLE_BYTES = 64 << 10
LIMIT_BYTES = 256 << 20
PER_SIZE = 4
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


class Recycler:
    """Blocks of host memory handed out as tensors and taken back when those are dropped."""

    def __init__(self, limit_bytes: int = LIMIT_BYTES, per_size: int = PER_SIZE):
        self.limit = limit_bytes
        self.per_size = per_size
        self.held = 0
        self._free: Dict[int, List[np.ndarray]] = {}
        # re-entrant: a garbage collection inside _give can drop another result, whose finalizer
        # calls _give again on this thread
        self._lock = threading.RLock()

    def tensor(self, shape, dtype: torch.dtype) -> torch.Tensor:
        """A new (uninitialised) CPU tensor of ``shape`` and ``dtype`` on a recycled block."""
        kind = np.dtype(NUMPY_DTYPES[dtype])
        nbytes = int(np.prod(shape, dtype=np.int64)) * kind.itemsize
        with self._lock:
            stack = self._free.get(nbytes)
            block = stack.pop() if stack else None
            if block is not None:
                self.held -= nbytes
        if block is None:
            block = np.empty(nbytes, dtype=np.uint8)
            prefer_huge_pages(block.ctypes.data, nbytes)
        view = block.view(kind).reshape(shape)
        weakref.finalize(view, self._give, block)     # the tensor keeps ``view`` alive
        return torch.from_numpy(view)

    def _give(self, block: np.ndarray) -> None:
        nbytes = block.nbytes
        with self._lock:
            stack = self._free.setdefault(nbytes, [])
            if len(stack) < self.per_size and self.held + nbytes <= self.limit:
                stack.append(block)
                self.held += nbytes


recycler = Recycler()


def empty(shape, dtype: torch.dtype) -> torch.Tensor:
    """``torch.empty(shape, dtype=dtype)``, recycled and on huge pages when large."""
    shape = tuple(int(d) for d in shape)
    kind = NUMPY_DTYPES.get(dtype)
    if (kind is not None and recycler.limit > 0
            and np.prod(shape, dtype=np.int64) * np.dtype(kind).itemsize >= RECYCLE_BYTES):
        return recycler.tensor(shape, dtype)
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
