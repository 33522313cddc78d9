"""Fresh host buffers for op outputs, backed by transparent huge pages where the kernel allows.

A new multi-megabyte tensor costs one page fault per 4 KB page the first time it is written (the
kernel maps and zeroes each page): an out-of-place allreduce of 16M float32 spent more time in
page faults than in MPI.  Asking for huge pages (``madvise(MADV_HUGEPAGE)``, honoured when
``/sys/kernel/mm/transparent_hugepage/enabled`` is ``always`` or ``madvise``) makes that one
fault per 2 MB.  Elsewhere (not Linux, THP off) the advice is simply not taken.

Example::

    output = empty_like(tensor)      # what torch.empty_like gives, faster to fill when large
"""

import ctypes
import sys
from typing import Tuple

import torch

HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14
_MIN_BYTES = 2 * HUGE_PAGE      # below this no whole aligned huge page fits reliably


def _madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise


_advise = _madvise()


def prefer_huge_pages(tensor: torch.Tensor) -> torch.Tensor:
    """Ask for huge pages under the whole 2 MB pages inside a fresh (untouched) CPU tensor."""
    nbytes = tensor.numel() * tensor.element_size()
    if _advise is None or nbytes < _MIN_BYTES or not tensor.is_cpu:
        return tensor
    start, end = _aligned_span(tensor.data_ptr(), nbytes)
    if end > start:
        _advise(start, end - start, _MADV_HUGEPAGE)    # advice: failure changes nothing
    return tensor


def _aligned_span(address: int, nbytes: int) -> Tuple[int, int]:
    start = (address + HUGE_PAGE - 1) // HUGE_PAGE * HUGE_PAGE
    return start, (address + nbytes) // HUGE_PAGE * HUGE_PAGE


def empty_like(tensor: torch.Tensor) -> torch.Tensor:
    """``torch.empty_like(tensor)`` on huge pages when large."""
    return prefer_huge_pages(torch.empty_like(tensor))


def new_empty(tensor: torch.Tensor, shape) -> torch.Tensor:
    """``tensor.new_empty(shape)`` on huge pages when large."""
    return prefer_huge_pages(tensor.new_empty(shape))
