"""Pictures of topologies: the graph on a circle, and consensus error against iterations.

matplotlib is optional (``pip install "bluefog-gossip[plot]"``) and imported only when a function
here is called.  The functions draw on the ``ax`` given, or on a new figure that no global pyplot
state knows about (so they work headless, without choosing a backend); they return the axes, whose
``.figure.savefig(path)`` writes the picture.  Topologies are what :mod:`bluefog.topology.analysis`
accepts: a ``networkx.DiGraph``, a weight matrix, or a schedule (list of matrices).

Example::

    >>> from bluefog.topology import RingGraph, exact_average_schedule
    >>> from bluefog.topology.plotting import plot_consensus_error, plot_topology
    >>> ax = plot_topology(exact_average_schedule(6, k=1), title="Base-2, 6 nodes")
    >>> ax = plot_consensus_error({"ring": RingGraph(16),
    ...                            "Base-2": exact_average_schedule(16, k=1)}, iterations=30)
    >>> ax.figure.savefig("consensus.png")
"""

from __future__ import annotations

import math
from typing import Mapping, Optional

import numpy as np

from .analysis import _adjacency, _matrices, consensus_errors

__all__ = ["plot_topology", "plot_consensus_error"]

_INSTALL_HINT = ('bluefog.topology plotting needs matplotlib, which is not installed: '
                 'pip install "bluefog-gossip[plot]"  (or: pip install matplotlib)')


def _matplotlib():
    """Import matplotlib on first use, or raise ImportError saying how to install it."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(_INSTALL_HINT) from error
    return Figure


def _axes(ax, figsize):
    figure_class = _matplotlib()
    if ax is not None:
        return ax
    return figure_class(figsize=figsize).add_subplot(1, 1, 1)


def _circle(n: int) -> np.ndarray:
    angles = math.pi / 2 - 2 * math.pi * np.arange(n) / n        # rank 0 on top, clockwise
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def plot_topology(topology, ax=None, title: Optional[str] = None, labels: Optional[bool] = None,
                  node_size: Optional[float] = None, positions=None, figsize=(4, 4)):
    """Draw the ranks with an edge for each nonzero weight, on a circle (rank 0 on top, clockwise)
    unless ``positions`` (an ``n x 2`` array of coordinates, e.g. a grid for a mesh) is given.

    A two-way edge is a plain line, a one-way edge an arrow towards the receiver.  For a schedule,
    each round's edges get their own colour (legend "round t").  ``labels`` (default: size <= 16)
    writes the rank numbers.  Returns the axes.

    Raises:
        ImportError: matplotlib is missing (the message says how to install it).
    """
    ax = _axes(ax, figsize)
    mats = _matrices(topology)
    n = mats[0].shape[0]
    if positions is None:
        pos = _circle(n)
    else:
        pos = np.asarray(positions, dtype=np.float64)
        if pos.shape != (n, 2):
            raise ValueError(f"positions must be an array of shape ({n}, 2) (x, y per rank), got "
                             f"shape {pos.shape}")
    labels = n <= 16 if labels is None else labels
    node_size = node_size if node_size is not None else max(12.0, 260.0 * min(1.0, 12.0 / n))
    colors = [f"C{t % 10}" for t in range(len(mats))]
    for t, adj in enumerate(_adjacency(mats)):
        label = f"round {t + 1}" if len(mats) > 1 else None
        for i, j in zip(*np.nonzero(adj)):
            if adj[j, i] and j < i:
                continue                                   # drawn once as a two-way edge
            style = "-" if adj[j, i] else "-|>"
            props = dict(arrowstyle=style, color=colors[t], lw=0.9, alpha=0.75, shrinkA=4,
                         shrinkB=4)
            if len(mats) > 1:                              # rounds may reuse an edge: bend them
                props["connectionstyle"] = "arc3,rad=0.08"
            ax.annotate("", xy=pos[j], xytext=pos[i], arrowprops=props)
        if label:
            ax.plot([], [], color=colors[t], label=label)
    ax.scatter(pos[:, 0], pos[:, 1], s=node_size, c="white", edgecolors="black", zorder=3)
    if labels:
        for r, (x, y) in enumerate(pos):
            ax.text(x, y, str(r), ha="center", va="center", fontsize=7, zorder=4)
    if len(mats) > 1 and len(mats) <= 10:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(mats), 4),
                  fontsize=6, frameon=False, handlelength=1.2, columnspacing=0.8)
    ax.set_aspect("equal")
    low, high = pos.min(axis=0), pos.max(axis=0)
    margin = 0.075 * max(float((high - low).max()), 1e-9) + 0.05
    ax.set_xlim(low[0] - margin, high[0] + margin)
    ax.set_ylim(low[1] - margin, high[1] + margin)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def plot_consensus_error(topologies: Mapping[str, object], iterations: int = 30, ax=None,
                         seed: int = 0, floor: float = 1e-16, title: Optional[str] = None,
                         figsize=(5, 3.5)):
    """Relative consensus error (:func:`consensus_errors`) against iterations, log scale, one
    line per ``{label: topology}`` entry, all from the same random start (``seed``).

    An exact schedule reaches 0; it is drawn at ``floor`` from then on.  Returns the axes.

    Raises:
        ImportError: matplotlib is missing (the message says how to install it).
        TypeError: ``topologies`` is not a non-empty mapping of labels to topologies.
    """
    if not isinstance(topologies, Mapping) or not topologies:
        raise TypeError("topologies must be a non-empty mapping {label: topology}, got "
                        f"{type(topologies).__name__}")
    ax = _axes(ax, figsize)
    sizes = {_matrices(topo, f"topologies[{label!r}]")[0].shape[0]
             for label, topo in topologies.items()}
    if len(sizes) != 1:
        raise ValueError(f"topologies must all have the same number of ranks, got {sorted(sizes)}")
    x0 = np.random.default_rng(seed).standard_normal(sizes.pop())
    steps = np.arange(iterations + 1)
    for label, topo in topologies.items():
        errors = np.maximum(consensus_errors(topo, iterations, x0=x0), floor)
        ax.semilogy(steps, errors, label=str(label), lw=1.4, marker=".", ms=3)
    ax.set_xlabel("iteration (communication rounds)")
    ax.set_ylabel("||x - mean|| / ||x0 - mean||")
    ax.set_ylim(floor / 3, 2)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    return ax
