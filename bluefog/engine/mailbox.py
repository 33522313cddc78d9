"""Where round records travel: this rank's outbox, one inbox row per rank, persistent requests.

Point-to-point rounds (``negotiation.py``) receive each other rank's record, and the data it may
carry, into that rank's inbox row; this rank's own row is its outbox: its record, then the data it
carries, so every message it sends is a prefix of the outbox.  Receives are persistent (one per
other rank); sends are persistent per (message length, destinations), the least recently used
beyond ``MAX_PERSISTENT_SENDS`` freed.  ``Iallgather`` rounds use :attr:`Mailbox.table`.

Example::

    box = Mailbox(Record(4, me), point_to_point=True)
    requests = box.post(comm, box.write(words), carrying={})
    ...   # once they completed:
    rows = box.received_rows()
"""

from typing import Dict, FrozenSet, List, Optional, Sequence

import numpy as np

from bluefog.engine.memory import BoundedCache
from bluefog.engine.mpi import mpi
from bluefog.engine.record import Carried, Record
from bluefog.engine.request import Request

ROUND_TAG = 1
CARRY_MAX = 16 * 1024          # bytes of op data that may ride with a round record
MAX_PERSISTENT_SENDS = 32      # (message length, destinations) kept as persistent sends
MAX_DECISIONS = 64             # fast decisions remembered by their table of records


class Mailbox:
    """The buffers and requests of one world's rounds (``point_to_point``: with an inbox)."""

    def __init__(self, record: Record, point_to_point: bool):
        self.record = record
        self.table = np.zeros((record.rows, record.length), dtype=np.uint64)   # Iallgather rounds
        rows = record.size if point_to_point else 0
        self.inbox = np.zeros((rows, 8 * record.length + CARRY_MAX), dtype=np.uint8)
        if rows:
            self.outbox = self.inbox[record.me]
            self.mine = self.outbox[:8 * record.length].view(np.uint64)
            # every record up to its first head: what a remembered verdict is keyed by
            self.first_heads = self.inbox[:, :8 * (record.heads + 3)].view(np.uint64)
        else:
            self.mine = np.zeros(record.length, dtype=np.uint64)
        self.mine_list: List[int] = []   # this rank's record as sent last
        # fast decisions already taken, by the bytes of a round's records (negotiation.settle)
        self.decided = BoundedCache(MAX_DECISIONS)
        self._receives: list = []        # persistent: one per other rank, into its inbox row
        self._sends: Dict[tuple, list] = {}   # persistent, by (message length, destinations)

    @property
    def point_to_point(self) -> bool:
        return self.inbox.shape[0] > 0

    def write(self, words: List[int]) -> np.ndarray:
        """Put this rank's record ``words`` at the head of the outbox; return that part."""
        self.mine_list = words
        mine = self.mine[:len(words)]
        mine[:] = words
        return mine

    def received_rows(self) -> List[List[int]]:
        """After a point-to-point round: every rank's record (the used part), mine included."""
        rows, used = [], self.record.used
        for r in range(self.record.size):
            if r == self.record.me:
                rows.append(self.mine_list)
                continue
            words = self.inbox[r, :8 * self.record.length].view(np.uint64)
            rows.append(words[:used(words)].tolist())
        return rows

    def records_key(self, signature):
        """After a point-to-point round whose records each hold one head, the same op's on every
        rank (one digest), of ``signature``: a key equal for equal tables of records but for the
        op's name and who was blocked (the signature stands for the digest; the decision reads
        neither); None otherwise.  A loop of nameless ops, each under a new name, repeats its key."""
        rows, digest = self.first_heads.tolist(), self.record.heads
        first = rows[0][digest]
        for row in rows:
            if row[1] != 1 or row[digest] != first:
                return None
            row[0] = row[digest] = 0            # (who was blocked; the name)
        return tuple(map(tuple, rows)), signature

    def recall(self, signature):
        """This round's :meth:`records_key` and the verdict remembered for it: every rank's first
        dim and the data carried (a ``Carried`` or None); None if there is none."""
        key = self.records_key(signature)
        return key, (None if key is None else self.decided.get(key))

    def carried_data(self, rows: List[List[int]], req: Request,
                     delivered: FrozenSet[int]) -> Optional[Carried]:
        """After a point-to-point round that decided ``req`` first: the data that came for it (None
        when nothing came, or ``req`` carries to all and not every rank did).  ``rows`` need to
        reach only each record's first head."""
        record = self.record
        if req.carry_to_all:
            if not record.carried_to_all(rows):
                return None
            # every record is a lone one, and this rank's data follows its record in the outbox
            start = 8 * (record.heads + 3)
            return Carried({}, delivered, self.inbox[:, start:start + req.nbytes])
        received = {}
        for r, row in enumerate(rows):
            if r != record.me and record.carried_to_me(row):
                start = 8 * record.used(row)
                received[r] = self.inbox[r, start:start + req.nbytes]    # read at launch
        if not received and not delivered:
            return None
        return Carried(received, delivered)

    def post(self, comm, record: np.ndarray, carrying: Dict[int, np.ndarray]) -> list:
        """Start a point-to-point round: receive every other rank's record (and what it carries)
        into its inbox row; send each the record (at the head of the outbox) and the data carried
        there.  One carried array (the usual case) is put after the record in the outbox, so every
        message is a slice of it; that same message to everyone goes by persistent requests."""
        payloads, end = self.stage(record, carrying)
        others = self.record.others
        if len(payloads) <= 1:        # two prefixes of the outbox: record + data, record alone
            return self.start(comm, record.nbytes, end, [r for r in others if r in carrying],
                              [r for r in others if r not in carrying])
        receives = self.receives(comm)
        mpi().Prequest.Startall(receives)
        joined = {}                                           # one message per distinct payload
        return receives + [comm.Isend(_joined(joined, record, carrying.get(r)), dest=r,
                                      tag=ROUND_TAG) for r in others]

    def start(self, comm, record_end: int, data_end: int, data_to: Sequence[int],
              record_to: Sequence[int]) -> list:
        """Start a round whose messages are prefixes of the outbox: receive every other rank's;
        send the first ``data_end`` bytes (record and data) to ``data_to``, the first
        ``record_end`` (the record) to ``record_to``.  Returns the requests."""
        requests = self.receives(comm)
        if data_to:
            requests = requests + self.sends(comm, data_end, data_to)
        if record_to:
            requests = requests + self.sends(comm, record_end, record_to)
        mpi().Prequest.Startall(requests)
        return requests

    def stage(self, record: np.ndarray, carrying: Dict[int, np.ndarray]):
        """Put the one carried array, if there is just one, after ``record`` in the outbox; return
        the distinct payloads (by id) and where the outbox's message ends."""
        payloads = {id(data): data for data in carrying.values()}
        end = record.nbytes
        if len(payloads) == 1:
            data, = payloads.values()
            self.outbox[end:end + data.nbytes] = data
            end += data.nbytes
        return payloads, end

    def receives(self, comm) -> list:
        """The persistent receives of a point-to-point round (made on first use)."""
        if not self._receives:
            self._receives = [comm.Recv_init(self.inbox[r], source=r, tag=ROUND_TAG)
                              for r in self.record.others]
        return self._receives

    def sends(self, comm, length: int, dests: Sequence[int]) -> list:
        """Persistent sends of the outbox's first ``length`` bytes to ``dests``, kept for the
        (length, dests) used last; the least recently used beyond ``MAX_PERSISTENT_SENDS`` are
        freed, never while in use: rounds run one at a time, complete before the next starts, and
        take at most two groups."""
        key = (length, tuple(dests))
        found = self._sends.pop(key, None)
        if found is None:
            if len(self._sends) >= MAX_PERSISTENT_SENDS:
                for request in self._sends.pop(next(iter(self._sends))):
                    request.Free()
            found = [comm.Send_init(self.outbox[:length], dest=r, tag=ROUND_TAG) for r in dests]
        self._sends[key] = found       # (now the most recently used)
        return found

    def free(self):
        """Free the persistent requests (before the communicator goes)."""
        for request in self._receives + [r for group in self._sends.values() for r in group]:
            request.Free()
        self._receives, self._sends = [], {}


def _joined(cache: dict, record: np.ndarray, data: Optional[np.ndarray]) -> np.ndarray:
    """``record`` followed by ``data`` (if any), built once per distinct ``data`` object; the
    messages stay referenced (by the caller's dict) until the sends complete."""
    if data is None:
        return record
    found = cache.get(id(data))
    if found is None:
        found = cache[id(data)] = np.concatenate([record, data])
    return found
