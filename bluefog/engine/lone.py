"""Blocking small ops with nothing else in flight, run on the caller's thread: lone rounds.

A loop of ``bf.allreduce(x, name=...)`` or ``bf.neighbor_allreduce(x, name=...)`` needs one
negotiation round per call, and in a point-to-point round a lone small op sends its data along
with its record (negotiation.py, "carried data"), so that round is the whole op.  A
:class:`LoneRound` prepares it once per op, dtype and shape: the record this rank sends and
the records it expects from the others (both made by ``Record.encode``, the one record builder,
as an ordinary round of this one op makes them), where its data goes and where the others'
arrive, and persistent requests (the mailbox's).  A call then copies the tensor in, starts and
waits for the requests, checks that every record is the expected one, and computes the result
from the receive buffer.  The decision such a table gets was taken once, when the round was
prepared, by ``Record.decide_fast``: the check only says the table is that one again.

The messages are exactly those of an ordinary round, so ranks on this path and ranks that are not
(another op pending, a nonblocking call) agree.  When a record differs from the expected one, the
engine reads the round in full as it reads any round (:meth:`Engine.run_lone`).

Example::

    plan = LoneRound(box, request, tensor, box.record.all_but, None,
                     lambda x, rows: averaging.summed_rows(rows, x))      # an allreduce's sum
    if plan.fits(tensor) and plan.exchange(comm, box, tensor):
        total = plan.result(tensor)
"""

from typing import Callable, Optional, Sequence

import numpy as np
import torch

from bluefog.engine.mailbox import Mailbox
from bluefog.engine.memory import NUMPY_DTYPES
from bluefog.engine.mpi import mpi
from bluefog.engine.request import Request


class LoneRound:
    """The prepared round of one blocking op whose data rides with its record.

    ``carried_to[r]`` lists the ranks rank ``r`` sends its data to (every rank runs the same op);
    ``sources``: the ranks whose data the result reads, one flat byte row each (None: every rank's,
    stacked in rank order, this rank's own included); ``compute(tensor, rows)`` makes the output
    from them (an ``averaging`` formula, as the engine's kernel of the same op would).
    """

    __slots__ = ("name", "dtype", "shape", "record", "header", "expected", "start", "length", "mine",
                 "data_to", "record_to", "delivered", "rows", "compute")

    def __init__(self, box: Mailbox, request: Request, tensor: torch.Tensor,
                 carried_to: Sequence[Sequence[int]], sources: Optional[Sequence[int]],
                 compute: Callable[[torch.Tensor, object], torch.Tensor]):
        record, me = box.record, box.record.me
        self.name = request.name
        self.dtype = tensor.dtype
        self.shape = tensor.shape
        table = [record.encode([request], True, carried_to[r]) for r in range(record.size)]
        decision = record.decide_fast(table, [request])
        assert decision is not None and len(decision.ready) == 1 and not decision.errors
        self.record = table[me]
        self.header = np.array(self.record, dtype=np.uint64).view(np.uint8)
        self.expected = [(r, table[r][1:]) for r in record.others]   # (any rank may be blocked)
        self.start = self.header.nbytes
        self.length = self.start + request.nbytes
        self.mine = box.outbox[self.start:self.length].view(NUMPY_DTYPES[tensor.dtype])
        self.data_to = tuple(carried_to[me])
        self.record_to = tuple(r for r in record.others if r not in self.data_to)
        self.delivered = frozenset(self.data_to)
        # where the data lands in the inbox, as bytes (this rank's own row is its outbox)
        inbox = box.inbox[:, self.start:self.length]
        self.rows = inbox if sources is None else [inbox[r] for r in sources]
        self.compute = compute

    @staticmethod
    def may_take(tensor) -> bool:
        """``tensor`` is a plain contiguous CPU tensor (its dtype is checked with the op)."""
        return (type(tensor) is torch.Tensor and tensor.is_cpu and not tensor.requires_grad
                and tensor.is_contiguous())

    def fits(self, tensor) -> bool:
        """``tensor`` is one this plan was made for (dtype, shape, :meth:`may_take`)."""
        return (self.may_take(tensor) and tensor.dtype is self.dtype
                and tensor.shape == self.shape)

    def exchange(self, comm, box: Mailbox, tensor: torch.Tensor) -> bool:
        """Run the round: send this rank's record (with its data where it carries it), receive
        everyone's.  True when every record is the expected one (the op is decided, its data
        here)."""
        MPI = mpi()
        box.outbox[:self.start] = self.header
        np.copyto(self.mine, tensor.numpy().reshape(-1))
        box.mine_list = self.record
        requests = box.receives(comm) + box.sends(comm, self.length, self.data_to)
        if self.record_to:
            requests = requests + box.sends(comm, self.start, self.record_to)
        MPI.Prequest.Startall(requests)
        MPI.Request.Waitall(requests)
        rows = box.first_heads.tolist()
        return all(rows[r][1:] == words for r, words in self.expected)

    def result(self, tensor: torch.Tensor) -> torch.Tensor:
        """The op's output once :meth:`exchange` returned True."""
        return self.compute(tensor, self.rows)
