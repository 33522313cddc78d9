"""``import bluefog.torch as bf``: the Bluefog 0.3.0 torch API."""

from bluefog.basics import (get_skip_negotiate_stage, in_neighbor_machine_ranks, in_neighbor_ranks,
                            init, is_homogeneous, is_machine_topo_weighted, is_topo_weighted,
                            load_machine_topology, load_topology, local_rank, local_size,
                            machine_rank, machine_size, mpi_threads_supported, nccl_built,
                            out_neighbor_machine_ranks, out_neighbor_ranks, rank, resume,
                            set_machine_topology, set_skip_negotiate_stage, set_topology, shutdown,
                            size, suspend, unified_mpi_window_model_supported)
from bluefog.ops.collective import (allgather, allgather_nonblocking, allreduce, allreduce_,
                                    allreduce_nonblocking, allreduce_nonblocking_, barrier,
                                    broadcast, broadcast_, broadcast_nonblocking,
                                    broadcast_nonblocking_)
from bluefog.ops.common import poll, synchronize, wait
from bluefog.ops.hierarchical import (hierarchical_neighbor_allreduce,
                                      hierarchical_neighbor_allreduce_nonblocking)
from bluefog.ops.neighbor import (neighbor_allgather, neighbor_allgather_nonblocking,
                                  neighbor_allreduce, neighbor_allreduce_nonblocking, pair_gossip,
                                  pair_gossip_nonblocking)
from bluefog.ops.window import (get_current_created_window_names, get_win_version,
                                neighbor_win_accumulate, neighbor_win_accumulate_nonblocking,
                                neighbor_win_get, neighbor_win_get_nonblocking, neighbor_win_put,
                                neighbor_win_put_nonblocking, turn_off_win_ops_with_associated_p,
                                turn_on_win_ops_with_associated_p, win_accumulate,
                                win_accumulate_nonblocking, win_associated_p, win_create, win_free,
                                win_get, win_get_nonblocking, win_lock, win_mutex, win_poll, win_put,
                                win_put_nonblocking, win_update, win_update_then_collect, win_wait)
from bluefog.timeline import timeline_context, timeline_end_activity, timeline_start_activity
from bluefog.topology import (ExponentialGraph, ExponentialTwoGraph, FullyConnectedGraph,
                              GetDynamicOnePeerSendRecvRanks, GetExp2DynamicSendRecvMachineRanks,
                              GetInnerOuterExpo2DynamicSendRecvRanks,
                              GetInnerOuterRingDynamicSendRecvRanks, GetRecvWeights, GetSendWeights,
                              IsRegularGraph, IsTopologyEquivalent, MeshGrid2DGraph, RingGraph,
                              StarGraph, SymmetricExponentialGraph)
from bluefog.torch.topology_util import (InferDestinationFromSourceRanks,
                                         InferSourceFromDestinationRanks)
from bluefog.optim import (CommunicationType, DistributedAdaptThenCombineOptimizer,
                           DistributedAdaptWithCombineOptimizer, DistributedAllreduceOptimizer,
                           DistributedGradientAllreduceOptimizer,
                           DistributedHierarchicalNeighborAllreduceOptimizer,
                           DistributedNeighborAllreduceOptimizer, DistributedPullGetOptimizer,
                           DistributedPushSumOptimizer, DistributedWinPutOptimizer,
                           allreduce_parameters, broadcast_optimizer_state, broadcast_parameters)

__all__ = [
    "init", "shutdown", "size", "local_size", "rank", "local_rank", "machine_size", "machine_rank",
    "load_topology", "set_topology", "load_machine_topology", "set_machine_topology",
    "in_neighbor_ranks", "out_neighbor_ranks", "in_neighbor_machine_ranks",
    "out_neighbor_machine_ranks", "mpi_threads_supported", "unified_mpi_window_model_supported",
    "nccl_built", "is_homogeneous", "suspend", "resume", "set_skip_negotiate_stage",
    "get_skip_negotiate_stage", "timeline_start_activity", "timeline_end_activity",
    "timeline_context",
    "allreduce", "allreduce_nonblocking", "allreduce_", "allreduce_nonblocking_", "allgather",
    "allgather_nonblocking", "broadcast", "broadcast_nonblocking", "broadcast_",
    "broadcast_nonblocking_", "neighbor_allgather", "neighbor_allgather_nonblocking",
    "neighbor_allreduce", "neighbor_allreduce_nonblocking", "hierarchical_neighbor_allreduce",
    "hierarchical_neighbor_allreduce_nonblocking", "poll", "synchronize", "wait", "barrier",
    "win_create", "win_free", "win_update", "win_update_then_collect", "neighbor_win_put",
    "neighbor_win_put_nonblocking", "neighbor_win_get", "neighbor_win_get_nonblocking",
    "neighbor_win_accumulate", "neighbor_win_accumulate_nonblocking", "win_put",
    "win_put_nonblocking", "win_get", "win_get_nonblocking", "win_accumulate",
    "win_accumulate_nonblocking", "win_wait", "win_poll", "win_mutex", "get_win_version",
    "get_current_created_window_names", "win_associated_p", "turn_on_win_ops_with_associated_p",
    "turn_off_win_ops_with_associated_p",
    "GetRecvWeights", "GetSendWeights", "IsRegularGraph", "IsTopologyEquivalent",
    "ExponentialTwoGraph", "ExponentialGraph", "FullyConnectedGraph", "MeshGrid2DGraph",
    "RingGraph", "StarGraph", "SymmetricExponentialGraph", "GetDynamicOnePeerSendRecvRanks",
    "GetExp2DynamicSendRecvMachineRanks", "GetInnerOuterRingDynamicSendRecvRanks",
    "GetInnerOuterExpo2DynamicSendRecvRanks", "InferSourceFromDestinationRanks",
    "InferDestinationFromSourceRanks",
    "broadcast_optimizer_state", "broadcast_parameters", "allreduce_parameters",
    "CommunicationType", "DistributedAdaptThenCombineOptimizer", "DistributedAdaptWithCombineOptimizer",
    "DistributedGradientAllreduceOptimizer", "DistributedAllreduceOptimizer",
    "DistributedNeighborAllreduceOptimizer", "DistributedHierarchicalNeighborAllreduceOptimizer",
    "DistributedWinPutOptimizer", "DistributedPullGetOptimizer", "DistributedPushSumOptimizer",
]
