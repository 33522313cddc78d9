"""Make the pictures and the comparison table of docs/topology.md.

    pip install "bluefog-gossip[plot]"      # or: pip install matplotlib
    python docs/make_topology_figures.py    # writes docs/images/topology_*.png, prints the table

Compares ring, 2-D mesh, star, static exponential, one-peer exponential and the exact averaging
schedules (``exact_average_schedule``, k = 1, 2 and 3 peers) at 8, 16, 32 and 64 nodes, plus 12 and 48
(sizes that are not powers of two).  Pure numpy: no ranks are started.
"""

import os
import sys

import numpy as np

from bluefog.topology import (ExponentialGraph, MeshGrid2DGraph, RingGraph, StarGraph,
                              exact_average_schedule, one_peer_exponential_schedule,
                              plot_consensus_error, plot_topology, summarize)

HERE = os.path.dirname(os.path.abspath(__file__))
IMAGES = os.path.join(HERE, "images")
SIZES = (8, 16, 32, 64)
EXTRA_SIZES = (12, 48)
DPI = 80


def topologies(n):
    """{label: topology} compared at ``n`` nodes, in table order."""
    return {
        "ring": RingGraph(n),
        "2-D mesh": MeshGrid2DGraph(n),
        "star": StarGraph(n),
        "exponential": ExponentialGraph(n),
        "one-peer exponential": one_peer_exponential_schedule(n),
        "exact, k=1": exact_average_schedule(n, k=1),
        "exact, k=2": exact_average_schedule(n, k=2),
        "exact, k=3": exact_average_schedule(n, k=3),
    }


def table_rows(sizes):
    """A markdown table: one row per topology, one column per size; each cell gives the mixing
    rate per round (or the rounds to the exact average), the most peers a rank has in a round
    (in or out), and the diameter."""
    rows = ["| topology | " + " | ".join(f"{n} nodes" for n in sizes) + " |",
            "|---" * (len(sizes) + 1) + "|"]
    cells = {}
    for n in sizes:
        for label, topo in topologies(n).items():
            s = summarize(topo)
            mix = f"exact in {s.exact_after}" if s.exact_after else f"ρ {s.mixing_rate:.3f}"
            peers = max(s.max_in_degree, s.max_out_degree)
            cells.setdefault(label, []).append(
                f"{mix}, {peers} peer{'s' if peers != 1 else ''}, diam {s.diameter}")
    for label, row in cells.items():
        rows.append(f"| {label} | " + " | ".join(row) + " |")
    return rows


def graphs_figure(path):
    from matplotlib.figure import Figure
    grid = np.array([[i % 4, -(i // 4)] for i in range(16)], dtype=float)
    star = np.vstack([[0.0, 0.0], 0.9 * np.array(
        [[np.sin(a), np.cos(a)] for a in 2 * np.pi * np.arange(15) / 15])])
    panels = [("ring, 16", RingGraph(16), None), ("2-D mesh, 16", MeshGrid2DGraph(16), grid),
              ("star, 16", StarGraph(16), star), ("exponential, 16", ExponentialGraph(16), None),
              ("one-peer exponential, 16", one_peer_exponential_schedule(16), None),
              ("exact k=1, 16", exact_average_schedule(16, k=1), None),
              ("exact k=1, 12", exact_average_schedule(12, k=1), None),
              ("exact k=2, 12", exact_average_schedule(12, k=2), None)]
    fig = Figure(figsize=(10, 5.6))
    for i, (title, topo, pos) in enumerate(panels):
        plot_topology(topo, ax=fig.add_subplot(2, 4, i + 1), title=title, node_size=90,
                      positions=pos)
    fig.tight_layout(h_pad=2.5)
    fig.savefig(path, dpi=DPI)


def consensus_figure(path, iterations=40):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(12, 6.6))
    for i, n in enumerate(SIZES + EXTRA_SIZES):
        ax = fig.add_subplot(2, 3, i + 1)
        plot_consensus_error(topologies(n), iterations=iterations, ax=ax, seed=n,
                             title=f"{n} nodes")
        handles, labels = ax.get_legend_handles_labels()
        ax.get_legend().remove()
        if i % 3:
            ax.set_ylabel("")
    fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 0.82, 1))
    fig.savefig(path, dpi=DPI)


def main():
    os.makedirs(IMAGES, exist_ok=True)
    graphs_figure(os.path.join(IMAGES, "topology_graphs.png"))
    consensus_figure(os.path.join(IMAGES, "topology_consensus.png"))
    print("\n".join(table_rows(SIZES)))
    print()
    print("\n".join(table_rows(EXTRA_SIZES)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
