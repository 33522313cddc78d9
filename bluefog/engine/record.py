"""The round record and the round decision: pure functions of the records, no MPI, no buffers.

Every rank with pending ops sends every other rank a *record* (see ``negotiation.py`` for how it
travels); every rank then runs the same decision on the same table of records, so all reach the
same verdict without further messages.  A record is a list of 64-bit words::

    [blocked, head count, topology flag, send bitmap, receive bitmap, carried-to bitmap, heads...]

with three words per head (digest of name + signature, first dim, fuses-with-previous).  The
bitmaps hold ``words = ceil(size / 64)`` words each.

* :meth:`Record.decide_fast`: the longest common prefix of the digest lists runs, in that order,
  consecutive ops fused where every rank allows it; a topology-checked op is negotiated alone.
* :func:`decide_slow` (when there is no common prefix): names present on every rank run in rank
  0's order, mismatched signatures become a ``ValueError`` on every rank, and a round where nothing
  can run while every rank is blocked is reported as a deadlock.

Example::

    record = Record(size=4, me=0)
    words = record.encode(pending, blocked=True)
    decision = record.decide_fast(table_of_every_ranks_words, pending)
"""

import dataclasses
from typing import Dict, FrozenSet, List, Optional, Sequence, Tuple

import numpy as np

from bluefog.engine.request import Request

MAX_HEADS = 128
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
    """What moved with a round's records for the op it decided first (``negotiation.py``)."""

    # source rank -> the bytes of its data for this rank: a view of the round inbox, valid until
    # the next round starts (the kernel reads it when launched, right after the decision)
    received: Dict[int, np.ndarray]
    delivered: FrozenSet[int]         # ranks this rank already sent its data to
    # an op carried to all: every rank's data (this rank's own included), one row per rank in rank
    # order, as bytes: a view of the inbox (read at launch, like ``received``)
    stacked: Optional[np.ndarray] = None


def bitmap(ranks, words: int) -> List[int]:
    """``ranks`` as a bitmap of ``words`` 64-bit words."""
    bits = [0] * words
    for r in ranks:
        bits[r // 64] |= 1 << (r % 64)
    return bits


def bitmap_ranks(words: Sequence[int], size: int) -> List[int]:
    """The ranks set in a :func:`bitmap`."""
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


class Record:
    """The record format of a world of ``size`` ranks seen from rank ``me``, and the fast decision.

    ``members``: fault-tolerant mode, the survivors (world ranks); the table then has one row per
    survivor, in that order.
    """

    def __init__(self, size: int, me: int, members: Optional[List[int]] = None):
        self.size = size
        self.me = me
        self.members = members
        self.words = (size + 63) // 64
        self.topo = 2                                   # the topology flag's index
        self.carry = self.topo + 1 + 2 * self.words     # the carried-to bitmap's index
        self.heads = self.carry + self.words            # the first head's index
        self.length = self.heads + 3 * MAX_HEADS        # the fixed length (Iallgather rounds)
        self.rows = size if members is None else len(members)
        # every rank's other ranks (whom it carries an allreduce's data to), this rank's own
        all_but = [[q for q in range(size) if q != r] for r in range(size)]
        self.others = all_but[me]
        # the carried-to bitmaps of a round in which every rank carried to every other rank
        self.to_all_others = [bitmap(ranks, self.words) for ranks in all_but]

    def encode(self, pending: Sequence[Request], blocked: bool, carried_to=()) -> List[int]:
        """The record of a rank whose pending ops are ``pending`` (its first heads, their first
        dims, topology bits) and whose head op's data is carried to the ranks ``carried_to``."""
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
        words = [int(blocked), len(heads) // 3, int(topology is not None)]
        words += topology or [0] * (2 * self.words)
        words += bitmap(carried_to, self.words) if carried_to else [0] * self.words
        return words + heads

    def used(self, words: Sequence[int]) -> int:
        """How many words of a record are in use (up to its last head)."""
        return self.heads + 3 * int(words[1])

    def topology_words(self, req: Request) -> List[int]:
        """The send bitmap then the receive bitmap of a checked request."""
        return bitmap(req.sends, self.words) + bitmap(req.recvs, self.words)

    def topology_problem(self, rows) -> Optional[str]:
        """:func:`topology_mismatch` over every rank's :meth:`topology_words`."""
        w = self.words
        return topology_mismatch([bitmap_ranks(row[:w], self.size) for row in rows],
                                 [bitmap_ranks(row[w:2 * w], self.size) for row in rows],
                                 self.members)

    def carried_to_me(self, row: Sequence[int]) -> bool:
        """Whether the rank that sent record ``row`` carried its head op's data to this rank."""
        return bool((int(row[self.carry + self.me // 64]) >> (self.me % 64)) & 1)

    def carried_to_all(self, rows: Sequence[Sequence[int]]) -> bool:
        """Whether every rank carried its data to every other rank (rows in rank order)."""
        carry, heads = self.carry, self.heads
        return all(row[carry:heads] == everyone for row, everyone in zip(rows, self.to_all_others))

    def world_dim0s(self, decision: Decision) -> Decision:
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
    """What the slow path exchanges about one pending op."""
    sends = None if req.sends is None else tuple(sorted(req.sends))
    recvs = None if req.recvs is None else tuple(sorted(req.recvs))
    return (req.name, req.signature, req.dim0, sends, recvs)


def decide_slow(lists: Sequence[Sequence[tuple]], blocked: Sequence[bool],
                pending: Sequence[Request], ranks: Optional[Sequence[int]] = None) -> Decision:
    """Match by name across every rank's full list of pending :func:`summary` tuples."""
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
