"""Dynamic topologies: infinite generators of per-iteration ``(send, recv)`` rank lists.

Each ``next()`` gives the communication pattern of one iteration.  Every rank advances its own
generator in lock-step with the others; the patterns agree across ranks by construction (if rank i
sends to j at iteration t, then j's ``recv`` contains i at iteration t).  Arguments are checked when
the generator is created; results are lists of Python ints.

Example::

    >>> gen = GetDynamicOnePeerSendRecvRanks(ExponentialGraph(8), 0)
    >>> send, recv = next(gen)            # ([1], [7])
    >>> w = 1 / (len(recv) + 1)
    >>> # x = bf.neighbor_allreduce(x, self_weight=w, src_weights={r: w for r in recv},
    >>> #                           dst_weights=send)
"""

from __future__ import annotations

import itertools
from typing import Iterator, List, Tuple

import networkx as nx

from .generators import TopologyArgumentError, _require_int, _require_rank
from .weights import _require_digraph

__all__ = [
    "GetDynamicOnePeerSendRecvRanks",
    "GetExp2DynamicSendRecvMachineRanks",
    "GetInnerOuterRingDynamicSendRecvRanks",
    "GetInnerOuterExpo2DynamicSendRecvRanks",
]

SendRecv = Tuple[List[int], List[int]]


def _floor_log2(value: int) -> int:
    return value.bit_length() - 1


# ----------------------------------------------------------------------------- one peer per round

def _clockwise_peers(topo: nx.DiGraph, rank: int, size: int) -> List[int]:
    """Out-neighbours of ``rank`` except itself, by clockwise distance ``(s - rank) mod size``."""
    return sorted((int(s) for s in topo.successors(rank) if s != rank),
                  key=lambda s: (s - rank) % size)


def _one_peer_rounds(peers: List[List[int]], self_rank: int) -> Iterator[SendRecv]:
    stuck = [rank for rank, out in enumerate(peers) if not out]
    if stuck:
        raise TopologyArgumentError(
            f"topo: rank(s) {stuck} have no out-neighbour other than themselves, so a one-peer "
            "schedule cannot pick whom they send to")
    for t in itertools.count():
        send = peers[self_rank][t % len(peers[self_rank])]
        recv = [rank for rank, out in enumerate(peers)
                if rank != self_rank and out[t % len(out)] == self_rank]
        yield [send], recv


def GetDynamicOnePeerSendRecvRanks(topo: nx.DiGraph, self_rank: int) -> Iterator[SendRecv]:
    """Each round every rank sends to one out-neighbour, cycling through them clockwise.

    At iteration t rank r sends to the ``t mod deg_r``-th of its out-neighbours (self excluded,
    sorted by clockwise distance); ``recv`` lists, ascending, the ranks sending to ``self_rank``.
    Self-loops are optional.  A rank without any other out-neighbour makes the generator raise
    ``ValueError`` when advanced.

    Example::

        >>> gen = GetDynamicOnePeerSendRecvRanks(ExponentialGraph(8), 0)
        >>> [next(gen) for _ in range(3)]
        [([1], [7]), ([2], [6]), ([4], [4])]
    """
    size = _require_digraph("topo", topo).number_of_nodes()
    if set(topo.nodes()) != set(range(size)):
        raise TopologyArgumentError(f"topo must have the nodes 0..{size - 1} (one per rank)")
    self_rank = _require_rank("self_rank", self_rank, size, "topo size")
    peers = [_clockwise_peers(topo, rank, size) for rank in range(size)]
    return _one_peer_rounds(peers, self_rank)


# ----------------------------------------------------------------------------- machine-aware

def _machine_layout(world_size, local_size, self_rank) -> Tuple[int, int, int]:
    """Check a homogeneous layout; return (machines, self machine, self local rank)."""
    world_size = _require_int("world_size", world_size, 1)
    local_size = _require_int("local_size", local_size, 1)
    if world_size % local_size:
        raise TopologyArgumentError(
            f"local_size must divide world_size (homogeneous machines only): world_size="
            f"{world_size}, local_size={local_size}")
    self_rank = _require_rank("self_rank", self_rank, world_size, "world_size")
    return world_size // local_size, self_rank // local_size, self_rank % local_size


def _require_inner_ring(local_size: int) -> None:
    if local_size <= 2:
        raise TopologyArgumentError(f"local_size must be > 2 (the inner ring skips one local "
                                    f"rank per round), got {local_size}")


def _exchange(send_machine: int, send_local: int, recv_machine: int, recv_local: int,
              local_size: int) -> SendRecv:
    return ([send_machine * local_size + send_local], [recv_machine * local_size + recv_local])


def GetExp2DynamicSendRecvMachineRanks(world_size: int, local_size: int, self_rank: int,
                                       local_rank: int) -> Iterator[SendRecv]:
    """One-peer exponential-2 schedule over **machine ids** (for the hierarchical op).

    Machine m sends to ``(m + 2**k) mod M`` and receives from ``(m - 2**k) mod M`` with
    ``k = t mod (floor(log2(M - 1)) + 1)``.  Needs at least two machines.

    Example::

        >>> gen = GetExp2DynamicSendRecvMachineRanks(20, 2, 0, 0)     # 10 machines
        >>> [next(gen)[0][0] for _ in range(5)]
        [1, 2, 4, 8, 1]
    """
    machines, machine, local = _machine_layout(world_size, local_size, self_rank)
    if local_rank != local:
        raise TopologyArgumentError(
            f"local_rank must equal self_rank % local_size = {local}, got {local_rank!r}")
    if machines < 2:
        raise TopologyArgumentError(f"world_size must exceed local_size (at least two machines): "
                                    f"world_size={world_size}, local_size={local_size}")
    return _machine_exp2_rounds(machines, machine)


def _machine_exp2_rounds(machines: int, machine: int) -> Iterator[SendRecv]:
    period = _floor_log2(machines - 1) + 1
    for t in itertools.count():
        dist = 1 << (t % period)
        yield [(machine + dist) % machines], [(machine - dist) % machines]


def GetInnerOuterRingDynamicSendRecvRanks(world_size: int, local_size: int,
                                          self_rank: int) -> Iterator[SendRecv]:
    """Inner ring inside each machine plus one outgoing rank per machine and round.

    At iteration t local rank ``o = t mod L`` talks to the same local rank on the next machine
    (and hears from the previous one); the other local ranks form a ring that skips ``o``.

    Example::

        >>> gen = GetInnerOuterRingDynamicSendRecvRanks(12, 4, 0)
        >>> [next(gen) for _ in range(4)]
        [([4], [8]), ([2], [3]), ([1], [3]), ([1], [2])]
    """
    machines, machine, local = _machine_layout(world_size, local_size, self_rank)
    _require_inner_ring(local_size)
    return _inner_outer_rounds(machines, machine, local, local_size, expo2=False)


def GetInnerOuterExpo2DynamicSendRecvRanks(world_size: int, local_size: int,
                                           self_rank: int) -> Iterator[SendRecv]:
    """Like the inner/outer ring, but both hops follow exponential-2 distances.

    The outgoing local rank ``o = t mod L`` reaches machine ``m ± 2**(t mod (floor(log2(M-1))+1))``;
    the others hop ``2**(t mod (floor(log2(L-2))+1))`` local ranks, one further when the hop would
    reach or pass ``o``.  Needs at least two machines.

    Example::

        >>> gen = GetInnerOuterExpo2DynamicSendRecvRanks(16, 8, 0)
        >>> [next(gen) for _ in range(3)]
        [([8], [8]), ([3], [6]), ([5], [4])]
    """
    machines, machine, local = _machine_layout(world_size, local_size, self_rank)
    _require_inner_ring(local_size)
    if machines < 2:
        raise TopologyArgumentError(f"world_size must exceed local_size (at least two machines "
                                    f"for the outer exponential hops): world_size={world_size}, "
                                    f"local_size={local_size}")
    return _inner_outer_rounds(machines, machine, local, local_size, expo2=True)


def _skip_outgoing(hop: int, gap: int) -> int:
    """Lengthen ``hop`` by one when it reaches or passes the outgoing rank ``gap`` steps away."""
    return hop + 1 if hop >= gap else hop


def _inner_outer_rounds(machines: int, machine: int, local: int, local_size: int,
                        expo2: bool) -> Iterator[SendRecv]:
    outer_period = _floor_log2(machines - 1) + 1 if expo2 else 1
    inner_period = _floor_log2(local_size - 2) + 1 if expo2 else 1
    for t in itertools.count():
        outgoing = t % local_size
        if local == outgoing:
            dist = 1 << (t % outer_period)
            yield _exchange((machine + dist) % machines, local,
                            (machine - dist) % machines, local, local_size)
            continue
        hop = 1 << (t % inner_period)
        send = (local + _skip_outgoing(hop, (outgoing - local) % local_size)) % local_size
        recv = (local - _skip_outgoing(hop, (local - outgoing) % local_size)) % local_size
        yield _exchange(machine, send, machine, recv, local_size)
