"""Runtime basics (spec §1, §2.1, §2.2, §2.6) on every rank."""

import os

import networkx as nx
import numpy as np
import torch

import bluefog.torch as bf
from bluefog.common import topology_util
from casetools import expect_error, sizes


def case_rank_and_size_match_the_launcher():
    rank = os.environ.get("PMI_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0"))
    size = os.environ.get("PMI_SIZE", os.environ.get("OMPI_COMM_WORLD_SIZE", "1"))
    assert (bf.rank(), bf.size()) == (int(rank), int(size))
    assert 0 <= bf.local_rank() < bf.local_size() <= bf.size()
    assert bf.is_homogeneous()
    assert bf.machine_size() * bf.local_size() == bf.size()
    assert bf.machine_rank() == bf.rank() // bf.local_size()


def case_default_topology_is_exponential_and_init_resets_it():
    n = bf.size()
    assert bf.IsTopologyEquivalent(bf.load_topology(), topology_util.ExponentialGraph(n))
    if n == 4:
        third = 1 / 3.0
        literal = np.array([[third, third, third, 0], [0, third, third, third],
                            [third, 0, third, third], [third, third, 0, third]])
        assert bf.IsTopologyEquivalent(bf.load_topology(), nx.DiGraph(literal))
    assert bf.set_topology(topology_util.RingGraph(n))
    bf.init()
    assert bf.IsTopologyEquivalent(bf.load_topology(), topology_util.ExponentialGraph(n))
    assert not bf.is_topo_weighted() if hasattr(bf, "is_topo_weighted") else True


def case_set_topology_neighbors_and_weight_flag():
    n, r = bf.size(), bf.rank()
    for graph in [topology_util.RingGraph(n), topology_util.StarGraph(n),
                  topology_util.MeshGrid2DGraph(n), topology_util.FullyConnectedGraph(n),
                  topology_util.SymmetricExponentialGraph(n), topology_util.ExponentialGraph(n, 3)]:
        assert bf.set_topology(graph) is True
        assert bf.IsTopologyEquivalent(bf.load_topology(), graph)
        assert bf.in_neighbor_ranks() == sorted(j for j in graph.predecessors(r) if j != r)
        assert bf.out_neighbor_ranks() == sorted(j for j in graph.successors(r) if j != r)
        assert all(isinstance(j, int) for j in bf.in_neighbor_ranks())
    ring = topology_util.RingGraph(n)
    assert bf.set_topology(ring)
    assert bf.set_topology(ring, is_weighted=True)
    assert bf.is_topo_weighted(), "the weighted flag must not be ignored for an equal graph"
    assert bf.set_topology(ring, is_weighted=False) and not bf.is_topo_weighted()


def case_set_topology_rejects_bad_graphs():
    n = bf.size()
    expect_error(TypeError, "DiGraph", bf.set_topology, nx.Graph())
    expect_error(TypeError, "same number of nodes", bf.set_topology, topology_util.RingGraph(n + 1))


@sizes(2, 4)
def case_set_topology_differing_across_ranks_raises_everywhere():
    n, r = bf.size(), bf.rank()
    graph = nx.DiGraph(np.eye(n)) if r == 0 else topology_util.FullyConnectedGraph(n)
    expect_error(ValueError, "different topologies", bf.set_topology, graph)
    assert bf.set_topology(topology_util.StarGraph(n))


def case_machine_topology():
    m = bf.machine_size()
    expect_error(ValueError, "shall not be None", bf.set_machine_topology, None)
    expect_error(TypeError, "DiGraph", bf.set_machine_topology, nx.Graph())
    assert bf.set_machine_topology(topology_util.ExponentialGraph(m))
    assert bf.in_neighbor_machine_ranks() == sorted(
        j for j in bf.load_machine_topology().predecessors(bf.machine_rank()) if j != bf.machine_rank())
    assert bf.set_machine_topology(topology_util.ExponentialGraph(m), is_weighted=True)
    from bluefog.basics import is_machine_topo_weighted
    assert is_machine_topo_weighted()


def _nccl_expected(local_size):
    import torch.distributed as dist
    return bool(torch.cuda.is_available() and dist.is_nccl_available()
                and local_size <= torch.cuda.device_count())


def case_capabilities():
    assert bf.nccl_built() is _nccl_expected(bf.local_size())
    assert not torch.cuda.is_initialized()       # asking creates no CUDA context
    assert bf.mpi_threads_supported() in (True, False)
    assert isinstance(bf.unified_mpi_window_model_supported(), bool)


def case_suspend_and_resume():
    bf.suspend()
    try:
        expect_error(ValueError, "suspended", bf.allreduce, torch.ones(1))
    finally:
        bf.resume()
    assert bf.allreduce(torch.ones(1)).item() == 1.0


def case_skip_negotiate_flag():
    assert bf.get_skip_negotiate_stage() is False
    bf.set_skip_negotiate_stage(True)
    assert bf.get_skip_negotiate_stage() is True
    assert bf.allreduce(torch.ones(2)).tolist() == [1.0, 1.0]
    bf.set_skip_negotiate_stage(False)
    assert bf.get_skip_negotiate_stage() is False


@sizes(2, 4)
def case_infer_topology_helpers():
    n, r = bf.size(), bf.rank()
    for graph in [topology_util.ExponentialGraph(n), topology_util.RingGraph(n),
                  topology_util.StarGraph(n), topology_util.MeshGrid2DGraph(n),
                  topology_util.FullyConnectedGraph(n), topology_util.RingGraph(n, connect_style=2)]:
        bf.set_topology(graph)
        srcs, W = bf.InferSourceFromDestinationRanks(dst_ranks=bf.out_neighbor_ranks(),
                                                     construct_adjacency_matrix=True)
        assert sorted(srcs) == bf.in_neighbor_ranks()
        expected = (nx.to_numpy_array(graph, nodelist=range(n)) > 0).astype(float)
        np.testing.assert_allclose(W, expected / expected.sum(axis=0))
        dsts, W2 = bf.InferDestinationFromSourceRanks(src_ranks=bf.in_neighbor_ranks(),
                                                      construct_adjacency_matrix=True)
        assert sorted(dsts) == bf.out_neighbor_ranks()
        np.testing.assert_allclose(W2, expected / expected.sum(axis=0))
    expect_error(AssertionError, "other than self", bf.InferSourceFromDestinationRanks, [r])
    expect_error(ValueError, "unique", bf.InferSourceFromDestinationRanks, [(r + 1) % n] * 2)


def case_infer_with_no_neighbors():
    assert bf.InferSourceFromDestinationRanks(dst_ranks=[]) == ([] if bf.size() == 1 else
                                                               bf.InferSourceFromDestinationRanks([]))


def case_env_helper():
    from bluefog.common.util import env
    with env(BLUEFOG_TEST_VALUE="7", BLUEFOG_UNSET=None):
        assert os.environ["BLUEFOG_TEST_VALUE"] == "7"
        assert "BLUEFOG_UNSET" not in os.environ
    assert "BLUEFOG_TEST_VALUE" not in os.environ


@sizes(4)
def case_fake_machines_from_environment():
    os.environ["BLUEFOG_NODES_PER_MACHINE"] = "2"
    try:
        bf.init()
        r = bf.rank()
        assert (bf.local_size(), bf.local_rank(), bf.machine_size(), bf.machine_rank()) == (2, r % 2, 2, r // 2)
        assert bf.is_homogeneous()
        total = bf.allreduce(torch.tensor([float(r)]), average=False, is_hierarchical_local=True)
        assert total.item() == (r // 2) * 4 + 1
        avg = bf.allreduce_(torch.tensor([float(r)]), average=True, is_hierarchical_local=True)
        assert avg.item() == (r // 2) * 2 + 0.5
    finally:
        del os.environ["BLUEFOG_NODES_PER_MACHINE"]
        bf.init()
    assert bf.local_size() == 4 and bf.machine_size() == 1
