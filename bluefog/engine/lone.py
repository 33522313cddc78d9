"""Lone rounds: a blocking small op that finds the engine idle runs its round on the caller's thread.

In a point-to-point round a lone small op's data rides with its record, so the round is the whole
op.  A :class:`LoneRound` is that ordinary round prepared once per op, dtype and shape: this rank's
record (``Record.encode``; each call writes its own name's digest), its data's place in the
outbox, the mailbox's persistent requests.  The verdict is the one ordinary rounds remembered for
the table of records that came (``Mailbox.recall``), and the output comes from the op's own
kernel formula for carried data.  Without a remembered verdict, or when not all the data came,
the engine settles the round as any other (:meth:`Engine.run_lone`).  See docs/design.md ("Lone
rounds").

Example::

    plan = LoneRound(box, request, tensor, compute)   # compute(tensor, carried) -> output or None
    carried = plan.exchange(comm, box, tensor, request.name)
    total = None if carried is None else plan.compute(tensor, carried)
"""

from typing import Callable, Optional

import numpy as np
import torch

from bluefog.engine.mailbox import Mailbox
from bluefog.engine.memory import NUMPY_DTYPES
from bluefog.engine.mpi import mpi
from bluefog.engine.record import Carried
from bluefog.engine.request import Request, name_digest, signature_hash


class LoneRound:
    """The prepared round of one blocking op whose data rides with its record.

    ``compute(tensor, carried)`` makes the output from the round's ``record.Carried`` data, or
    returns None when not everything it needs came with the round.
    """

    __slots__ = ("signature", "hashed", "named", "record", "words", "header", "digest_at", "start",
                 "length", "mine", "data_to", "record_to", "compute")

    def __init__(self, box: Mailbox, request: Request, tensor: torch.Tensor,
                 compute: Callable[[torch.Tensor, Carried], Optional[torch.Tensor]]):
        record = box.record
        self.signature = request.signature
        self.hashed = signature_hash(request.signature)     # each call's digest continues it
        self.named = (None, 0)                  # the last call's name and digest (loops repeat it)
        self.data_to = tuple(sorted(request.carry()))
        self.record = record.encode([request], True, self.data_to)
        self.words = np.array(self.record, dtype=np.uint64)
        self.header = self.words.view(np.uint8)
        self.digest_at = record.heads           # the head's digest: each call's own (its name)
        self.start = self.header.nbytes
        self.length = self.start + request.nbytes
        self.mine = box.outbox[self.start:self.length].view(NUMPY_DTYPES[tensor.dtype])
        self.record_to = tuple(r for r in record.others if r not in self.data_to)
        self.compute = compute

    @staticmethod
    def may_take(tensor) -> bool:
        """``tensor`` is a plain contiguous CPU tensor of a dtype numpy has (a plan is made per
        dtype and shape)."""
        return (type(tensor) is torch.Tensor and tensor.is_cpu and not tensor.requires_grad
                and tensor.is_contiguous() and tensor.dtype in NUMPY_DTYPES)

    def exchange(self, comm, box: Mailbox, tensor: torch.Tensor, name: str) -> Optional[Carried]:
        """Run the round of the call named ``name``: send this rank's record (with its data where
        it carries it), receive everyone's.  The data that came, when the mailbox remembers a
        verdict for this table of records (the op is decided); None otherwise."""
        if self.named[0] != name:
            self.named = name, name_digest(self.hashed, name)
        self.record[self.digest_at] = self.words[self.digest_at] = self.named[1]
        box.outbox[:self.start] = self.header
        np.copyto(self.mine, tensor.numpy().reshape(-1))
        box.mine_list = self.record
        mpi().Request.Waitall(box.start(comm, self.start, self.length, self.data_to,
                                        self.record_to))
        known = box.recall(self.signature)[1]
        return None if known is None else known[1]
