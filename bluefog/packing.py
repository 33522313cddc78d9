"""Packing many tensors into one flat buffer and back (no communication; used by the engine's
fused kernels and by the optimizers' packed launches)."""

from typing import Optional, Sequence

import torch


def adjacent_span(tensors: Sequence[torch.Tensor]) -> Optional[torch.Tensor]:
    """A 1-D view over ``tensors`` if they are contiguous, of one dtype and back to back in the
    storage of the first (as parameters are once a packed or fused step has made them views of one
    output), else None."""
    dtype = tensors[0].dtype
    if any(t.dtype != dtype or not t.is_contiguous() for t in tensors):
        return None
    filled = [t for t in tensors if t.numel()]     # empty tensors take no memory (data_ptr 0)
    if not filled:
        return None
    first = filled[0]
    itemsize, end = first.element_size(), first.data_ptr()
    for t in filled:
        if t.data_ptr() != end:
            return None
        end += t.numel() * itemsize
    storage = first.untyped_storage()
    if end > storage.data_ptr() + storage.nbytes():    # adjacent memory of another allocation
        return None
    return first.new_empty(0).set_(storage, first.storage_offset(),
                                   ((end - first.data_ptr()) // itemsize,))


def pack(tensors: Sequence[torch.Tensor], dtype: torch.dtype, read_only: bool = False) -> torch.Tensor:
    """One contiguous 1-D buffer holding every tensor, in ``dtype`` (a single copy in).

    With ``read_only``, tensors that already lie back to back in one storage are used in place.
    """
    if read_only and tensors[0].dtype == dtype:
        span = adjacent_span(tensors)
        if span is not None:
            return span
    return torch.cat([t.reshape(-1).to(dtype) for t in tensors])


def split_like(flat: torch.Tensor, like: Sequence[torch.Tensor]) -> list:
    """Views of ``flat`` shaped like each tensor of ``like``, in order."""
    pieces = flat.split_with_sizes([t.numel() for t in like])
    return [piece if piece.dim() == t.dim() == 1 else piece.view(t.shape)
            for piece, t in zip(pieces, like)]
