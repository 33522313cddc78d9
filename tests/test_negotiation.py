"""The round record, the round decision and the mailbox, without MPI.

A loopback round: each simulated rank writes its record (and carried data) into its outbox, the
test copies every outbox prefix into every other rank's inbox row as the point-to-point messages
would, and each rank settles the round.  Decisions must agree on every rank.
"""

import numpy as np
import pytest

from bluefog.engine import negotiation
from bluefog.engine.lone import LoneRound
from bluefog.engine.mailbox import MAX_PERSISTENT_SENDS, Mailbox
from bluefog.engine.record import (TOPOLOGY_MISMATCH, Record, decide_slow, summary,
                                   topology_mismatch)
from bluefog.engine.request import Request


def op(name, shape=(4,), dim0=None, fusion_key=None, sends=None, recvs=None, nbytes=16,
       carry_to_all=False):
    return Request(name=name, signature=("allreduce", "float32", shape), start=None, handle=None,
                   dim0=shape[0] if dim0 is None else dim0, fusion_key=fusion_key,
                   sends=None if sends is None else frozenset(sends),
                   recvs=None if recvs is None else frozenset(recvs), nbytes=nbytes,
                   carry_to_all=carry_to_all)


def settled(box, rows, pending, delivered=frozenset()):
    """Run ``negotiation.settle`` where it needs no messages (the fast path)."""
    kernel = negotiation.settle(None, box, rows, pending, delivered)
    with pytest.raises(StopIteration) as stop:
        next(kernel)
    return stop.value.value


def loopback(size, pendings, carrying=None, blocked=True, boxes=None):
    """Every rank's mailbox after a point-to-point round of ``pendings[r]`` (``carrying[r]``:
    {destination: bytes} rank r carries), and every rank's decision (``boxes``: the mailboxes of
    an earlier round, to run another one through them)."""
    carrying = carrying or [{} for _ in range(size)]
    boxes = boxes or [Mailbox(Record(size, r), point_to_point=True) for r in range(size)]
    for s, box in enumerate(boxes):
        mine = box.write(box.record.encode(pendings[s], blocked, carrying[s])).view(np.uint8)
        box.stage(mine, carrying[s])                       # as ``Mailbox.post`` does
        for d in box.record.others:
            message = bytes(mine)
            data = carrying[s].get(d)
            if data is not None:
                message += bytes(data)
            boxes[d].inbox[s, :len(message)] = np.frombuffer(message, dtype=np.uint8)
    return boxes, [received(box, pendings[r], frozenset(carrying[r])) for r, box in enumerate(boxes)]


def received(box, pending, delivered):
    """Run ``negotiation.settle_received`` where it needs no messages (the fast path)."""
    kernel = negotiation.settle_received(None, box, pending, delivered)
    with pytest.raises(StopIteration) as stop:
        next(kernel)
    return stop.value.value


def names(decision):
    return [req.name for req, _, _ in decision.ready]


# ---- the fast decision ---------------------------------------------------------------------------

def test_common_prefix_runs_in_order_with_every_ranks_first_dim():
    pendings = [[op("a", dim0=1 + r), op("b"), op("c")] for r in range(3)]
    pendings[2] = pendings[2][:2]                      # rank 2 has only a, b so far
    _, decisions = loopback(3, pendings)
    for decision in decisions:
        assert names(decision) == ["a", "b"]
        assert decision.ready[0][1] == (1, 2, 3)      # every rank's first dim, in rank order
        assert not decision.errors and decision.stuck is None


def test_prefix_stops_at_the_first_difference():
    pendings = [[op("a"), op("b"), op("c")], [op("a"), op("x"), op("c")]]
    _, decisions = loopback(2, pendings)
    assert [names(d) for d in decisions] == [["a"], ["a"]]


def test_no_common_head_is_no_fast_decision():
    record = Record(2, 0)
    table = [record.encode([op("a")], True), record.encode([op("b")], True)]
    assert record.decide_fast(table, [op("a")]) is None


def test_fusion_needs_every_rank_to_allow_it():
    fused = [op("a", fusion_key="k"), op("b", fusion_key="k")]
    apart = [op("a", fusion_key="k"), op("b", fusion_key="other")]
    _, decisions = loopback(2, [fused, apart])
    for decision in decisions:
        assert [fuses for _, _, fuses in decision.ready] == [False, False]
    _, decisions = loopback(2, [fused, list(fused)])
    assert [fuses for _, _, fuses in decisions[0].ready] == [False, True]


def test_a_checked_op_is_negotiated_alone_and_its_topology_checked():
    ring = [op("n", sends=[(r + 1) % 3], recvs=[(r - 1) % 3]) for r in range(3)]
    _, decisions = loopback(3, [[ring[r], op("after")] for r in range(3)])
    for decision in decisions:
        assert names(decision) == ["n"] and not decision.errors
    broken = list(ring)
    broken[1] = op("n", sends=[0], recvs=[0])          # rank 1 sends back instead of forward
    _, decisions = loopback(3, [[broken[r]] for r in range(3)])
    for decision in decisions:
        assert decision.ready == []
        (req, error), = decision.errors
        assert req.name == "n" and str(error).startswith(TOPOLOGY_MISMATCH)


def test_fault_tolerant_first_dims_are_indexed_by_world_rank():
    record = Record(4, 1, members=[0, 1, 3])
    table = [record.encode([op("a", dim0=d)], True) for d in (5, 6, 7)]
    decision = record.world_dim0s(record.decide_fast(table, [op("a")]))
    assert decision.ready[0][1] == (5, 6, 0, 7)


# ---- carried data --------------------------------------------------------------------------------

def test_carried_neighbor_data_is_read_from_the_inbox():
    size = 3
    datas = [np.full(4, 10 + r, dtype=np.float32).view(np.uint8) for r in range(size)]
    carrying = [{(r + 1) % size: datas[r]} for r in range(size)]      # a ring
    pendings = [[op("n", nbytes=16)] for _ in range(size)]
    _, decisions = loopback(size, pendings, carrying)
    for r, decision in enumerate(decisions):
        carried = decision.carried
        assert carried.delivered == {(r + 1) % size}
        source = (r - 1) % size
        assert list(carried.received) == [source]
        assert carried.received[source].view(np.float32).tolist() == [10 + source] * 4


def test_allreduce_data_is_stacked_only_when_every_rank_carried_to_all():
    size = 3
    datas = [np.full(2, r + 1, dtype=np.float64).view(np.uint8) for r in range(size)]
    everyone = [{d: datas[r] for d in range(size) if d != r} for r in range(size)]
    pendings = [[op("a", nbytes=16, carry_to_all=True)] for _ in range(size)]
    _, decisions = loopback(size, pendings, everyone)
    for decision in decisions:
        rows = decision.carried.stacked.view(np.float64)
        assert rows.tolist() == [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]
    partly = [dict(everyone[0]), {}, dict(everyone[2])]               # rank 1 carried nothing
    _, decisions = loopback(size, pendings, partly)
    assert decisions[1].carried is None and decisions[0].carried is None


def test_a_lone_round_sends_an_ordinary_record_and_takes_the_remembered_verdict():
    """A lone round sends the record ``Record.encode`` makes for an ordinary round of its op alone,
    its data right after it; its verdict is the one the ordinary round remembered."""
    import torch
    size, me = 3, 1
    datas = [np.full(4, r + 1, dtype=np.float32).view(np.uint8) for r in range(size)]
    everyone = [{d: datas[r] for d in range(size) if d != r} for r in range(size)]
    pendings = [[op("a", nbytes=16, carry_to_all=True)] for _ in range(size)]
    boxes, decisions = loopback(size, pendings, everyone)          # an ordinary round
    box = boxes[me]
    request = pendings[me][0]
    request.carry = lambda: everyone[me]
    plan = LoneRound(box, request, torch.zeros(4), lambda x, carried: carried)
    assert plan.record == box.record.encode([request], True, [0, 2]) == box.mine_list
    assert (plan.data_to, plan.record_to) == ((0, 2), ())
    assert (plan.start, plan.length) == (8 * (box.record.heads + 3), 8 * (box.record.heads + 3) + 16)
    dim0s, carried = box.recall(request.signature)[1]
    assert carried is decisions[me].carried and dim0s == (4, 4, 4)
    assert carried.stacked.view(np.float32).tolist() == [[r + 1.0] * 4 for r in range(size)]
    box.inbox[0, 8 * box.record.heads] ^= 1                   # rank 0 sent another op's record
    assert box.recall(request.signature)[1] is None


def test_a_prepared_round_makes_the_digest_a_request_makes():
    """A lone round hashes each call's name onto its signature's hash, prepared once; the digest
    is the one the op's request gives, so ranks on either path agree."""
    from bluefog.engine.request import digest_of, name_digest, signature_hash
    request = op("allreduce.noname.7")
    hashed = signature_hash(request.signature)
    assert name_digest(hashed, request.name) == request.digest() == digest_of(request.name,
                                                                              request.signature)
    assert name_digest(hashed, "allreduce.noname.8") != request.digest()
    assert name_digest(hashed, request.name) == request.digest()      # (the prepared hash is kept)
    assert 0 <= request.digest() < 1 << 63


# ---- decisions remembered ------------------------------------------------------------------------

def test_a_decided_table_is_remembered_for_the_same_op_under_a_new_name():
    """A loop of nameless ops: each call has a new name, so new digests, but the same table
    otherwise; the second round takes the remembered verdict without reading the records."""
    size = 3
    datas = [np.full(4, r, dtype=np.float32).view(np.uint8) for r in range(size)]
    carrying = [{(r + 1) % size: datas[r]} for r in range(size)]
    boxes, first = loopback(size, [[op("noname.1", nbytes=16)]] * size, carrying)
    for box in boxes:
        box.received_rows = None                     # (reading the records again would fail)
    _, second = loopback(size, [[op("noname.2", nbytes=16)]] * size, carrying, boxes=boxes)
    for box, a, b in zip(boxes, first, second):
        assert names(b) == ["noname.2"] and b.ready[0][1] == a.ready[0][1] == (4, 4, 4)
        assert b.carried is a.carried and len(box.decided) == 1


def test_a_verdict_is_shared_by_blocked_and_unblocked_ranks():
    """Whether a rank waits (a blocking call) is in its record but not in the verdict's key: the
    fast decision does not read it."""
    boxes, first = loopback(2, [[op("a")]] * 2, blocked=True)
    for box in boxes:
        box.received_rows = None                     # (reading the records again would fail)
    _, second = loopback(2, [[op("a")]] * 2, blocked=False, boxes=boxes)
    assert [d.ready[0][1] for d in second] == [d.ready[0][1] for d in first] == [(4, 4)] * 2
    assert all(len(box.decided) == 1 for box in boxes)


def test_remembered_verdicts_tell_tables_and_signatures_apart():
    size = 2
    boxes, _ = loopback(size, [[op("a")]] * size)
    _, decisions = loopback(size, [[op("a", dim0=1)], [op("a", dim0=2)]], boxes=boxes)
    assert decisions[0].ready[0][1] == (1, 2)                 # another table: decided anew
    _, decisions = loopback(size, [[op("b", shape=(4, 2))]] * size, boxes=boxes)
    assert names(decisions[0]) == ["b"]                       # another signature: decided anew
    assert all(len(box.decided) == 3 for box in boxes)


def test_only_one_head_tables_with_one_op_everywhere_are_remembered():
    boxes, decisions = loopback(2, [[op("a"), op("b")]] * 2)
    assert names(decisions[0]) == ["a", "b"] and not boxes[0].decided
    boxes, decisions = loopback(2, [[op("a")], [op("a"), op("b")]])
    assert names(decisions[0]) == ["a"] and not boxes[0].decided
    boxes, _ = loopback(2, [[op("a")], [op("a")]])
    assert boxes[0].records_key(op("a").signature) is not None
    boxes[1].inbox[0, 8 * boxes[1].record.heads] ^= 1         # rank 0's digest, as rank 1 saw it
    assert boxes[1].records_key(op("a").signature) is None


# ---- the slow decision ---------------------------------------------------------------------------

def test_slow_path_runs_common_names_in_rank_0_order():
    mine = [op("b"), op("a"), op("only_here")]
    lists = [[summary(op(n)) for n in ("a", "b", "only_here")], [summary(op(n)) for n in ("b", "a")]]
    decision = decide_slow(lists, [True, True], mine)
    assert names(decision) == ["a", "b"] and decision.stuck is None


def test_slow_path_reports_mismatched_signatures_on_every_rank():
    lists = [[summary(op("a", shape=(4,)))], [summary(op("a", shape=(5,)))]]
    for mine in ([op("a", shape=(4,))], [op("a", shape=(5,))]):
        decision = decide_slow(lists, [True, True], mine)
        (req, error), = decision.errors
        assert "Mismatched operations, data types or shapes for 'a'" in str(error)
        assert "rank 1:" in str(error) and decision.ready == []


def test_slow_path_checks_topology():
    lists = [[summary(op("n", sends=[1], recvs=[]))], [summary(op("n", sends=[], recvs=[]))]]
    decision = decide_slow(lists, [False, False], [op("n", sends=[1], recvs=[])])
    (_, error), = decision.errors
    assert "rank 0 sends to rank 1 but rank 1 does not receive from it" in str(error)


def test_deadlock_only_when_every_rank_is_blocked():
    lists = [[summary(op("a"))], [summary(op("b"))]]
    assert decide_slow(lists, [True, False], [op("a")]).stuck is None
    stuck = decide_slow(lists, [True, True], [op("a")]).stuck
    assert stuck.startswith("Mismatched collective calls across ranks")
    assert "rank 0: ['a']; rank 1: ['b']" in stuck


# ---- topology check ------------------------------------------------------------------------------

def test_topology_mismatch_names_the_first_broken_edge():
    assert topology_mismatch([[1], [0]], [[1], [0]]) is None
    assert "rank 0 sends to rank 1 but rank 1 does not receive from it" in topology_mismatch(
        [[1], []], [[], []])
    assert "rank 1 receives from rank 0 but rank 0 does not send to it" in topology_mismatch(
        [[], []], [[], [0]])
    # fault-tolerant: entries are the survivors 0 and 2; edges to the dead rank 1 do not count
    assert topology_mismatch([[1, 2], [0]], [[2], [0, 1]], ranks=[0, 2]) is None


# ---- mailbox -------------------------------------------------------------------------------------

class _Request:
    freed = False

    def Free(self):
        self.freed = True


class _Comm:
    def Send_init(self, buffer, dest, tag):
        return _Request()


def test_persistent_sends_in_use_are_never_the_ones_freed():
    """A lone neighbor round starts two groups of persistent sends; taking the second must not
    free the first, even when the first was made long ago (least recently *used* goes first)."""
    box, comm = Mailbox(Record(4, 0), point_to_point=True), _Comm()
    first = box.sends(comm, 100, (1, 2))
    for k in range(MAX_PERSISTENT_SENDS - 1):
        box.sends(comm, 200 + k, (1, 2, 3))
    assert box.sends(comm, 100, (1, 2)) is first          # kept, and now the most recent
    second = box.sends(comm, 50, (3,))
    assert not any(request.freed for request in first + second)
    assert len(box._sends) == MAX_PERSISTENT_SENDS
    oldest = box.sends(comm, 200, (1, 2, 3))               # was freed to make room: made anew
    assert not any(request.freed for request in oldest)


def test_mailbox_beyond_the_point_to_point_limit_has_no_inbox():
    assert negotiation.mailbox_for(4, 0).point_to_point
    assert not negotiation.mailbox_for(negotiation.P2P_ROUND_LIMIT + 1, 0).point_to_point
    assert not negotiation.mailbox_for(4, 0, members=[0, 1, 2, 3]).point_to_point
