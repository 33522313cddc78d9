"""How well a topology mixes: mixing rate, spectral gap, degrees, diameter, consensus error.

Every function takes a *topology*: an ``nx.DiGraph`` (weights as in :func:`weight_matrix`), a
square numpy weight matrix (``W[i, j]`` = weight of edge ``i -> j``, one round maps ``x`` to
``W^T x``), or a *schedule*, a non-empty list of such matrices applied in order and repeated (a
dynamic topology over its period, e.g. :func:`exact_average_schedule`).

* mixing rate ``rho = ||W - 11^T/n||_2`` — for a doubly stochastic ``W`` its second largest singular
  value — bounds how much one round shrinks the distance to the average; the spectral gap is
  ``1 - rho``.  For a schedule of T rounds it is the per-round rate of the product,
  ``||W_1 ... W_T - 11^T/n||_2 ** (1 / T)`` (0 for a schedule that averages exactly).
* degree: peers (self excluded) each rank receives from / sends to, min and max over ranks (and
  over rounds, for a schedule); diameter: most hops between two ranks along the edges (of the
  union of the rounds, for a schedule), ``inf`` when some rank cannot reach another.

Example::

    >>> from bluefog.topology import RingGraph, summarize
    >>> s = summarize(RingGraph(6))
    >>> round(s.mixing_rate, 6), s.diameter, s.max_in_degree
    (0.666667, 3, 2)
"""

from __future__ import annotations

import dataclasses
import math
from typing import List, Optional, Sequence, Union

import networkx as nx
import numpy as np

from .generators import TopologyArgumentError, _require_int
from .weights import spectral_gap as _graph_spectral_gap
from .weights import weight_matrix

__all__ = [
    "TopologySummary",
    "mixing_rate",
    "mixing_spectral_gap",
    "degree_range",
    "diameter",
    "consensus_errors",
    "summarize",
]

Topology = Union[nx.DiGraph, np.ndarray, Sequence[np.ndarray]]


@dataclasses.dataclass(frozen=True)
class TopologySummary:
    """One line of a topology comparison (see :func:`summarize`)."""

    size: int
    rounds: int                       # 1 for a static topology, the period for a schedule
    min_in_degree: int
    max_in_degree: int
    min_out_degree: int
    max_out_degree: int
    diameter: float                   # int hops, or math.inf
    mixing_rate: float                # per round
    spectral_gap: float               # 1 - mixing_rate
    exact_after: Optional[int]        # rounds until exact averaging (within 1e-12), else None


def _matrices(topology, name: str = "topology") -> List[np.ndarray]:
    """The rounds of ``topology`` as float64 matrices (one for a static topology)."""
    if isinstance(topology, nx.DiGraph):
        if topology.number_of_nodes() == 0:
            raise TopologyArgumentError(f"{name} must have at least one node")
        if set(topology.nodes()) != set(range(topology.number_of_nodes())):
            raise TopologyArgumentError(f"{name} must have the nodes 0..n-1 (one per rank)")
        return [weight_matrix(topology)]
    if isinstance(topology, np.ndarray):
        mats = [topology]
    elif isinstance(topology, (list, tuple)) and topology:
        mats = list(topology)
    else:
        raise TypeError(f"{name} must be a networkx.DiGraph, a square numpy array or a non-empty "
                        f"list of square numpy arrays, got {type(topology).__name__}")
    out = []
    for t, w in enumerate(mats):
        w = np.asarray(w, dtype=np.float64)
        if w.ndim != 2 or w.shape[0] != w.shape[1] or w.shape[0] == 0 or (
                out and w.shape != out[0].shape):
            raise ValueError(f"{name}: round {t} must be a non-empty square matrix of the same size "
                             f"as the others, got shape {w.shape}")
        out.append(w)
    return out


def _product(mats: List[np.ndarray]) -> np.ndarray:
    return mats[0] if len(mats) == 1 else np.linalg.multi_dot(mats)


def mixing_rate(topology: Topology) -> float:
    """Per-round mixing rate ``rho`` (see the module docstring); smaller mixes faster.

    Example::

        >>> round(mixing_rate(ExponentialTwoGraph(16)), 6)
        0.6
        >>> mixing_rate(exact_average_schedule(12, k=1))
        0.0
    """
    if isinstance(topology, nx.DiGraph):
        _matrices(topology)
        return max(0.0, 1.0 - _graph_spectral_gap(topology))
    mats = _matrices(topology)
    n = mats[0].shape[0]
    rho = float(np.linalg.norm(_product(mats) - 1.0 / n, 2))
    if rho < 1e-12:
        return 0.0
    return rho ** (1.0 / len(mats))


def mixing_spectral_gap(topology: Topology) -> float:
    """``1 - mixing_rate(topology)``: 1.0 averages in one round (per round for a schedule), near 0
    mixes slowly.  Same as :func:`spectral_gap` for a graph.

    Example::

        >>> round(mixing_spectral_gap(RingGraph(4)), 6)
        0.666667
    """
    return 1.0 - mixing_rate(topology)


def _adjacency(mats: List[np.ndarray]) -> List[np.ndarray]:
    return [(w != 0) & ~np.eye(w.shape[0], dtype=bool) for w in mats]


def degree_range(topology: Topology) -> dict:
    """``{"in": (min, max), "out": (min, max)}`` peers per rank, self excluded; for a schedule
    over all ranks and rounds.

    Example::

        >>> degree_range(StarGraph(5))
        {'in': (1, 4), 'out': (1, 4)}
    """
    adj = _adjacency(_matrices(topology))
    ins = np.concatenate([a.sum(axis=0) for a in adj])
    outs = np.concatenate([a.sum(axis=1) for a in adj])
    return {"in": (int(ins.min()), int(ins.max())), "out": (int(outs.min()), int(outs.max()))}


def diameter(topology: Topology) -> float:
    """Most hops from any rank to any other along the edges (union of the rounds of a schedule);
    ``math.inf`` if some rank cannot reach another, 0 for one rank.

    Example::

        >>> diameter(ExponentialGraph(8)), diameter(MeshGrid2DGraph(16))
        (3, 6)
    """
    union = np.logical_or.reduce(_adjacency(_matrices(topology)))
    graph = nx.from_numpy_array(union.astype(np.int8), create_using=nx.DiGraph)
    if union.shape[0] == 1:
        return 0
    if not nx.is_strongly_connected(graph):
        return math.inf
    return int(nx.diameter(graph))


def consensus_errors(topology: Topology, iterations: int, x0=None, seed: int = 0) -> np.ndarray:
    """Relative distance to the average, ``||x_t - mean(x_0)|| / ||x_0 - mean(x_0)||``, for
    ``t = 0 .. iterations``, gossiping from ``x0`` (default: standard normal values, one per rank,
    from ``seed``); a schedule is repeated.  Entry 0 is 1.0.

    Example::

        >>> consensus_errors(exact_average_schedule(4, k=1), 3, x0=[1.0, 0, 0, 0]).round(6).tolist()
        [1.0, 0.57735, 0.0, 0.0]
    """
    mats = _matrices(topology)
    iterations = _require_int("iterations", iterations, 0)
    n = mats[0].shape[0]
    if x0 is None:
        x = np.random.default_rng(seed).standard_normal(n)
    else:
        x = np.asarray(x0, dtype=np.float64)
        if x.shape[:1] != (n,):
            raise ValueError(f"x0 must have one entry (or row) per rank ({n}), got shape {x.shape}")
    mean = x.mean(axis=0)
    start = float(np.linalg.norm(x - mean))
    if start == 0.0:
        raise ValueError("x0 is already at consensus (all ranks equal); the error is undefined")
    errors = [1.0]
    for t in range(iterations):
        x = mats[t % len(mats)].T @ x
        errors.append(float(np.linalg.norm(x - mean)) / start)
    return np.array(errors)


def _exact_after(mats: List[np.ndarray], atol: float = 1e-12) -> Optional[int]:
    n = mats[0].shape[0]
    prod = np.eye(n)
    for t, w in enumerate(mats, start=1):
        prod = prod @ w
        if np.allclose(prod, 1.0 / n, rtol=0, atol=atol):
            return t
    return None


def summarize(topology: Topology) -> TopologySummary:
    """Size, period, degree range, diameter, mixing rate, spectral gap and (for exact schedules)
    the number of rounds after which every rank holds the average.

    Example::

        >>> s = summarize(exact_average_schedule(6, k=1))
        >>> s.rounds, s.max_in_degree, s.exact_after, s.mixing_rate
        (4, 1, 4, 0.0)
    """
    mats = _matrices(topology)
    degrees = degree_range(mats)
    rate = mixing_rate(topology)
    return TopologySummary(
        size=mats[0].shape[0], rounds=len(mats),
        min_in_degree=degrees["in"][0], max_in_degree=degrees["in"][1],
        min_out_degree=degrees["out"][0], max_out_degree=degrees["out"][1],
        diameter=diameter(mats), mixing_rate=rate, spectral_gap=1.0 - rate,
        exact_after=_exact_after(mats))
