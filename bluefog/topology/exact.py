"""Finite-time exact averaging: schedules of mixing matrices whose product is ``11^T / n``.

A *schedule* is a list of dense float64 ``size x size`` matrices ``[W_1, ..., W_T]``, one per
communication round, in the convention of the rest of :mod:`bluefog.topology`: ``W[i, j]`` is the
weight of the edge ``i -> j`` (row = sender, column = receiver), i.e. the weight that rank ``j``
gives to rank ``i``'s value.  One round maps ``x`` to ``W^T x`` (``x_new[j] = sum_i W[i, j] x[i]``),
so after the whole schedule ``x^T`` has become ``x^T W_1 W_2 ... W_T``; a schedule averages exactly
when that product, taken in order, is ``ones((n, n)) / n``.

:func:`exact_average_schedule` builds such a schedule for every ``size`` with at most ``k`` peers in
and ``k`` peers out per rank and round.  Its matrices are symmetric and doubly stochastic (so the
network average is kept by every round, not only by the whole period) and it takes at most
``2 * ceil(log_{k+1}(size)) + 2`` rounds (``log_{k+1}(size)`` rounds when size is a power of
``k + 1``).  The construction, written for this project:

* up to ``k + 1`` ranks average in one round (each talks to all the others);
* a size ``n = d * e`` runs d's schedule inside every group of d ranks (in parallel), then e's
  schedule across the groups: ``d + e`` rounds, each round a product of exact averages;
* any size n can be split into a block A of ``a >= n / 2`` ranks (a size that factors into parts
  ``<= k + 1``, so a product of one-round cliques) and the rest R (``s = n - a`` ranks, scheduled
  recursively, in parallel with A).  When A has averaged, each rank of R swaps with its own rank
  of A with weight ``a / n`` (a 2 x 2 doubly stochastic block), then A runs its schedule again.
  R's ranks all take A's mean with the same weight in the same round and R's remaining rounds keep
  constants, so R ends on the global mean; A's sum has absorbed R's share, so A's second pass ends
  there too.

Why the bound holds (induction on n, b = k + 1, ``b^p < n < b^(p+1)``): take ``a = d * b^p``,
the leading digit of n in base b times its place; A needs at most ``p + 1`` rounds (p cliques of b
and one of d) and ``s = n - a < b^p`` needs at most ``2p + 2`` by induction, so the split takes at
most ``max(2(p + 1) + 1, 2p + 2 + 1) = 2p + 3 <= 2 ceil(log_b n) + 2`` rounds; a power of b takes
p.  The builder tries this plan, other splits and every factorisation, and keeps the shortest.

:func:`one_peer_exponential_schedule` is the one-peer exponential graph (each rank sends to
``rank + 2^t``); it averages exactly when the size is a power of two.  :func:`schedule_rounds`
turns any schedule into what one rank does per round, ready for ``bf.neighbor_allreduce``.

Example::

    >>> import numpy as np
    >>> from bluefog.topology import exact_average_schedule, exact_average_rounds
    >>> ws = exact_average_schedule(6, k=1)
    >>> np.allclose(np.linalg.multi_dot(ws), np.full((6, 6), 1 / 6))
    True
    >>> # for rnd in exact_average_rounds(bf.size(), bf.rank(), k=1):
    >>> #     x = bf.neighbor_allreduce(x, self_weight=rnd.self_weight,
    >>> #                               src_weights=rnd.src_weights, dst_weights=rnd.send_ranks)
"""

from __future__ import annotations

import functools
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from .generators import _require_int, _require_rank

__all__ = [
    "ScheduleRound",
    "exact_average_schedule",
    "exact_average_rounds",
    "one_peer_exponential_schedule",
    "schedule_rounds",
    "check_schedule",
]

# One operation of a round: ("clique", ranks) averages uniformly inside ``ranks``;
# ("pair", (u, v, beta)) swaps a share ``beta`` between u and v.
_Op = Tuple[str, object]
_Round = List[_Op]

# Smooth block sizes tried per split, largest first (the guaranteed one is always tried too).
_MAX_CANDIDATES = 32


class ScheduleRound(NamedTuple):
    """What one rank does in one round of a schedule.

    ``send_ranks`` and ``recv_ranks`` are ascending lists without the rank itself; ``self_weight``
    and ``src_weights`` (``{source rank: weight}``) are the arguments of ``neighbor_allreduce``.
    A rank that sits a round out gets ``([], [], 1.0, {})``.
    """

    send_ranks: List[int]
    recv_ranks: List[int]
    self_weight: float
    src_weights: Dict[int, float]


# ----------------------------------------------------------------------------- the plan

@functools.lru_cache(maxsize=None)
def _factors(n: int, base: int) -> Optional[Tuple[int, ...]]:
    """Fewest factors in ``[2, base]`` whose product is ``n`` (``()`` for 1), or None."""
    if n == 1:
        return ()
    if n <= base:
        return (n,)
    best = None
    for f in range(min(base, n // 2), 1, -1):
        if n % f == 0:
            rest = _factors(n // f, base)
            if rest is not None and (best is None or len(rest) + 1 < len(best)):
                best = (f,) + rest
    return best


def _split_candidates(n: int, base: int) -> List[int]:
    """Block sizes ``a`` with ``n/2 <= a < n`` that factor into parts ``<= base``, largest first;
    always includes ``d * base**p`` (the leading base-``base`` digit of n times its place), which
    is what the length bound rests on."""
    place = 1
    while place * base <= n:
        place *= base
    found = {(n // place) * place}
    found.discard(n)
    for a in range(n - 1, (n + 1) // 2 - 1, -1):
        if len(found) >= _MAX_CANDIDATES:
            break
        if _factors(a, base) is not None:
            found.add(a)
    return sorted(found, reverse=True)


@functools.lru_cache(maxsize=None)
def _plan(n: int, base: int) -> Tuple[int, str, int]:
    """``(rounds, how, part)`` for n ranks, the fewest rounds among:

    * ``("clique", n)``: n <= base, one round;
    * ``("product", d)``: n = d * e, d's schedule on every column then e's on every row;
    * ``("split", a)``: A = a ranks (a hyper-cube) and the rest, joined by one pairing round.
    """
    if n <= base:
        return 1, "clique", n
    best = None
    d = 2
    while d * d <= n:
        if n % d == 0:
            length = _plan(d, base)[0] + _plan(n // d, base)[0]
            if best is None or length < best[0]:
                best = (length, "product", d)
        d += 1
    for a in _split_candidates(n, base):
        length = max(2 * _plan(a, base)[0] + 1, _plan(n - a, base)[0] + 1)
        if best is None or length < best[0]:
            best = (length, "split", a)
    return best


def _relabel(rounds: List[_Round], label) -> List[_Round]:
    out = []
    for ops in rounds:
        new = []
        for kind, data in ops:
            if kind == "clique":
                new.append((kind, tuple(label(r) for r in data)))
            else:
                new.append((kind, (label(data[0]), label(data[1]), data[2])))
        out.append(new)
    return out


def _parallel(*timelines: List[_Round]) -> List[_Round]:
    """Rounds that run the timelines side by side (they touch disjoint ranks)."""
    length = max(len(t) for t in timelines)
    return [[op for t in timelines if i < len(t) for op in t[i]] for i in range(length)]


@functools.lru_cache(maxsize=None)
def _local_rounds(n: int, base: int) -> Tuple[Tuple[_Op, ...], ...]:
    """The schedule of ranks ``0 .. n-1`` as rounds of operations (cached, hence tuples)."""
    length, how, part = _plan(n, base)
    if how == "clique":
        rounds = [[("clique", tuple(range(n)))]]
    elif how == "product":
        d, e = part, n // part                       # rank u + d * v: column v, row u
        inner = [list(r) for r in _local_rounds(d, base)]
        outer = [list(r) for r in _local_rounds(e, base)]
        rounds = (_parallel(*[_relabel(inner, lambda u, v=v: u + d * v) for v in range(e)])
                  + _parallel(*[_relabel(outer, lambda v, u=u: u + d * v) for u in range(d)]))
    else:
        a, s = part, n - part
        cube = [list(r) for r in _local_rounds(a, base)]
        rest = _relabel([list(r) for r in _local_rounds(s, base)], lambda r: r + a)
        pair = [("pair", (i, a + i, a / n)) for i in range(s)]
        rest = rest + [[] for _ in range(len(cube) - len(rest))]       # R idles until A is done
        rounds = _parallel(cube + [pair] + cube, rest[:len(cube)] + [[]] + rest[len(cube):])
    assert len(rounds) == length
    return tuple(tuple(ops) for ops in rounds)


def _rounds(n: int, base: int) -> List[_Round]:
    return [list(ops) for ops in _local_rounds(n, base)]


def _matrix(size: int, ops: _Round) -> np.ndarray:
    w = np.eye(size)
    for kind, data in ops:
        if kind == "clique":
            idx = np.array(data)
            w[np.ix_(idx, idx)] = 1.0 / len(idx)
        else:
            u, v, beta = data
            w[u, u] = w[v, v] = 1.0 - beta
            w[u, v] = w[v, u] = beta
    return w


def _require_size_k(size, k) -> Tuple[int, int]:
    return _require_int("size", size, 1), _require_int("k", k, 1)


# ----------------------------------------------------------------------------- public schedules

def exact_average_schedule(size: int, k: int = 1) -> List[np.ndarray]:
    """Mixing matrices ``[W_1, ..., W_T]`` with ``W_1 @ ... @ W_T == ones((size, size)) / size``.

    Every matrix is nonnegative, symmetric and doubly stochastic; in every round each rank
    exchanges with at most ``k`` other ranks (at most k in and k out).  ``T <= 2 *
    ceil(log_{k+1}(size)) + 2``, and ``T = log_{k+1}(size)`` for powers of ``k + 1`` (more generally
    the fewest factors ``<= k + 1`` when the size factors that way).  Size 1 gives ``[[[1.0]]]``.

    Raises:
        ValueError: ``size`` or ``k`` is not an integer ``>= 1``.

    Example::

        >>> [w.round(3).tolist() for w in exact_average_schedule(3, k=1)]
        [[[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]],
         [[0.333, 0.0, 0.667], [0.0, 1.0, 0.0], [0.667, 0.0, 0.333]],
         [[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]]
    """
    size, k = _require_size_k(size, k)
    if size == 1:
        return [np.ones((1, 1))]
    return [_matrix(size, ops) for ops in _rounds(size, k + 1)]


def one_peer_exponential_schedule(size: int) -> List[np.ndarray]:
    """One-peer exponential graph: in round t rank i sends to ``(i + 2**t) % size`` and keeps half.

    ``ceil(log2(size))`` rounds (the offsets ``2**t < size``); the product is exactly
    ``ones / size`` when size is a power of two, otherwise it only mixes well.  The rounds are the
    ones :func:`GetDynamicOnePeerSendRecvRanks` walks through on ``ExponentialGraph(size)`` with
    weights 1/2.

    Raises:
        ValueError: ``size`` is not an integer ``>= 1``.

    Example::

        >>> [int(np.flatnonzero(w[0])[-1]) for w in one_peer_exponential_schedule(4)]   # 0 sends to
        [1, 2]
    """
    size = _require_int("size", size, 1)
    if size == 1:
        return [np.ones((1, 1))]
    out, offset = [], 1
    while offset < size:
        w = np.eye(size) * 0.5
        for i in range(size):
            w[i, (i + offset) % size] += 0.5
        out.append(w)
        offset *= 2
    return out


def _as_schedule(schedule) -> List[np.ndarray]:
    if isinstance(schedule, np.ndarray) or not isinstance(schedule, Sequence) or not schedule:
        raise TypeError("schedule must be a non-empty list of square numpy arrays, got "
                        f"{type(schedule).__name__}")
    mats = [np.asarray(w, dtype=np.float64) for w in schedule]
    n = mats[0].shape[0] if mats[0].ndim == 2 else -1
    for t, w in enumerate(mats):
        if w.ndim != 2 or w.shape != (n, n):
            raise ValueError(f"schedule[{t}] must be a square matrix of the same size as "
                             f"schedule[0] ({n} x {n}), got shape {w.shape}")
    return mats


def schedule_rounds(schedule: Sequence[np.ndarray], rank: int) -> List[ScheduleRound]:
    """What ``rank`` does in each round of ``schedule``: ``ScheduleRound(send_ranks, recv_ranks,
    self_weight, src_weights)`` read off row ``rank`` (sends) and column ``rank`` (receives).

    Every rank must run every round (an idle rank calls with empty lists), in the same order:

    Example::

        rounds = schedule_rounds(exact_average_schedule(bf.size(), k=2), bf.rank())
        for rnd in rounds:
            x = bf.neighbor_allreduce(x, self_weight=rnd.self_weight,
                                      src_weights=rnd.src_weights, dst_weights=rnd.send_ranks)

    Raises:
        TypeError / ValueError: ``schedule`` is not a list of equal square matrices, or ``rank``
        is not in ``[0, size)``.
    """
    mats = _as_schedule(schedule)
    rank = _require_rank("rank", rank, mats[0].shape[0])
    out = []
    for w in mats:
        sends = [int(j) for j in np.flatnonzero(w[rank]) if j != rank]
        recvs = [int(i) for i in np.flatnonzero(w[:, rank]) if i != rank]
        out.append(ScheduleRound(sends, recvs, float(w[rank, rank]),
                                 {i: float(w[i, rank]) for i in recvs}))
    return out


def exact_average_rounds(size: int, rank: int, k: int = 1) -> List[ScheduleRound]:
    """``schedule_rounds(exact_average_schedule(size, k), rank)``: one rank's exact-averaging
    period; cycle it (``itertools.cycle``) to gossip with it every iteration.

    Example::

        >>> exact_average_rounds(3, 2, k=1)
        [ScheduleRound(send_ranks=[], recv_ranks=[], self_weight=1.0, src_weights={}),
         ScheduleRound(send_ranks=[0], recv_ranks=[0], self_weight=0.333..., src_weights={0: 0.666...}),
         ScheduleRound(send_ranks=[], recv_ranks=[], self_weight=1.0, src_weights={})]
    """
    size, k = _require_size_k(size, k)
    rank = _require_rank("rank", rank, size)
    if size == 1:
        return [ScheduleRound([], [], 1.0, {})]
    return [_rank_round(ops, rank) for ops in _rounds(size, k + 1)]


def _rank_round(ops: _Round, rank: int) -> ScheduleRound:
    """``rank``'s part of one round, read off the operations (no dense matrix)."""
    for kind, data in ops:
        if kind == "clique" and rank in data:
            peers = [int(r) for r in data if r != rank]
            w = 1.0 / len(data)
            return ScheduleRound(peers, list(peers), w, {r: w for r in peers})
        if kind == "pair" and rank in data[:2]:
            u, v, beta = data
            peer = v if rank == u else u
            return ScheduleRound([peer], [peer], 1.0 - beta, {peer: beta})
    return ScheduleRound([], [], 1.0, {})


def check_schedule(schedule: Sequence[np.ndarray], k: Optional[int] = None,
                   atol: float = 1e-12) -> Dict[str, object]:
    """Properties of a schedule: ``exact`` (product in order equals ``ones / n`` within ``atol``),
    ``max_in`` / ``max_out`` (most peers of any rank in any round), ``nonnegative`` and
    ``doubly_stochastic``; with ``k``, also ``within_k``.

    Example::

        >>> check_schedule(exact_average_schedule(5, k=1), k=1)["exact"]
        True
    """
    mats = _as_schedule(schedule)
    n = mats[0].shape[0]
    product = np.linalg.multi_dot(mats) if len(mats) > 1 else mats[0]
    off = [(w - np.diag(np.diag(w))) != 0 for w in mats]
    report = {
        "rounds": len(mats),
        "exact": bool(np.allclose(product, 1.0 / n, rtol=0, atol=atol)),
        "max_out": max(int(o.sum(axis=1).max()) for o in off),
        "max_in": max(int(o.sum(axis=0).max()) for o in off),
        "nonnegative": all(bool((w >= 0).all()) for w in mats),
        "doubly_stochastic": all(np.allclose(w.sum(axis=0), 1, atol=atol)
                                 and np.allclose(w.sum(axis=1), 1, atol=atol) for w in mats),
    }
    if k is not None:
        k = _require_int("k", k, 1)
        report["within_k"] = report["max_in"] <= k and report["max_out"] <= k
    return report
