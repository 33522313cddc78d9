"""Topology analysis against hand-computed values, and the plotting helpers (headless)."""

import io
import math
import sys

import networkx as nx
import numpy as np
import pytest

from bluefog.topology import (ExponentialTwoGraph, FullyConnectedGraph, MeshGrid2DGraph, RingGraph,
                              StarGraph, ExponentialGraph, consensus_errors, degree_range, diameter,
                              exact_average_schedule, mixing_rate, mixing_spectral_gap,
                              one_peer_exponential_schedule, spectral_gap, summarize)


# ----------------------------------------------------------------------------- mixing rate

@pytest.mark.parametrize("topo,rho", [
    (RingGraph(6), 2 / 3),             # eigenvalues 1/3 + 2/3 cos(2 pi j / 6): 1, 2/3, 0, -1/3
    (RingGraph(4), 1 / 3),             # 1, 1/3, -1/3
    (FullyConnectedGraph(5), 0.0),
    (StarGraph(4), 0.75),              # leaves keep 1 - 1/n: e_i - e_j has eigenvalue 3/4
    (StarGraph(10), 0.9),
    (MeshGrid2DGraph(4), 1 / 3),       # the 2 x 2 grid is the ring of 4
    (ExponentialTwoGraph(16), 0.6),
    (RingGraph(5, connect_style=1), math.cos(math.pi / 5)),   # |(1 + w^j) / 2| = |cos(pi j / 5)|
])
def test_mixing_rate_of_static_topologies(topo, rho):
    assert mixing_rate(topo) == pytest.approx(rho, abs=1e-12)
    assert mixing_rate(nx.to_numpy_array(topo, weight="weight")) == pytest.approx(rho, abs=1e-12)
    assert mixing_spectral_gap(topo) == pytest.approx(1 - rho, abs=1e-12)
    assert mixing_spectral_gap(topo) == pytest.approx(spectral_gap(topo), abs=1e-12)


def test_mixing_rate_of_a_schedule_is_the_per_round_rate_of_its_product():
    ring = nx.to_numpy_array(RingGraph(4), weight="weight")
    assert mixing_rate([ring, ring]) == pytest.approx(1 / 3)          # ||W^2 - J|| = 1/9
    half = np.array([[.5, .5, 0, 0], [.5, .5, 0, 0], [0, 0, .5, .5], [0, 0, .5, .5]])
    swap = np.array([[.5, 0, .5, 0], [0, .5, 0, .5], [.5, 0, .5, 0], [0, .5, 0, .5]])
    assert mixing_rate([half]) == pytest.approx(1.0)                # pairs alone never mix
    assert mixing_rate([half, swap]) == 0.0
    assert mixing_rate(one_peer_exponential_schedule(16)) == 0.0
    assert mixing_rate(exact_average_schedule(11, k=2)) == 0.0
    assert 0.3 < mixing_rate(one_peer_exponential_schedule(12)) < 1.0
    assert mixing_spectral_gap(exact_average_schedule(7)) == 1.0


# ----------------------------------------------------------------------------- degree, diameter

def test_degree_range_and_diameter_by_hand():
    assert degree_range(RingGraph(6)) == {"in": (2, 2), "out": (2, 2)}
    assert degree_range(StarGraph(5)) == {"in": (1, 4), "out": (1, 4)}
    assert degree_range(ExponentialGraph(8)) == {"in": (3, 3), "out": (3, 3)}
    assert degree_range(RingGraph(5, connect_style=2)) == {"in": (1, 1), "out": (1, 1)}
    assert diameter(RingGraph(6)) == 3
    assert diameter(RingGraph(5, connect_style=1)) == 4
    assert diameter(StarGraph(7)) == 2
    assert diameter(FullyConnectedGraph(4)) == 1
    assert diameter(ExponentialGraph(8)) == 3                   # 7 = 4 + 2 + 1
    assert diameter(MeshGrid2DGraph(16)) == 6
    assert diameter(np.eye(3)) == math.inf
    assert diameter(np.ones((1, 1))) == 0
    # a schedule: per-round degrees, diameter of the union of its rounds
    sched = exact_average_schedule(3, k=1)                      # pairs (0,1), (0,2), (0,1)
    assert degree_range(sched) == {"in": (0, 1), "out": (0, 1)}
    assert diameter(sched) == 2
    assert diameter(one_peer_exponential_schedule(8)) == 3      # union = ExponentialGraph(8)


def test_summary_of_static_and_dynamic_topologies():
    ring = summarize(RingGraph(6))
    assert (ring.size, ring.rounds, ring.max_in_degree, ring.diameter, ring.exact_after) == \
        (6, 1, 2, 3, None)
    assert ring.mixing_rate == pytest.approx(2 / 3) and ring.spectral_gap == pytest.approx(1 / 3)
    full = summarize(FullyConnectedGraph(4))
    assert full.exact_after == 1 and full.mixing_rate == 0.0
    exact = summarize(exact_average_schedule(6, k=1))
    assert (exact.rounds, exact.max_in_degree, exact.max_out_degree, exact.exact_after,
            exact.mixing_rate) == (4, 1, 1, 4, 0.0)
    one_peer = summarize(one_peer_exponential_schedule(16))
    assert (one_peer.rounds, one_peer.exact_after, one_peer.min_in_degree) == (4, 4, 1)
    assert summarize(one_peer_exponential_schedule(12)).exact_after is None


# ----------------------------------------------------------------------------- consensus error

def test_consensus_errors_follow_the_eigenvalues():
    # [1, -1, 1, -1] is an eigenvector of the ring of 4 with eigenvalue -1/3
    errors = consensus_errors(RingGraph(4), 5, x0=[1.0, -1.0, 1.0, -1.0])
    assert np.allclose(errors, [(1 / 3) ** t for t in range(6)], rtol=0, atol=1e-14)
    errors = consensus_errors(exact_average_schedule(4, k=1), 4, x0=[1.0, 0, 0, 0])
    assert np.allclose(errors, [1.0, 1 / math.sqrt(3), 0, 0, 0], atol=1e-14)
    # default start is random but seeded; a schedule repeats
    a = consensus_errors(one_peer_exponential_schedule(6), 9, seed=3)
    assert len(a) == 10 and a[0] == 1.0 and np.array_equal(a, consensus_errors(
        one_peer_exponential_schedule(6), 9, seed=3)) and a[-1] < a[3] < 1
    # several columns at once (x0 with one row per rank)
    rows = consensus_errors(RingGraph(4), 2, x0=np.array([[1.0, 0], [-1, 0], [1, 0], [-1, 0]]))
    assert np.allclose(rows, [1, 1 / 3, 1 / 9])


@pytest.mark.parametrize("call,kind,fragment", [
    (lambda: mixing_rate("ring"), TypeError, "topology must be a networkx.DiGraph"),
    (lambda: mixing_rate([]), TypeError, "topology must be a networkx.DiGraph"),
    (lambda: mixing_rate(np.ones((2, 3))), ValueError, "must be a non-empty square matrix"),
    (lambda: diameter([np.eye(2), np.eye(3)]), ValueError, "round 1 must be"),
    (lambda: summarize(nx.DiGraph()), ValueError, "at least one node"),
    (lambda: consensus_errors(RingGraph(4), -1), ValueError, "iterations must be an integer >= 0"),
    (lambda: consensus_errors(RingGraph(4), 3, x0=[1.0, 2.0]), ValueError, "x0 must have one"),
    (lambda: consensus_errors(RingGraph(4), 3, x0=[2.0] * 4), ValueError, "already at consensus"),
])
def test_bad_arguments(call, kind, fragment):
    with pytest.raises(kind) as info:
        call()
    assert fragment in str(info.value)


# ----------------------------------------------------------------------------- plotting

def _png_bytes(ax):
    buffer = io.BytesIO()
    ax.figure.savefig(buffer, format="png", dpi=40)
    return buffer.getvalue()


def _annotations(ax):
    return [c for c in ax.get_children() if type(c).__name__ == "Annotation"]


def test_plot_topology_draws_every_edge_headless():
    """No pyplot, no backend chosen: the figure renders through Agg when saved."""
    pytest.importorskip("matplotlib")
    from bluefog.topology import plot_topology
    ax = plot_topology(RingGraph(6), title="ring")
    assert ax.get_title() == "ring"
    assert sorted(t.get_text() for t in ax.texts if t not in _annotations(ax)) == list("012345")
    assert len(_annotations(ax)) == 6                          # 6 two-way edges, drawn once
    one_way = plot_topology(RingGraph(5, connect_style=1))
    arrows = _annotations(one_way)
    assert len(arrows) == 5 and all(a.arrow_patch.get_arrowstyle().__class__.__name__ == "CurveFilledB"
                                    for a in arrows)
    sched = plot_topology(exact_average_schedule(6, k=1))
    assert [t.get_text() for t in sched.get_legend().get_texts()] == [
        f"round {t}" for t in range(1, 5)]
    assert _png_bytes(sched).startswith(b"\x89PNG")
    from matplotlib.figure import Figure
    given = Figure().add_subplot(1, 1, 1)
    assert plot_topology(np.full((3, 3), 1 / 3), ax=given) is given
    grid = plot_topology(RingGraph(4), positions=[[0, 0], [1, 0], [1, 1], [0, 1]])
    assert grid.get_xlim()[0] < 0 < 1 < grid.get_xlim()[1]
    with pytest.raises(ValueError, match=r"positions must be an array of shape \(4, 2\)"):
        plot_topology(RingGraph(4), positions=[[0, 0]])


def test_plot_consensus_error_one_line_per_topology():
    pytest.importorskip("matplotlib")
    from bluefog.topology import plot_consensus_error
    ax = plot_consensus_error({"ring": RingGraph(8), "Base-2": exact_average_schedule(8, k=1)},
                              iterations=12, floor=1e-15)
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["ring", "Base-2"]
    ring_y, exact_y = lines[0].get_ydata(), lines[1].get_ydata()
    assert len(ring_y) == 13 and ring_y[0] == 1.0 and 0 < ring_y[-1] < ring_y[1]
    assert exact_y[3] == 1e-15 and ax.get_yscale() == "log"      # exact after 3 rounds
    assert _png_bytes(ax).startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="same number of ranks"):
        plot_consensus_error({"a": RingGraph(4), "b": RingGraph(5)})
    with pytest.raises(TypeError, match="non-empty mapping"):
        plot_consensus_error([RingGraph(4)])


def test_plotting_without_matplotlib_names_the_plot_extra(monkeypatch):
    from bluefog.topology import plot_consensus_error, plot_topology
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)      # import matplotlib -> ImportError
    for call in (lambda: plot_topology(RingGraph(4)),
                 lambda: plot_consensus_error({"ring": RingGraph(4)})):
        with pytest.raises(ImportError) as info:
            call()
        assert 'pip install "bluefog-gossip[plot]"' in str(info.value)
