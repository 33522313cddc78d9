"""``bluefog.torch.mpi_ops``: the Bluefog 0.3.0 import path of the communication ops.

Old scripts that write ``from bluefog.torch.mpi_ops import neighbor_allreduce`` keep working: every
name here is the very object that :mod:`bluefog.torch` exports (plus the five that 0.3.0 defined in
this module without exporting them: ``pair_gossip``, ``pair_gossip_nonblocking``, ``win_lock``,
``is_topo_weighted`` and ``is_machine_topo_weighted``). New code should use ``bluefog.torch``.

Example::

    from bluefog.torch.mpi_ops import init, neighbor_allreduce
    init()
    y = neighbor_allreduce(x)
"""

from bluefog.basics import is_machine_topo_weighted, is_topo_weighted
from bluefog.ops.neighbor import pair_gossip, pair_gossip_nonblocking
from bluefog.ops.window import win_lock
from bluefog.torch import (allgather, allgather_nonblocking, allreduce, allreduce_,
                           allreduce_nonblocking, allreduce_nonblocking_, barrier, broadcast,
                           broadcast_, broadcast_nonblocking, broadcast_nonblocking_,
                           get_current_created_window_names, get_skip_negotiate_stage,
                           get_win_version, hierarchical_neighbor_allreduce,
                           hierarchical_neighbor_allreduce_nonblocking, in_neighbor_machine_ranks,
                           in_neighbor_ranks, init, is_homogeneous, load_machine_topology,
                           load_topology, local_rank, local_size, machine_rank, machine_size,
                           mpi_threads_supported, nccl_built, neighbor_allgather,
                           neighbor_allgather_nonblocking, neighbor_allreduce,
                           neighbor_allreduce_nonblocking, neighbor_win_accumulate,
                           neighbor_win_accumulate_nonblocking, neighbor_win_get,
                           neighbor_win_get_nonblocking, neighbor_win_put,
                           neighbor_win_put_nonblocking, out_neighbor_machine_ranks,
                           out_neighbor_ranks, poll, rank, resume, set_machine_topology,
                           set_skip_negotiate_stage, set_topology, shutdown, size, suspend,
                           synchronize, timeline_context, timeline_end_activity,
                           timeline_start_activity, turn_off_win_ops_with_associated_p,
                           turn_on_win_ops_with_associated_p, unified_mpi_window_model_supported,
                           wait, win_accumulate, win_accumulate_nonblocking, win_associated_p,
                           win_create, win_free, win_get, win_get_nonblocking, win_mutex, win_poll,
                           win_put, win_put_nonblocking, win_update, win_update_then_collect,
                           win_wait)

__all__ = [
    "init", "shutdown", "size", "local_size", "rank", "local_rank", "machine_size", "machine_rank",
    "load_topology", "set_topology", "load_machine_topology", "set_machine_topology",
    "is_topo_weighted", "is_machine_topo_weighted", "in_neighbor_ranks", "out_neighbor_ranks",
    "in_neighbor_machine_ranks", "out_neighbor_machine_ranks", "mpi_threads_supported",
    "unified_mpi_window_model_supported", "nccl_built", "is_homogeneous", "suspend", "resume",
    "set_skip_negotiate_stage", "get_skip_negotiate_stage", "timeline_start_activity",
    "timeline_end_activity", "timeline_context",
    "allreduce", "allreduce_nonblocking", "allreduce_", "allreduce_nonblocking_", "allgather",
    "allgather_nonblocking", "broadcast", "broadcast_nonblocking", "broadcast_",
    "broadcast_nonblocking_", "neighbor_allgather", "neighbor_allgather_nonblocking",
    "neighbor_allreduce", "neighbor_allreduce_nonblocking", "hierarchical_neighbor_allreduce",
    "hierarchical_neighbor_allreduce_nonblocking", "pair_gossip", "pair_gossip_nonblocking",
    "poll", "synchronize", "wait", "barrier",
    "win_create", "win_free", "win_update", "win_update_then_collect", "neighbor_win_put",
    "neighbor_win_put_nonblocking", "neighbor_win_get", "neighbor_win_get_nonblocking",
    "neighbor_win_accumulate", "neighbor_win_accumulate_nonblocking", "win_put",
    "win_put_nonblocking", "win_get", "win_get_nonblocking", "win_accumulate",
    "win_accumulate_nonblocking", "win_wait", "win_poll", "win_mutex", "win_lock",
    "get_win_version", "get_current_created_window_names", "win_associated_p",
    "turn_on_win_ops_with_associated_p", "turn_off_win_ops_with_associated_p",
]
