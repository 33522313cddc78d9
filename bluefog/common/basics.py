"""``bluefog.common.basics``: the Bluefog 0.3.0 import path of the framework-independent basics.

In 0.3.0 this module held ``BlueFogBasics``, a ctypes wrapper around the C library whose one
instance each framework module exposed as plain functions. There is no C library here, so the
wrapper class is gone; the functions themselves (the same objects as :mod:`bluefog.torch` and
:mod:`bluefog.tensorflow` export) are importable from this path.

Example::

    from bluefog.common.basics import init, rank, size
    init()
    print(rank(), size())
"""

from bluefog.basics import (get_skip_negotiate_stage, in_neighbor_machine_ranks, in_neighbor_ranks,
                            init, is_homogeneous, is_machine_topo_weighted, is_topo_weighted,
                            load_machine_topology, load_topology, local_rank, local_size,
                            machine_rank, machine_size, mpi_threads_supported, nccl_built,
                            out_neighbor_machine_ranks, out_neighbor_ranks, rank, resume,
                            set_machine_topology, set_skip_negotiate_stage, set_topology, shutdown,
                            size, suspend, unified_mpi_window_model_supported)
from bluefog.timeline import timeline_context, timeline_end_activity, timeline_start_activity

__all__ = [
    "init", "shutdown", "size", "local_size", "rank", "local_rank", "machine_size", "machine_rank",
    "load_topology", "set_topology", "load_machine_topology", "set_machine_topology",
    "is_topo_weighted", "is_machine_topo_weighted", "in_neighbor_ranks", "out_neighbor_ranks",
    "in_neighbor_machine_ranks", "out_neighbor_machine_ranks", "mpi_threads_supported",
    "unified_mpi_window_model_supported", "nccl_built", "is_homogeneous", "suspend", "resume",
    "set_skip_negotiate_stage", "get_skip_negotiate_stage", "timeline_start_activity",
    "timeline_end_activity", "timeline_context",
]
