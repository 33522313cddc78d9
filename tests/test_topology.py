"""Unit tests of bluefog.topology and its facade bluefog.common.topology_util (no MPI needed)."""

import math
import warnings

import networkx as nx
import numpy as np
import pytest

from bluefog.common import topology_util as tu
from bluefog.topology import (
    ExponentialGraph, ExponentialTwoGraph, FullyConnectedGraph, GetDynamicOnePeerSendRecvRanks,
    GetExp2DynamicSendRecvMachineRanks, GetInnerOuterExpo2DynamicSendRecvRanks,
    GetInnerOuterRingDynamicSendRecvRanks, GetRecvWeights, GetSendWeights, IsRegularGraph,
    IsTopologyEquivalent, MeshGrid2DGraph, RingGraph, StarGraph, SymmetricExponentialGraph,
    TopologyArgumentError, spectral_gap, weight_matrix)

SIZES = list(range(1, 18)) + [24, 32, 64]

# (label, factory taking a size): every generator is documented (or built) doubly stochastic.
FACTORIES = [
    ("exp2", ExponentialTwoGraph),
    ("exp-base2", ExponentialGraph),
    ("exp-base3", lambda n: ExponentialGraph(n, base=3)),
    ("exp-base4", lambda n: ExponentialGraph(n, base=4)),
    ("symexp-base4", SymmetricExponentialGraph),
    ("symexp-base2", lambda n: SymmetricExponentialGraph(n, base=2)),
    ("mesh", MeshGrid2DGraph),
    ("star", StarGraph),
    ("star-last", lambda n: StarGraph(n, center_rank=n - 1)),
    ("ring0", RingGraph),
    ("ring1", lambda n: RingGraph(n, connect_style=1)),
    ("ring2", lambda n: RingGraph(n, connect_style=2)),
    ("full", FullyConnectedGraph),
]
FACTORY_IDS = [label for label, _ in FACTORIES]


def ceil_log(size, base):
    """Smallest m with base**m >= size, in exact integer arithmetic."""
    m, power = 0, 1
    while power < size:
        m, power = m + 1, power * base
    return m


def take(gen, count):
    return [next(gen) for _ in range(count)]


# ----------------------------------------------------------------------------- static generators

@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("label,factory", FACTORIES, ids=FACTORY_IDS)
def test_generator_is_doubly_stochastic_with_self_loops(label, factory, size):
    topo = factory(size)
    assert isinstance(topo, nx.DiGraph)
    assert sorted(topo.nodes()) == list(range(size))
    assert all(topo.has_edge(r, r) for r in range(size))
    matrix = weight_matrix(topo)
    assert matrix.dtype == np.float64 and (matrix >= 0).all()
    for line in list(matrix) + list(matrix.T):
        assert abs(math.fsum(line) - 1.0) <= 1e-12


@pytest.mark.parametrize("label,factory", FACTORIES, ids=FACTORY_IDS)
def test_size_one_is_a_single_unit_self_loop(label, factory):
    assert list(factory(1).edges(data="weight")) == [(0, 0, 1.0)]


def test_exponential_graph_size_8_example():
    topo = ExponentialGraph(8)
    assert GetSendWeights(topo, 0) == (0.25, {1: 0.25, 2: 0.25, 4: 0.25})
    assert GetRecvWeights(topo, 0) == (0.25, {4: 0.25, 6: 0.25, 7: 0.25})
    assert sorted(ExponentialGraph(6).successors(0)) == [0, 1, 2, 4]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("base", [2, 3, 4, 5])
def test_exponential_degree_is_ceil_log(size, base):
    topo = ExponentialGraph(size, base=base)
    expected = ceil_log(size, base)
    for rank in range(size):
        assert topo.out_degree(rank) - 1 == expected
        assert topo.in_degree(rank) - 1 == expected
    if base == 2:
        assert expected == math.ceil(math.log2(size))
        assert IsTopologyEquivalent(topo, ExponentialTwoGraph(size))


@pytest.mark.parametrize("size,base,power", [(300, 3, 243), (1001, 10, 1000)])
def test_exponential_integer_power_test(size, base, power):
    topo = ExponentialGraph(size, base=base)
    assert topo.has_edge(0, power)
    assert topo[0][power]["weight"] == 1.0 / (ceil_log(size, base) + 1)


def test_symmetric_exponential_size_12_example():
    topo = SymmetricExponentialGraph(12, 4)
    assert GetSendWeights(topo, 0) == (0.2, {1: 0.2, 4: 0.2, 8: 0.2, 11: 0.2})
    matrix = weight_matrix(topo)
    assert (matrix == matrix.T).all()


def test_mesh_size_6_weights_are_exact():
    matrix = weight_matrix(MeshGrid2DGraph(6))            # 2 x 3
    for corner in (0, 2, 3, 5):
        assert matrix[corner, corner] == 5 / 12
    for centre_edge in (1, 4):
        assert matrix[centre_edge, centre_edge] == 1 / 4
    assert matrix[0, 1] == 1 / 4 and matrix[0, 3] == 1 / 3
    assert (matrix == matrix.T).all()


@pytest.mark.parametrize("size,ncol", [(24, 6), (16, 4), (12, 4), (6, 3), (13, 13), (2, 2)])
def test_mesh_default_shape(size, ncol):
    expected = {0, 1, ncol} if ncol < size else {0, 1}
    assert set(MeshGrid2DGraph(size).successors(0)) == expected


def test_mesh_explicit_shape():
    topo = MeshGrid2DGraph(6, shape=(3, 2))
    assert set(topo.successors(0)) == {0, 1, 2}
    assert set(topo.successors(1)) == {0, 1, 3}


@pytest.mark.parametrize("size,center", [(4, 0), (5, 2), (16, 15)])
def test_star_weights(size, center):
    matrix = weight_matrix(StarGraph(size, center))
    expected = np.diag(np.full(size, 1 - 1 / size))
    expected[center, :] = expected[:, center] = 1 / size
    assert np.array_equal(matrix, expected)
    assert matrix[center, center] == 1 / size


@pytest.mark.parametrize("size", [3, 5, 8])
def test_ring_styles(size):
    both, left, right = (weight_matrix(RingGraph(size, s)) for s in (0, 1, 2))
    for i in range(size):
        for j in (i, (i + 1) % size, (i - 1) % size):
            assert both[i, j] == 1 / 3.0
        assert left[i, i] == left[i, (i - 1) % size] == 0.5
        assert right[i, i] == right[i, (i + 1) % size] == 0.5
    assert GetRecvWeights(RingGraph(size, 1), 0) == (0.5, {1: 0.5})
    assert GetRecvWeights(RingGraph(size, 2), 0) == (0.5, {size - 1: 0.5})


@pytest.mark.parametrize("style", [0, 1, 2])
def test_ring_small_sizes(style):
    assert np.array_equal(weight_matrix(RingGraph(2, style)), np.full((2, 2), 0.5))
    assert np.array_equal(weight_matrix(RingGraph(1, style)), np.ones((1, 1)))


def test_fully_connected_weights():
    assert np.array_equal(weight_matrix(FullyConnectedGraph(7)), np.full((7, 7), 1 / 7))


# ----------------------------------------------------------------------------- weight helpers

def test_topology_equivalence_against_literal_matrix():
    third = 1 / 3.0
    literal = np.array([[third, third, third, 0], [0, third, third, third],
                        [third, 0, third, third], [third, third, 0, third]])
    assert IsTopologyEquivalent(ExponentialGraph(4), nx.DiGraph(literal)) is True
    assert IsTopologyEquivalent(tu.ExponentialGraph(4), nx.DiGraph(literal))


def test_topology_equivalence_negatives():
    assert not IsTopologyEquivalent(None, RingGraph(4))
    assert not IsTopologyEquivalent(RingGraph(4), None)
    assert not IsTopologyEquivalent(RingGraph(4), RingGraph(5))
    assert not IsTopologyEquivalent(RingGraph(5), ExponentialGraph(5))      # edge counts differ
    assert not IsTopologyEquivalent(RingGraph(5, 1), RingGraph(5, 2))       # same counts
    assert IsTopologyEquivalent(RingGraph(3), FullyConnectedGraph(3)) is True


def test_regular_graph():
    assert IsRegularGraph(RingGraph(6)) and IsRegularGraph(ExponentialGraph(12))
    assert not IsRegularGraph(StarGraph(6)) and not IsRegularGraph(MeshGrid2DGraph(6))


def test_weights_without_self_loop_and_types():
    topo = nx.DiGraph()
    topo.add_weighted_edges_from([(0, 1, 0.5), (1, 0, 0.25), (2, 0, 0.75), (1, 2, 1.0)])
    self_weight, src = GetRecvWeights(topo, 0)
    assert self_weight == 0.0 and src == {1: 0.25, 2: 0.75}
    assert GetSendWeights(topo, 1) == (0.0, {0: 0.25, 2: 1.0})
    self_weight, dst = GetSendWeights(ExponentialGraph(5), 2)
    assert isinstance(self_weight, float)
    assert all(isinstance(k, int) and isinstance(w, float) for k, w in dst.items())


# ----------------------------------------------------------------------------- spectral gap

def test_spectral_gap_exp2_16():
    assert spectral_gap(ExponentialTwoGraph(16)) == pytest.approx(0.4, abs=1e-12)
    assert round(1 - spectral_gap(ExponentialTwoGraph(16)), 3) == 0.600


@pytest.mark.parametrize("log_size", range(1, 8))
def test_spectral_gap_exp2_formula(log_size):
    rho = 1 - spectral_gap(ExponentialTwoGraph(2 ** log_size))
    assert rho == pytest.approx(1 - 2 / (1 + log_size), abs=1e-12)


@pytest.mark.parametrize("size", list(range(3, 33)) + [64])
def test_spectral_gap_ring(size):
    rho = 1 - spectral_gap(RingGraph(size))
    assert rho == pytest.approx(1 / 3 + 2 / 3 * math.cos(2 * math.pi / size), abs=1e-12)


def test_spectral_gap_full_and_single():
    assert spectral_gap(FullyConnectedGraph(8)) == pytest.approx(1.0, abs=1e-12)
    assert spectral_gap(RingGraph(1)) == 1.0


# ----------------------------------------------------------------------------- dynamic generators

def test_one_peer_examples():
    assert take(GetDynamicOnePeerSendRecvRanks(ExponentialGraph(8), 0), 6) == \
        [([1], [7]), ([2], [6]), ([4], [4])] * 2
    assert take(GetDynamicOnePeerSendRecvRanks(ExponentialGraph(8), 3), 3) == \
        [([4], [2]), ([5], [1]), ([7], [7])]
    assert take(GetDynamicOnePeerSendRecvRanks(StarGraph(4), 0), 3) == \
        [([1], [1, 2, 3]), ([2], [1, 2, 3]), ([3], [1, 2, 3])]
    assert take(GetDynamicOnePeerSendRecvRanks(StarGraph(4), 1), 3) == \
        [([0], [0]), ([0], []), ([0], [])]


def test_one_peer_without_self_loops():
    cycle = nx.DiGraph([(0, 1), (1, 2), (2, 0)])
    assert take(GetDynamicOnePeerSendRecvRanks(cycle, 0), 2) == [([1], [2])] * 2
    complete = nx.DiGraph([(i, j) for i in range(3) for j in range(3) if i != j])
    assert take(GetDynamicOnePeerSendRecvRanks(complete, 0), 2) == [([1], [2]), ([2], [1])]


def test_one_peer_rank_without_out_neighbour_fails_when_advanced():
    gen = GetDynamicOnePeerSendRecvRanks(nx.DiGraph([(0, 0), (1, 1), (0, 1)]), 0)
    with pytest.raises(ValueError, match="no out-neighbour"):
        next(gen)


def all_rounds(make, size, rounds):
    return [take(make(rank), rounds) for rank in range(size)]


def assert_consistent(schedules):
    """If i sends to j in round t, then j receives from i in round t, and nothing else."""
    for t in range(len(schedules[0])):
        sent = {(i, j) for i, rounds in enumerate(schedules) for j in rounds[t][0]}
        heard = {(i, j) for j, rounds in enumerate(schedules) for i in rounds[t][1]}
        assert sent == heard


@pytest.mark.parametrize("topo", [ExponentialGraph(12), StarGraph(5), MeshGrid2DGraph(9),
                                  RingGraph(7, 1), SymmetricExponentialGraph(10)])
def test_one_peer_consistent_across_ranks(topo):
    size = topo.number_of_nodes()
    assert_consistent(all_rounds(lambda r: GetDynamicOnePeerSendRecvRanks(topo, r), size, 12))


def one_peer_round_matrices(size):
    """Mixing matrix of each one-peer exp-2 round: self 1/2, the single received peer 1/2."""
    schedules = all_rounds(lambda r: GetDynamicOnePeerSendRecvRanks(ExponentialTwoGraph(size), r),
                           size, int(math.log2(size)))
    matrices = []
    for t in range(len(schedules[0])):
        matrix = np.zeros((size, size))
        for rank, rounds in enumerate(schedules):
            send, recv = rounds[t]
            assert len(send) == 1 and len(recv) == 1
            matrix[rank, rank] = matrix[recv[0], rank] = 0.5
        matrices.append(matrix)
    return matrices


@pytest.mark.parametrize("size", [2, 4, 8, 16, 32])
def test_one_peer_exp2_averages_exactly(size):
    matrices = one_peer_round_matrices(size)
    assert len(matrices) == int(math.log2(size))
    average = np.full((size, size), 1.0 / size)
    for shift in range(len(matrices)):
        product = np.eye(size)
        for matrix in matrices[shift:] + matrices[:shift]:
            product = product @ matrix
        assert np.allclose(product, average, rtol=0, atol=1e-12)


def test_exp2_machine_example():
    gen = GetExp2DynamicSendRecvMachineRanks(20, 2, 0, 0)                   # 10 machines
    assert take(gen, 5) == [([1], [9]), ([2], [8]), ([4], [6]), ([8], [2]), ([1], [9])]
    gen = GetExp2DynamicSendRecvMachineRanks(8, 4, 5, 1)                    # 2 machines
    assert take(gen, 2) == [([0], [0]), ([0], [0])]


def test_exp2_machine_consistent():
    machines = all_rounds(lambda m: GetExp2DynamicSendRecvMachineRanks(30, 3, 3 * m, 0), 10, 8)
    assert_consistent(machines)


def test_inner_outer_ring_example():
    assert take(GetInnerOuterRingDynamicSendRecvRanks(12, 4, 0), 8) == \
        [([4], [8]), ([2], [3]), ([1], [3]), ([1], [2])] * 2


def test_inner_outer_expo2_example():
    assert take(GetInnerOuterExpo2DynamicSendRecvRanks(16, 8, 0), 5) == \
        [([8], [8]), ([3], [6]), ([5], [4]), ([1], [7]), ([2], [6])]


@pytest.mark.parametrize("world,local", [(12, 4), (16, 8), (24, 3), (30, 5), (20, 10)])
@pytest.mark.parametrize("make", [GetInnerOuterRingDynamicSendRecvRanks,
                                  GetInnerOuterExpo2DynamicSendRecvRanks])
def test_inner_outer_consistent(make, world, local):
    schedules = all_rounds(lambda r: make(world, local, r), world, 6 * local)
    assert_consistent(schedules)
    for rounds in schedules:
        for send, recv in rounds:
            assert len(send) == len(recv) == 1
            assert all(type(rank) is int for rank in send + recv)


# ----------------------------------------------------------------------------- errors

def _stuck_graph():
    return nx.DiGraph([(0, 0), (1, 1), (0, 1)])


ERRORS = [
    (lambda: ExponentialGraph(0), "size"),
    (lambda: ExponentialGraph(2.5), "size"),
    (lambda: ExponentialGraph("4"), "size"),
    (lambda: ExponentialGraph(8, base=1), "base"),
    (lambda: ExponentialGraph(8, base=2.0), "base"),
    (lambda: ExponentialTwoGraph(-1), "size"),
    (lambda: SymmetricExponentialGraph(0), "size"),
    (lambda: SymmetricExponentialGraph(8, base=0), "base"),
    (lambda: MeshGrid2DGraph(0), "size"),
    (lambda: MeshGrid2DGraph(6, shape=(2, 2)), "shape"),
    (lambda: MeshGrid2DGraph(6, shape=(6,)), "shape"),
    (lambda: MeshGrid2DGraph(6, shape=(-2, -3)), "shape"),
    (lambda: StarGraph(0), "size"),
    (lambda: StarGraph(4, center_rank=4), "center_rank"),
    (lambda: StarGraph(4, center_rank=-1), "center_rank"),
    (lambda: RingGraph(0), "size"),
    (lambda: RingGraph(4, connect_style=3), "connect_style"),
    (lambda: RingGraph(2, connect_style=-1), "connect_style"),
    (lambda: FullyConnectedGraph(0), "size"),
    (lambda: GetRecvWeights(RingGraph(4), 4), "rank"),
    (lambda: GetSendWeights(RingGraph(4), -1), "rank"),
    (lambda: spectral_gap(nx.DiGraph()), "topo"),
    (lambda: GetDynamicOnePeerSendRecvRanks(RingGraph(4), 4), "self_rank"),
    (lambda: GetDynamicOnePeerSendRecvRanks(nx.DiGraph([(1, 2), (2, 1)]), 0), "topo"),
    (lambda: next(GetDynamicOnePeerSendRecvRanks(_stuck_graph(), 0)), "topo"),
    (lambda: next(GetDynamicOnePeerSendRecvRanks(_stuck_graph(), 1)), "topo"),
    (lambda: GetExp2DynamicSendRecvMachineRanks(12, 5, 0, 0), "local_size"),
    (lambda: GetExp2DynamicSendRecvMachineRanks(4, 4, 0, 0), "world_size"),
    (lambda: GetExp2DynamicSendRecvMachineRanks(8, 2, 3, 0), "local_rank"),
    (lambda: GetExp2DynamicSendRecvMachineRanks(8, 2, 8, 0), "self_rank"),
    (lambda: GetInnerOuterRingDynamicSendRecvRanks(8, 2, 0), "local_size"),
    (lambda: GetInnerOuterRingDynamicSendRecvRanks(10, 4, 0), "local_size"),
    (lambda: GetInnerOuterRingDynamicSendRecvRanks(12, 4, 12), "self_rank"),
    (lambda: GetInnerOuterExpo2DynamicSendRecvRanks(12, 0, 0), "local_size"),
    (lambda: GetInnerOuterExpo2DynamicSendRecvRanks(4, 4, 0), "world_size"),
]


@pytest.mark.parametrize("call,argument", ERRORS)
def test_argument_errors(call, argument):
    with pytest.raises(TopologyArgumentError, match=argument) as info:
        call()
    assert isinstance(info.value, ValueError) and isinstance(info.value, AssertionError)


def test_ring_style_error_is_caught_as_assertion_error():
    with pytest.raises(AssertionError):
        RingGraph(5, connect_style=7)


@pytest.mark.parametrize("call", [lambda: GetRecvWeights(None, 0),
                                  lambda: GetSendWeights(np.eye(3), 0),
                                  lambda: GetDynamicOnePeerSendRecvRanks(None, 0)])
def test_non_graph_topology_is_type_error(call):
    with pytest.raises(TypeError, match="topo"):
        call()


# ----------------------------------------------------------------------------- facade

@pytest.mark.parametrize("old,new,args", [
    ("PowerTwoRingGraph", "ExponentialTwoGraph", (10,)),
    ("PowerGraph", "ExponentialGraph", (10, 3)),
])
def test_deprecated_graph_aliases_warn(old, new, args):
    with pytest.warns(DeprecationWarning, match=new):
        topo = getattr(tu, old)(*args)
    assert IsTopologyEquivalent(topo, getattr(tu, new)(*args))


def test_deprecated_dynamic_alias_warns():
    with pytest.warns(DeprecationWarning, match="GetDynamicOnePeerSendRecvRanks"):
        gen = tu.GetDynamicSendRecvRanks(ExponentialGraph(8), 0)
    assert next(gen) == ([1], [7])


def test_facade_exports_everything():
    import bluefog.topology as topology
    for name in topology.__all__:
        assert getattr(tu, name) is getattr(topology, name)
    assert {"PowerTwoRingGraph", "PowerGraph", "GetDynamicSendRecvRanks"} <= set(tu.__all__)
    assert all(hasattr(tu, name) for name in tu.__all__)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tu.ExponentialGraph(4)                                   # the current names do not warn
