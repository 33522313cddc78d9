"""Static topology generators: the weighted digraphs that ranks gossip over.

Every generator returns an ``nx.DiGraph`` on nodes ``0..size-1`` built from a dense float64 weight
matrix ``W`` (``W[i, j]`` is the weight of edge i→j: row = sender, column = receiver) with
``nx.from_numpy_array(W, create_using=nx.DiGraph)``.  Every node has a self-loop, and the weights
are produced exactly as Bluefog 0.3.0 produced them (``1.0/k`` for the uniform circulants,
``1/size`` for the star and the complete graph, the literals ``1/3.0`` and ``0.5`` for rings), so
that graphs compare equal under :func:`bluefog.topology.IsTopologyEquivalent` (no tolerance).

Example::

    >>> from bluefog.topology import ExponentialGraph
    >>> sorted(ExponentialGraph(8).successors(0))
    [0, 1, 2, 4]
"""

from __future__ import annotations

import math
import numbers
from typing import Iterable, List, Optional, Sequence, Tuple

import networkx as nx
import numpy as np

__all__ = [
    "TopologyArgumentError",
    "ExponentialTwoGraph",
    "ExponentialGraph",
    "SymmetricExponentialGraph",
    "MeshGrid2DGraph",
    "StarGraph",
    "RingGraph",
    "FullyConnectedGraph",
]


class TopologyArgumentError(ValueError, AssertionError):
    """An argument of a topology helper is outside what it accepts.

    It is a ``ValueError`` (argument validation) and also an ``AssertionError``, which is what
    Bluefog 0.3.0 raised through ``assert``; either ``except`` clause catches it.
    """


# ----------------------------------------------------------------------------- argument checks

def _is_plain_int(value) -> bool:
    """True for Python and numpy integers, False for bools and everything else."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _require_int(name: str, value, minimum: int) -> int:
    """Return ``value`` as a Python int, or raise if it is not an integer ``>= minimum``."""
    if not _is_plain_int(value) or value < minimum:
        raise TopologyArgumentError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _require_rank(name: str, value, size: int, size_name: str = "size") -> int:
    """Return ``value`` as a Python int in ``[0, size)``, or raise naming ``name``."""
    if not _is_plain_int(value) or not 0 <= value < size:
        raise TopologyArgumentError(
            f"{name} must be an integer in [0, {size_name}) = [0, {size}), got {value!r}")
    return int(value)


# ----------------------------------------------------------------------------- shared builders

def _powers_of(base: int, below: int) -> List[int]:
    """All powers ``base**m`` (m >= 0) smaller than ``below``, by exact integer multiplication."""
    powers, power = [], 1
    while power < below:
        powers.append(power)
        power *= base
    return powers


def _to_digraph(matrix: np.ndarray) -> nx.DiGraph:
    return nx.from_numpy_array(matrix, create_using=nx.DiGraph)


def _circulant(row: np.ndarray) -> nx.DiGraph:
    """Row i is ``row`` rolled right by i: rank i sends to (i + k) mod n whenever row[k] != 0."""
    size = row.shape[0]
    index = (np.arange(size)[None, :] - np.arange(size)[:, None]) % size
    return _to_digraph(row[index])


def _uniform_circulant(size: int, offsets: Iterable[int]) -> nx.DiGraph:
    """Circulant graph with equal weight ``1.0/len(offsets)`` on every offset (offset 0 = self)."""
    row = np.zeros(size)
    row[list(offsets)] = 1.0
    row /= row.sum()
    return _circulant(row)


# ----------------------------------------------------------------------------- generators

def ExponentialGraph(size: int, base: int = 2) -> nx.DiGraph:
    """Rank i sends to ``(i + base**m) mod size`` for every ``base**m < size``, plus itself.

    All weights are ``1/(number of offsets)``; the matrix is doubly stochastic and the out-degree
    (self excluded) is ``ceil(log_base(size))``.  This is Bluefog's default topology.

    Example::

        >>> G = ExponentialGraph(8)          # rank 0 -> 1, 2, 4, each weight 0.25
        >>> G[0][4]["weight"]
        0.25
    """
    size = _require_int("size", size, 1)
    base = _require_int("base", base, 2)
    return _uniform_circulant(size, [0] + _powers_of(base, size))


def ExponentialTwoGraph(size: int) -> nx.DiGraph:
    """Offsets 0, 1, 2, 4, 8, ... below ``size``: the same graph as ``ExponentialGraph(size, 2)``.

    Example::

        >>> sorted(ExponentialTwoGraph(12).successors(0))
        [0, 1, 2, 4, 8]
    """
    return ExponentialGraph(size, 2)


def SymmetricExponentialGraph(size: int, base: int = 4) -> nx.DiGraph:
    """Offset k >= 1 is kept iff its ring distance ``min(k, size - k)`` is a power of ``base``.

    The distance is ``k`` for ``k <= size // 2`` and ``size - k`` otherwise, so the graph is
    undirected in effect.  Weights are uniform, self included.

    Example::

        >>> sorted(SymmetricExponentialGraph(12).successors(0))   # weight 0.2 each
        [0, 1, 4, 8, 11]
    """
    size = _require_int("size", size, 1)
    base = _require_int("base", base, 2)
    powers = set(_powers_of(base, size))
    half = size // 2
    offsets = [k for k in range(1, size) if (k if k <= half else size - k) in powers]
    return _uniform_circulant(size, [0] + offsets)


def _default_mesh_shape(size: int) -> Tuple[int, int]:
    """``(nrow, ncol)`` with nrow the largest divisor of ``size`` not above its square root."""
    nrow = math.isqrt(size)
    while size % nrow:
        nrow -= 1
    return nrow, size // nrow


def _mesh_shape(size: int, shape: Optional[Sequence[int]]) -> Tuple[int, int]:
    if shape is None:
        return _default_mesh_shape(size)
    try:
        nrow, ncol = shape
        nrow, ncol = _require_int("nrow", nrow, 1), _require_int("ncol", ncol, 1)
    except (TypeError, ValueError):
        raise TopologyArgumentError(
            f"shape must be a pair (nrow, ncol) of positive integers, got {shape!r}") from None
    if nrow * ncol != size:
        raise TopologyArgumentError(
            f"shape {tuple(shape)!r} does not match size {size}: nrow * ncol must equal size")
    return nrow, ncol


def _metropolis_hastings(adjacency: np.ndarray) -> np.ndarray:
    """Metropolis–Hastings weights of a symmetric 0/1 adjacency matrix that includes self-loops.

    ``w_ij = 1/max(d_i, d_j)`` for neighbours (degrees count the node itself) and
    ``w_ii = 1 - sum_{j != i} w_ij``, evaluated exactly and rounded once (``math.fsum``).
    """
    degree = adjacency.sum(axis=1)
    weights = np.where(adjacency > 0, 1.0 / np.maximum.outer(degree, degree), 0.0)
    np.fill_diagonal(weights, 0.0)
    for i, row in enumerate(weights):
        weights[i, i] = math.fsum([1.0, *(-row[row != 0.0])])
    return weights


def MeshGrid2DGraph(size: int, shape: Optional[Tuple[int, int]] = None) -> nx.DiGraph:
    """A ``nrow x ncol`` grid (row-major ranks) with Metropolis–Hastings weights.

    By default nrow is the largest divisor of ``size`` that is at most ``sqrt(size)`` (24 gives
    4x6, a prime gives a 1xn line).  Rank i links to i+1 (same row) and i+ncol, both ways.

    Example::

        >>> G = MeshGrid2DGraph(6)            # 2x3: corner self weight 5/12
        >>> G[0][0]["weight"] == 5 / 12
        True
    """
    size = _require_int("size", size, 1)
    _, ncol = _mesh_shape(size, shape)
    adjacency = np.eye(size)
    ranks = np.arange(size)
    right = ranks[(ranks + 1) % ncol != 0]
    down = ranks[ranks + ncol < size]
    for src, dst in ((right, right + 1), (down, down + ncol)):
        adjacency[src, dst] = adjacency[dst, src] = 1.0
    return _to_digraph(_metropolis_hastings(adjacency))


def StarGraph(size: int, center_rank: int = 0) -> nx.DiGraph:
    """Every rank exchanges with ``center_rank`` only; every edge weighs ``1/size``.

    Leaves keep ``1 - 1/size`` for themselves, the centre ``1/size``; doubly stochastic.

    Example::

        >>> G = StarGraph(4)
        >>> G[1][0]["weight"], G[1][1]["weight"], G[0][0]["weight"]
        (0.25, 0.75, 0.25)
    """
    size = _require_int("size", size, 1)
    center_rank = _require_rank("center_rank", center_rank, size)
    matrix = np.zeros((size, size))
    np.fill_diagonal(matrix, 1 - 1 / size)
    matrix[center_rank, :] = 1 / size
    matrix[:, center_rank] = 1 / size
    return _to_digraph(matrix)


def RingGraph(size: int, connect_style: int = 0) -> nx.DiGraph:
    """A ring.  Style 0: i <-> i±1, weight 1/3 (self too).  Style 1: i -> i-1 (so i receives from
    i+1), style 2: i -> i+1; both with weight 0.5 and self 0.5.

    Sizes 1 and 2 give the complete graph (weight 1.0, resp. 0.5) whatever the style.

    Example::

        >>> sorted(RingGraph(5, connect_style=1).successors(0))
        [0, 4]
    """
    size = _require_int("size", size, 1)
    if not _is_plain_int(connect_style) or connect_style not in (0, 1, 2):
        raise TopologyArgumentError(
            f"connect_style must be 0 (both ways), 1 (left) or 2 (right), got {connect_style!r}")
    if size <= 2:
        return _to_digraph(np.full((size, size), 1.0 / size))
    row = np.zeros(size)
    if connect_style == 0:
        row[[0, 1, -1]] = 1 / 3.0
    else:
        row[[0, -1 if connect_style == 1 else 1]] = 0.5
    return _circulant(row)


def FullyConnectedGraph(size: int) -> nx.DiGraph:
    """All ``size**2`` edges, self-loops included, each with weight ``1/size``.

    Example::

        >>> FullyConnectedGraph(4).number_of_edges()
        16
    """
    size = _require_int("size", size, 1)
    return _to_digraph(np.full((size, size), 1 / size))
