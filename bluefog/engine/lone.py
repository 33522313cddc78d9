"""A blocking allreduce of a small tensor, with nothing else in flight, run on the caller's thread.

A loop of ``bf.allreduce(x, name=...)`` needs one negotiation round per call, and in a
point-to-point round a lone small allreduce sends its data along with its record to every rank
(negotiation.py, "carried data"), so that round is the whole op.  A :class:`LoneAllreduce`
prepares it once per name, dtype, shape and flavour: the record this rank sends, the records it
expects from the others, where the data goes and where everyone's arrives, and persistent
requests.  A call then copies the tensor in, starts and waits for the requests, compares the
records, and adds the rows up.

The messages are exactly those of an ordinary round, so ranks on this path and ranks that are not
(another op pending, a nonblocking call) agree.  When a record differs from the expected one, the
engine reads the round in full as it reads any round (:meth:`Engine.run_lone`).

Example::

    plan = LoneAllreduce(layout, "allreduce.loss", digest, tensor, divisor=1, inplace=False)
    if plan.fits(tensor) and plan.exchange(comm, layout, tensor):
        total = plan.result(tensor)
"""

import numpy as np
import torch

from bluefog.engine.kernels import summed_rows
from bluefog.engine.memory import NUMPY_DTYPES
from bluefog.engine.mpi import mpi
from bluefog.engine.negotiation import Layout


class LoneAllreduce:
    """The prepared round of one blocking allreduce (see the module docstring)."""

    __slots__ = ("name", "dtype", "shape", "divisor", "inplace", "record", "header", "expected",
                 "length", "mine", "stacked", "delivered")

    def __init__(self, layout: Layout, name: str, digest: int, tensor: torch.Tensor, divisor: int,
                 inplace: bool):
        self.name = name
        self.dtype = tensor.dtype
        self.shape = tensor.shape
        self.divisor = divisor
        self.inplace = inplace
        self.record = layout.lone_record(layout.me, digest, 0)
        self.header = np.array(self.record, dtype=np.uint64).view(np.uint8)
        self.expected = [(r, layout.lone_record(r, digest, 0)[1:]) for r in layout.others]
        start = self.header.nbytes
        self.length = start + tensor.numel() * tensor.element_size()
        self.mine = layout.outbox[start:self.length].view(NUMPY_DTYPES[tensor.dtype])
        self.stacked = layout.inbox[:, start:self.length]
        self.delivered = frozenset(layout.others)

    @staticmethod
    def may_take(tensor) -> bool:
        """``tensor`` is a plain contiguous CPU tensor (its dtype is checked with the op)."""
        return (type(tensor) is torch.Tensor and tensor.is_cpu and not tensor.requires_grad
                and tensor.is_contiguous())

    def fits(self, tensor) -> bool:
        """``tensor`` is one this plan was made for (dtype, shape, :meth:`may_take`)."""
        return (type(tensor) is torch.Tensor and tensor.dtype is self.dtype
                and tensor.shape == self.shape and tensor.is_cpu and not tensor.requires_grad
                and tensor.is_contiguous())

    def exchange(self, comm, layout: Layout, tensor: torch.Tensor) -> bool:
        """Run the round: send this rank's record and data to every rank, receive theirs.  True
        when every record is the expected one (the op is decided, its data all here)."""
        MPI = mpi()
        layout.outbox[:self.header.size] = self.header
        np.copyto(self.mine, tensor.numpy().reshape(-1))
        layout.mine_list = self.record
        requests = layout.receives(comm) + layout.sends(comm, self.length)
        MPI.Prequest.Startall(requests)
        MPI.Request.Waitall(requests)
        rows = layout.first_heads.tolist()
        return all(rows[r][1:] == words for r, words in self.expected)

    def result(self, tensor: torch.Tensor) -> torch.Tensor:
        """The op's output once :meth:`exchange` returned True."""
        return summed_rows(self.stacked, tensor, tensor if self.inplace else None, self.divisor)
