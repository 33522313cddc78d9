"""Reading weights and properties off a topology digraph.

A topology is an ``nx.DiGraph`` on ranks ``0..n-1`` whose edge attribute ``weight`` is ``W[i, j]``
(row = sender, column = receiver); an edge without the attribute weighs 1.  These helpers give one
rank's receive or send weights, compare two topologies exactly, and measure how fast a topology
mixes (its spectral gap).

Example::

    >>> from bluefog.topology import ExponentialGraph, GetRecvWeights
    >>> GetRecvWeights(ExponentialGraph(8), 0)
    (0.25, {4: 0.25, 6: 0.25, 7: 0.25})
"""

from __future__ import annotations

from typing import Dict, Tuple

import networkx as nx
import numpy as np

from .generators import TopologyArgumentError

__all__ = [
    "GetRecvWeights",
    "GetSendWeights",
    "IsTopologyEquivalent",
    "IsRegularGraph",
    "weight_matrix",
    "spectral_gap",
]


def _require_digraph(name: str, topo) -> nx.DiGraph:
    if not isinstance(topo, nx.DiGraph):
        raise TypeError(f"{name} must be a networkx.DiGraph, got {type(topo).__name__}")
    return topo


def _require_node(topo: nx.DiGraph, rank) -> None:
    if rank not in topo:
        raise TopologyArgumentError(
            f"rank must be a node of the topology (0..{topo.number_of_nodes() - 1}), got {rank!r}")


def _self_and_peer_weights(topo, rank, incoming: bool) -> Tuple[float, Dict[int, float]]:
    """Split the edges into (or out of) ``rank`` into the self weight and the peers' weights."""
    _require_node(_require_digraph("topo", topo), rank)
    edges = (topo.in_edges if incoming else topo.out_edges)(rank, data="weight", default=1.0)
    self_weight, peers = 0.0, {}
    for src, dst, weight in edges:
        peer = src if incoming else dst
        if peer == rank:
            self_weight = float(weight)
        else:
            peers[int(peer)] = float(weight)
    return self_weight, dict(sorted(peers.items()))


def GetRecvWeights(topo: nx.DiGraph, rank: int) -> Tuple[float, Dict[int, float]]:
    """``(self_weight, {src: weight})`` of the edges ``src -> rank`` (column ``rank`` of W).

    ``self_weight`` is 0.0 without a self-loop.  All weights are Python ``float``.

    Example::

        >>> GetRecvWeights(RingGraph(5, connect_style=1), 0)     # left ring: 0 hears from 1
        (0.5, {1: 0.5})
    """
    return _self_and_peer_weights(topo, rank, incoming=True)


def GetSendWeights(topo: nx.DiGraph, rank: int) -> Tuple[float, Dict[int, float]]:
    """``(self_weight, {dst: weight})`` of the edges ``rank -> dst`` (row ``rank`` of W).

    Example::

        >>> GetSendWeights(ExponentialGraph(8), 0)
        (0.25, {1: 0.25, 2: 0.25, 4: 0.25})
    """
    return _self_and_peer_weights(topo, rank, incoming=False)


def weight_matrix(topo: nx.DiGraph) -> np.ndarray:
    """Dense float64 ``W`` with ``W[i, j]`` = weight of edge i -> j, nodes in sorted order.

    Example::

        >>> weight_matrix(RingGraph(2))
        array([[0.5, 0.5],
               [0.5, 0.5]])
    """
    return nx.to_numpy_array(topo, nodelist=sorted(topo.nodes()), dtype=np.float64, weight="weight")


def IsTopologyEquivalent(topo1: nx.DiGraph, topo2: nx.DiGraph) -> bool:
    """True iff both graphs have the same nodes, edges and weights, compared exactly.

    ``None`` on either side gives False.  This is not an isomorphism test: node labels matter.

    Example::

        >>> IsTopologyEquivalent(ExponentialTwoGraph(6), ExponentialGraph(6, base=2))
        True
    """
    if topo1 is None or topo2 is None:
        return False
    if topo1.number_of_nodes() != topo2.number_of_nodes():
        return False
    if topo1.number_of_edges() != topo2.number_of_edges():
        return False
    if set(topo1.nodes()) != set(topo2.nodes()):
        return False
    return bool(np.array_equal(weight_matrix(topo1), weight_matrix(topo2)))


def IsRegularGraph(topo: nx.DiGraph) -> bool:
    """True iff every node has the same ``topo.degree`` (in + out; a self-loop counts twice).

    Example::

        >>> IsRegularGraph(RingGraph(6)), IsRegularGraph(StarGraph(6))
        (True, False)
    """
    return len({degree for _, degree in topo.degree()}) <= 1


def spectral_gap(topo: nx.DiGraph) -> float:
    """``1 - ||W - 11^T/n||_2``: how much one gossip round shrinks the distance to the average.

    1.0 means one round averages exactly; close to 0 means slow mixing.

    Example::

        >>> round(spectral_gap(ExponentialTwoGraph(16)), 6)     # rho = 0.6
        0.4
    """
    matrix = weight_matrix(topo)
    size = matrix.shape[0]
    if size == 0:
        raise TopologyArgumentError("topo must have at least one node to have a spectral gap")
    return float(1.0 - np.linalg.norm(matrix - 1.0 / size, 2))
