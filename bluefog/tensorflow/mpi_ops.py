"""``bluefog.tensorflow.mpi_ops``: the Bluefog 0.3.0 import path of the TensorFlow ops.

The same objects as :mod:`bluefog.tensorflow` exports: the basics and the collective and neighbor
ops. New code should use ``bluefog.tensorflow``.

Example::

    from bluefog.tensorflow.mpi_ops import allreduce, init
    init()
    y = allreduce(x)
"""

from bluefog.tensorflow import (allgather, allreduce, barrier, broadcast, in_neighbor_ranks, init,
                                load_topology, local_rank, local_size, mpi_threads_supported,
                                neighbor_allgather, neighbor_allreduce, out_neighbor_ranks, rank,
                                set_topology, shutdown, size, unified_mpi_window_model_supported)

__all__ = [
    "init", "shutdown", "size", "local_size", "rank", "local_rank", "load_topology",
    "set_topology", "in_neighbor_ranks", "out_neighbor_ranks", "mpi_threads_supported",
    "unified_mpi_window_model_supported", "allreduce", "broadcast", "allgather",
    "neighbor_allreduce", "neighbor_allgather", "barrier",
]
