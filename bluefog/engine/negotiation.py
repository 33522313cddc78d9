"""Matching ops across ranks by name, without a coordinator: one round as a kernel.

A rank with pending ops sends every other rank its record (``record.py``): point to point up to
``P2P_ROUND_LIMIT`` ranks, through the mailbox (``mailbox.py``), with a lone small op's data
carried after it (at most ``CARRY_MAX`` bytes); an ``Iallgather`` of the fixed-size record beyond.
Every rank decides on the same table: the common prefix of their ops when there is one, else the
slow path, an allgather of every pending op's summary matched by name.  A round is a collective
among the ranks with work only, which is fine: every negotiated op needs every rank.  See
docs/design.md ("Rounds").
"""

import pickle
from typing import FrozenSet, List, Optional

import numpy as np

from bluefog.engine.mailbox import CARRY_MAX, Mailbox
from bluefog.engine.mpi import mpi
from bluefog.engine.record import Decision, Record, decide_slow, summary
from bluefog.engine.request import Request

P2P_ROUND_LIMIT = 32   # up to this many ranks a round is point-to-point (one hop) not Iallgather
MAX_SLOW_SUMMARIES = 512


def mailbox_for(size: int, me: int, members: Optional[List[int]] = None) -> Mailbox:
    """The mailbox of a world's rounds: point-to-point up to ``P2P_ROUND_LIMIT`` ranks (not in
    fault-tolerant mode, ``members`` set: there every round is an ``Iallgather`` over them)."""
    return Mailbox(Record(size, me, members), size <= P2P_ROUND_LIMIT and members is None)


def check_topology(comm, box: Mailbox, req: Request):
    """Skip-negotiate mode: the topology check of ``req`` as its own collective (a kernel step)."""
    mine = np.array(box.record.topology_words(req), dtype=np.uint64)
    table = np.empty((box.record.rows, mine.size), dtype=np.uint64)
    yield [comm.Iallgather(mine, table)]
    problem = box.record.topology_problem(table.tolist())
    if problem:
        raise ValueError(problem)


def negotiate(comm, box: Mailbox, pending: List[Request], blocked: bool):
    """One round, as a kernel: yields MPI requests, returns a ``record.Decision``."""
    record = box.record
    if record.rows == 1:
        previous, ready = None, []
        for req in pending:
            ready.append((req, (req.dim0,), req.fusion_key is not None and req.fusion_key == previous))
            previous = req.fusion_key
        return record.world_dim0s(Decision(ready=ready))
    if not box.point_to_point:
        box.write(record.encode(pending, blocked))
        yield [comm.Iallgather(box.mine, box.table)]
        rows = box.table[:, :record.heads + 3 * int(box.table[:, 1].min())].tolist()
        return (yield from settle(comm, box, rows, pending, None))
    carrying = {}
    head = pending[0]
    if len(pending) == 1 and head.carry is not None and 0 < head.nbytes <= CARRY_MAX:
        carrying = head.carry()
    mine = box.write(record.encode(pending, blocked, carrying)).view(np.uint8)  # bytes, as received
    yield box.post(comm, mine, carrying)
    return (yield from settle_received(comm, box, pending, frozenset(carrying)))


def settle_received(comm, box: Mailbox, pending: List[Request], delivered: FrozenSet[int]):
    """:func:`settle` of a point-to-point round, from the records in the inbox.  A table of
    one-head records decided before (``Mailbox.records_key``: equal but for the op's name) gets
    the remembered verdict without being read or decided again.  A kernel."""
    key, known = box.recall(pending[0].signature)
    if known is not None:
        dim0s, carried = known
        return Decision(ready=[(pending[0], dim0s, False)], carried=carried)
    return (yield from settle(comm, box, box.received_rows(), pending, delivered, key))


def settle(comm, box: Mailbox, rows: List[List[int]], pending: List[Request],
           delivered: Optional[FrozenSet[int]], key=None):
    """The rest of a round once every record is in (``rows``, this rank's included; ``delivered``:
    the ranks this rank carried its head op's data to, None in an ``Iallgather`` round, where
    nothing is carried): decide, by the common prefix when there is one, else by the slow path's
    exchange of summaries.  A fast decision of one op is remembered under ``key``
    (``Mailbox.records_key``).  A kernel, like :func:`negotiate`."""
    MPI = mpi()
    record = box.record
    used = record.heads + 3 * min(row[1] for row in rows)
    table = [row[:used] for row in rows]
    decision = record.decide_fast(table, pending)
    if decision is not None:
        if decision.ready and delivered is not None:
            decision.carried = box.carried_data(rows, decision.ready[0][0], delivered)
        if key is not None and len(decision.ready) == 1 and not decision.errors:
            box.decided.put(key, (decision.ready[0][1], decision.carried))
        return record.world_dim0s(decision)
    payload = np.frombuffer(pickle.dumps([summary(r) for r in pending[:MAX_SLOW_SUMMARIES]]),
                            dtype=np.uint8)
    length = np.array([payload.size], dtype=np.int64)
    lengths = np.empty(len(rows), dtype=np.int64)
    yield [comm.Iallgather(length, lengths)]   # (kept referenced until complete)
    displs = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    gathered = np.empty(int(lengths.sum()), dtype=np.uint8)
    yield [comm.Iallgatherv(payload, [gathered, lengths, displs, MPI.BYTE])]
    lists = [pickle.loads(gathered[d:d + n].tobytes()) for d, n in zip(displs, lengths)]
    return record.world_dim0s(decide_slow(lists, [bool(row[0]) for row in table], pending,
                                          record.members))
