"""``import bluefog.tensorflow as bf``: the TensorFlow API on the same runtime as ``bluefog.torch``.

Needs TensorFlow (``pip install "bluefog-gossip[tensorflow]"``, or
``pip install -e ".[tensorflow]"`` in a checkout).  One runtime per process: ``bf.init()`` here
and in ``bluefog.torch`` start the same one.
"""

from bluefog.tensorflow.bridge import tf as _tf  # noqa: F401  (the clear ImportError comes first)
from bluefog.basics import (in_neighbor_ranks, init, is_topo_weighted, load_topology, local_rank,
                            local_size, machine_rank, machine_size, mpi_threads_supported,
                            out_neighbor_ranks, rank, resume, set_topology, shutdown, size,
                            suspend, unified_mpi_window_model_supported)
from bluefog.ops.collective import barrier
from bluefog.tensorflow.ops import (allgather, allreduce, broadcast, neighbor_allgather,
                                    neighbor_allreduce)
from bluefog.tensorflow.training import (BroadcastVariablesCallback, DistributedGradientTape,
                                         DistributedOptimizer, average_gradients,
                                         broadcast_variables)
from bluefog.topology import (ExponentialGraph, ExponentialTwoGraph, FullyConnectedGraph,
                              GetDynamicOnePeerSendRecvRanks, GetRecvWeights, GetSendWeights,
                              MeshGrid2DGraph, RingGraph, StarGraph, SymmetricExponentialGraph)

__all__ = [
    "init", "shutdown", "size", "local_size", "rank", "local_rank", "machine_size", "machine_rank",
    "load_topology", "set_topology", "is_topo_weighted", "in_neighbor_ranks", "out_neighbor_ranks",
    "mpi_threads_supported", "unified_mpi_window_model_supported", "suspend", "resume", "barrier",
    "allreduce", "broadcast", "allgather", "neighbor_allreduce", "neighbor_allgather",
    "broadcast_variables", "average_gradients", "DistributedGradientTape", "DistributedOptimizer",
    "BroadcastVariablesCallback",
    "ExponentialGraph", "ExponentialTwoGraph", "FullyConnectedGraph", "MeshGrid2DGraph",
    "RingGraph", "StarGraph", "SymmetricExponentialGraph", "GetDynamicOnePeerSendRecvRanks",
    "GetRecvWeights", "GetSendWeights",
]
