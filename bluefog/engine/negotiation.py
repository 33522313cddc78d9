"""Matching ops across ranks by name, without a coordinator.

A rank with pending ops joins a *round*: it sends every other rank a record (point-to-point up to
``P2P_ROUND_LIMIT`` ranks, one hop; an ``Iallgather`` of the fixed-size record beyond) holding the
digests (name + signature) of its first pending ops, their first dims, whether each may be fused with
the one before, and for a dynamic neighbor op the bitmaps of whom it sends to and receives from.
Every rank then runs the same pure decision on the same table, so all reach the same verdict
without further messages:

* fast path: the longest common prefix of the digest lists is executed, in that order, consecutive
  ops fused where every rank allows it;
* slow path (ranks submitted in different orders, or disagree): every rank allgathers the summaries of
  all its pending ops; names present on every rank run in rank 0's order, mismatched signatures
  become a ``ValueError`` on every rank, and a round where nothing can run while every rank is
  blocked waiting is a deadlock, reported as a ``ValueError`` naming what each rank waits for.

A round is a collective only among ranks that have work, which is fine: every negotiated op needs
every rank, so a rank with nothing pending holds everybody up anyway.

*Carried data*: in point-to-point rounds, a rank whose only pending op is a small neighbor op or
allreduce (``Request.carry``, at most ``CARRY_MAX`` bytes) appends that op's data for each
destination to the round message it sends there, and says so in its record (a bitmap of the
destinations).  When the round decides that op, it needs no second exchange: for a neighbor op,
receivers take what arrived with the records and senders skip what they already delivered; an
allreduce is summed from the records when every rank carried to every other one (else it runs as
usual).  Every rank reads the same bitmaps, so they agree.
"""

import dataclasses
import pickle
from typing import Dict, FrozenSet, List, Optional, Sequence, Tuple

import numpy as np

from bluefog.engine.mpi import mpi
from bluefog.engine.request import Request

MAX_HEADS = 128
P2P_ROUND_LIMIT = 32   # up to this many ranks a round is point-to-point (one hop) not Iallgather
ROUND_TAG = 1
MAX_SLOW_SUMMARIES = 512
CARRY_MAX = 16 * 1024   # bytes of op data that may ride with a round record
MAX_PERSISTENT_SENDS = 32   # (message length, destinations) kept as persistent sends
TOPOLOGY_MISMATCH = "Src(recv from) and dst(send to) neighbor ranks do not match"


@dataclasses.dataclass
class Decision:
    """What a round decided, identical on every rank (request objects are this rank's own)."""

    # (request, every rank's first dim, may fuse with the previous ready request)
    ready: List[Tuple[Request, Tuple[int, ...], bool]] = dataclasses.field(default_factory=list)
    errors: List[Tuple[Request, Exception]] = dataclasses.field(default_factory=list)
    stuck: Optional[str] = None   # set when every rank is blocked and nothing can run
    carried: Optional["Carried"] = None   # data of ready[0] that came with the records

    def empty(self) -> bool:
        return not self.ready and not self.errors


@dataclasses.dataclass(frozen=True)
class Carried:
    """What moved with a round's records for the op it decided first (see the module docstring)."""

    # source rank -> the bytes of its data for this rank: a view of the round inbox, valid until
    # the next round starts (the kernel reads it when launched, right after the decision)
    received: Dict[int, np.ndarray]
    delivered: FrozenSet[int]         # ranks this rank already sent its data to
    # an op carried to all: every rank's data (this rank's own included), one row per rank in rank
    # order, as bytes: a view of the inbox (read at launch, like ``received``)
    stacked: Optional[np.ndarray] = None


def _bitmap(ranks, words: int) -> List[int]:
    bits = [0] * words
    for r in ranks:
        bits[r // 64] |= 1 << (r % 64)
    return bits


def _bitmap_ranks(words: Sequence[int], size: int) -> List[int]:
    return [r for r in range(size) if (int(words[r // 64]) >> (r % 64)) & 1]


def topology_mismatch(sends: Sequence[Sequence[int]], recvs: Sequence[Sequence[int]],
                      ranks: Optional[Sequence[int]] = None) -> Optional[str]:
    """Check "i sends to j" <=> "j receives from i" for every pair; describe the first violation.
    ``ranks``: the rank of each entry (fault-tolerant mode: the survivors; edges to others are
    ignored, as the dead are dropped from every op)."""
    if ranks is None:
        send_edges = {(i, j) for i, dsts in enumerate(sends) for j in dsts}
        recv_edges = {(i, j) for j, srcs in enumerate(recvs) for i in srcs}
    else:
        live = set(ranks)
        send_edges = {(i, j) for i, dsts in zip(ranks, sends) for j in dsts if j in live}
        recv_edges = {(i, j) for j, srcs in zip(ranks, recvs) for i in srcs if i in live}
    diff = sorted(send_edges ^ recv_edges)
    if not diff:
        return None
    i, j = diff[0]
    side = (f"rank {i} sends to rank {j} but rank {j} does not receive from it"
            if (i, j) in send_edges else
            f"rank {j} receives from rank {i} but rank {i} does not send to it")
    return f"{TOPOLOGY_MISMATCH}: {side}."


class Layout:
    """The round record of a world of ``size`` ranks, with buffers reused every round.

    A record is ``[blocked, head count, topology flag, send bitmap, receive bitmap, carried-to
    bitmap, heads...]`` with three words per head (digest, first dim, fuses-with-previous); only the
    used prefix travels in point-to-point rounds (followed by carried data, if any), the whole fixed
    length in ``Iallgather`` rounds.
    """

    def __init__(self, size: int, me: int, members: Optional[List[int]] = None):
        self.size = size
        self.me = me
        # fault-tolerant mode: the survivors (world ranks); rounds are then an Iallgather over them
        # with one table row per survivor, and nothing is carried
        self.members = members
        self.words = (size + 63) // 64
        self.topo = 2
        self.carry = self.topo + 1 + 2 * self.words
        self.heads = self.carry + self.words
        self.length = self.heads + 3 * MAX_HEADS
        self.table = np.zeros((size if members is None else len(members), self.length),
                              dtype=np.uint64)
        # point-to-point rounds receive each record, and the data it may carry, into an inbox row;
        # this rank's own row is its outbox: its record, then the data it carries
        rows = size if size <= P2P_ROUND_LIMIT and members is None else 0
        self.inbox = np.zeros((rows, 8 * self.length + CARRY_MAX), dtype=np.uint8)
        # every rank's other ranks (whom it carries an allreduce's data to), this rank's own
        self.all_but = [[q for q in range(size) if q != r] for r in range(size)]
        self.others = self.all_but[me]
        if rows:
            self.outbox = self.inbox[me]
            self.mine = self.outbox[:8 * self.length].view(np.uint64)
            # every record up to its first head: all a lone round needs to read (lone.py)
            self.first_heads = self.inbox[:, :8 * (self.heads + 3)].view(np.uint64)
        else:
            self.mine = np.zeros(self.length, dtype=np.uint64)
        self.mine_list: List[int] = []
        self._receives: list = []      # persistent: one per other rank, into its inbox row
        self._sends: Dict[tuple, list] = {}   # persistent, by (message length, destinations)
        # the carried-to bitmaps of a round in which every rank carried to every other rank
        self.to_all_others = [_bitmap(ranks, self.words) for ranks in self.all_but]

    def record(self, pending: Sequence[Request], blocked: bool, carried_to=()) -> np.ndarray:
        """Fill and return this rank's record (its used prefix): its first heads, their first
        dims, topology bits and the ranks its head op's data is carried to."""
        heads = []
        topology = None
        previous = None
        for req in pending[:MAX_HEADS]:
            if req.sends is not None and heads:
                break   # a checked op is negotiated alone, at the head
            fuses = req.fusion_key is not None and req.fusion_key == previous
            heads += (req.digest(), req.dim0, int(fuses))
            previous = req.fusion_key
            if req.sends is not None:
                topology = self.topology_words(req)
                break
        rec = [int(blocked), len(heads) // 3, int(topology is not None)]
        rec += topology or [0] * (2 * self.words)
        rec += _bitmap(carried_to, self.words) if carried_to else [0] * self.words
        rec += heads
        self.mine_list = rec
        mine = self.mine[:len(rec)]
        mine[:] = rec
        return mine

    def lone_record(self, digest: int, dim0: int, carried_to: Sequence[int],
                    blocked: bool = True) -> List[int]:
        """The record :meth:`record` makes when the only pending op is ``digest`` (not
        topology-checked), its data carried to ``carried_to``."""
        return ([int(blocked), 1, 0] + [0] * (2 * self.words) + _bitmap(carried_to, self.words)
                + [digest, dim0, 0])

    def received_rows(self) -> List[List[int]]:
        """After a point-to-point round: every rank's record (the used part), mine included."""
        rows = []
        for r in range(self.size):
            if r == self.me:
                rows.append(self.mine_list)
                continue
            words = self.inbox[r, :8 * self.length].view(np.uint64)
            rows.append(words[:self.heads + 3 * int(words[1])].tolist())
        return rows

    def carried_data(self, rows: List[List[int]], req: Request,
                     delivered: FrozenSet[int]) -> Optional[Carried]:
        """After a point-to-point round that decided ``req`` first: the data that came for it (None
        when nothing came, or ``req`` carries to all and not every rank did).  ``rows`` need to
        reach only each record's first head."""
        carry, heads, me = self.carry, self.heads, self.me
        if req.carry_to_all:
            if any(row[carry:heads] != everyone for row, everyone in zip(rows, self.to_all_others)):
                return None
            # every record is a lone one, and this rank's data follows its record in the outbox
            start = 8 * (heads + 3)
            return Carried({}, delivered, self.inbox[:, start:start + req.nbytes])
        received = {}
        word, bit = carry + me // 64, me % 64
        for r, row in enumerate(rows):
            if r != me and (row[word] >> bit) & 1:
                start = 8 * (heads + 3 * row[1])
                received[r] = self.inbox[r, start:start + req.nbytes]    # read at launch
        if not received and not delivered:
            return None
        return Carried(received, delivered)

    def post(self, comm, record: np.ndarray, carrying: Dict[int, np.ndarray]) -> list:
        """Start a point-to-point round: receive every other rank's record (and what it carries)
        into its inbox row; send each the record (at the head of the outbox) and the data carried
        there.  One carried array (the usual case) is put after the record in the outbox, so every
        message is a slice of it; that same message to everyone goes by persistent requests."""
        MPI = mpi()
        receives = self.receives(comm)
        payloads = {id(data): data for data in carrying.values()}
        end = record.nbytes
        if len(payloads) == 1:
            data, = payloads.values()
            self.outbox[end:end + data.nbytes] = data
            end += data.nbytes
        if len(payloads) == 1 and len(carrying) == self.size - 1:     # (as an allreduce carries)
            requests = receives + self.sends(comm, end, self.others)
            MPI.Prequest.Startall(requests)
            return requests
        MPI.Prequest.Startall(receives)
        if len(payloads) <= 1:
            carried, plain = self.outbox[:end], record
            messages = {r: carried if r in carrying else plain for r in self.others}
        else:
            joined = {}                                       # one message per distinct payload
            messages = {r: _joined(joined, record, carrying.get(r)) for r in self.others}
        return receives + [comm.Isend(message, dest=r, tag=ROUND_TAG)
                           for r, message in messages.items()]

    def receives(self, comm) -> list:
        """The persistent receives of a point-to-point round (made on first use)."""
        if not self._receives:
            self._receives = [comm.Recv_init(self.inbox[r], source=r, tag=ROUND_TAG)
                              for r in self.others]
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

    def topology_words(self, req: Request) -> List[int]:
        """The send bitmap then the receive bitmap of a checked request."""
        return _bitmap(req.sends, self.words) + _bitmap(req.recvs, self.words)

    def topology_problem(self, rows) -> Optional[str]:
        """:func:`topology_mismatch` over every rank's :meth:`topology_words`."""
        w = self.words
        return topology_mismatch([_bitmap_ranks(row[:w], self.size) for row in rows],
                                 [_bitmap_ranks(row[w:2 * w], self.size) for row in rows],
                                 self.members)

    def survivors(self, members: List[int]) -> "Layout":
        """A fresh layout of this world for the surviving ``members`` (fault-tolerant mode)."""
        return Layout(self.size, self.me, list(members))

    def world_dim0s(self, decision: "Decision") -> "Decision":
        """Fault-tolerant mode: each ready op's first dims indexed by world rank (0 for the dead)."""
        if self.members is None or len(self.members) == self.size:
            return decision
        ready = []
        for req, dim0s, fuses in decision.ready:
            full = [0] * self.size
            for r, d in zip(self.members, dim0s):
                full[r] = d
            ready.append((req, tuple(full), fuses))
        decision.ready = ready
        return decision

    def decide_fast(self, table: List[List[int]], pending: Sequence[Request]) -> Optional[Decision]:
        """The common prefix of every rank's heads, or None when there is none."""
        first, heads = table[0], self.heads
        count = min(row[1] for row in table)
        end = heads + 3 * count
        if all(row[heads:end:3] == first[heads:end:3] for row in table):
            common = count            # the usual case: every rank has the same heads
        else:
            common = 0
            while common < count:
                slot = heads + 3 * common
                if any(row[slot] != first[slot] for row in table):
                    break
                common += 1
        if common == 0:
            return None
        decision = Decision()
        for k in range(common):
            slot = heads + 3 * k
            decision.ready.append((pending[k], tuple(row[slot + 1] for row in table),
                                   k > 0 and all(row[slot + 2] for row in table)))
        if first[self.topo]:
            problem = self.topology_problem([row[self.topo + 1:self.carry] for row in table])
            if problem:
                decision.errors.append((pending[0], ValueError(problem)))
                decision.ready.clear()
        return decision


def summary(req: Request) -> tuple:
    sends = None if req.sends is None else tuple(sorted(req.sends))
    recvs = None if req.recvs is None else tuple(sorted(req.recvs))
    return (req.name, req.signature, req.dim0, sends, recvs)


def decide_slow(lists: Sequence[Sequence[tuple]], blocked: Sequence[bool],
                pending: Sequence[Request], ranks: Optional[Sequence[int]] = None) -> Decision:
    """Match by name across every rank's full list of pending summaries."""
    by_name: List[Dict[str, tuple]] = [{s[0]: s for s in lst} for lst in lists]
    mine = {req.name: req for req in pending}
    decision = Decision()
    for entry in lists[0]:
        name = entry[0]
        if not all(name in table for table in by_name):
            continue
        rows = [table[name] for table in by_name]
        req = mine[name]
        odd = [r for r, row in enumerate(rows) if row[1] != rows[0][1]]
        if odd:
            detail = "; ".join(f"rank {r}: {rows[r][1]}" for r in [0] + odd[:3])
            decision.errors.append((req, ValueError(
                f"Mismatched operations, data types or shapes for '{name}' across ranks ({detail}). "
                "Every rank must call the same op with the same dtype and shape under one name.")))
            continue
        if rows[0][3] is not None:
            problem = topology_mismatch([row[3] for row in rows], [row[4] for row in rows], ranks)
            if problem:
                decision.errors.append((req, ValueError(problem)))
                continue
        decision.ready.append((req, tuple(row[2] for row in rows), False))
    if decision.empty() and all(blocked):
        waits = "; ".join(f"rank {r}: {[s[0] for s in lst[:4]]}"
                          for r, lst in zip(ranks or range(len(lists)), lists))
        decision.stuck = ("Mismatched collective calls across ranks: every rank is waiting and no op "
                          f"was submitted by all of them ({waits}). Check that every rank calls the "
                          "same ops with the same names.")
    return decision


def check_topology(comm, layout: Layout, req: Request):
    """Skip-negotiate mode: the topology check of ``req`` as its own collective (a kernel step)."""
    mine = np.array(layout.topology_words(req), dtype=np.uint64)
    table = np.empty((layout.table.shape[0], mine.size), dtype=np.uint64)
    yield [comm.Iallgather(mine, table)]
    problem = layout.topology_problem(table.tolist())
    if problem:
        raise ValueError(problem)


def _joined(cache: dict, record: np.ndarray, data: Optional[np.ndarray]) -> np.ndarray:
    """``record`` followed by ``data`` (if any), built once per distinct ``data`` object; the
    messages stay referenced (by the caller's dict) until the sends complete."""
    if data is None:
        return record
    found = cache.get(id(data))
    if found is None:
        found = cache[id(data)] = np.concatenate([record, data])
    return found


def negotiate(comm, layout: Layout, pending: List[Request], blocked: bool):
    """One round, as a kernel: yields MPI requests, returns a :class:`Decision`."""
    if layout.table.shape[0] == 1:
        previous, ready = None, []
        for req in pending:
            ready.append((req, (req.dim0,), req.fusion_key is not None and req.fusion_key == previous))
            previous = req.fusion_key
        return layout.world_dim0s(Decision(ready=ready))
    if layout.size > P2P_ROUND_LIMIT or layout.members is not None:
        layout.record(pending, blocked)
        yield [comm.Iallgather(layout.mine, layout.table)]
        rows = layout.table[:, :layout.heads + 3 * int(layout.table[:, 1].min())].tolist()
        return (yield from settle(comm, layout, rows, pending, frozenset()))
    carrying = {}
    head = pending[0]
    if len(pending) == 1 and head.carry is not None and 0 < head.nbytes <= CARRY_MAX:
        carrying = head.carry()
    record = layout.record(pending, blocked, carrying).view(np.uint8)   # bytes, like the inbox
    yield layout.post(comm, record, carrying)
    return (yield from settle(comm, layout, layout.received_rows(), pending, frozenset(carrying)))


def settle(comm, layout: Layout, rows: List[List[int]], pending: List[Request],
           delivered: FrozenSet[int]):
    """The rest of a round once every record is in (``rows``, this rank's included; ``delivered``:
    the ranks this rank carried its head op's data to): decide, by the common prefix when there
    is one, else by the slow path's exchange of summaries.  A kernel, like :func:`negotiate`."""
    MPI = mpi()
    used = layout.heads + 3 * min(row[1] for row in rows)
    table = [row[:used] for row in rows]
    decision = layout.decide_fast(table, pending)
    if decision is not None:
        if layout.members is not None:
            return layout.world_dim0s(decision)
        if decision.ready and layout.size <= P2P_ROUND_LIMIT:
            decision.carried = layout.carried_data(rows, decision.ready[0][0], delivered)
        return decision
    payload = np.frombuffer(pickle.dumps([summary(r) for r in pending[:MAX_SLOW_SUMMARIES]]),
                            dtype=np.uint8)
    length = np.array([payload.size], dtype=np.int64)
    lengths = np.empty(len(rows), dtype=np.int64)
    yield [comm.Iallgather(length, lengths)]   # (kept referenced until complete)
    displs = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    gathered = np.empty(int(lengths.sum()), dtype=np.uint8)
    yield [comm.Iallgatherv(payload, [gathered, lengths, displs, MPI.BYTE])]
    lists = [pickle.loads(gathered[d:d + n].tobytes()) for d, n in zip(displs, lengths)]
    return layout.world_dim0s(decide_slow(lists, [bool(row[0]) for row in table], pending,
                                          layout.members))
