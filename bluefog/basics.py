"""init / shutdown, ranks and machines, topology get/set, and runtime switches (spec §1, §2.1, §2.2)."""

import hashlib
import logging
import os
from typing import Callable, List, Optional

import networkx as nx
import torch

from bluefog import config, context
from bluefog.context import neighbors
from bluefog.engine import cuda, memory
from bluefog.errors import ArgumentAssertionError
from bluefog.timeline import tracer as timeline
from bluefog.topology import ExponentialGraph, IsTopologyEquivalent, weight_matrix

logger = logging.getLogger("bluefog")


class _RankFilter(logging.Filter):
    """Stamps ``record.rank`` on every bluefog log record (the launcher's rank before ``init``)."""

    rank = os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMI_RANK", "0"))

    def filter(self, record):
        record.rank = self.rank
        return True


def _configure_logging(rank=None, level: Optional[str] = None, hide_time: bool = False):
    """Send ``logging.getLogger("bluefog")`` to stderr as ``<time> <LEVEL> [rank N] <message>``.

    Runs at import (tolerant: a bad ``BLUEFOG_LOG_LEVEL`` means warning there) and again in every
    ``init()`` with the values that ``config.read()`` validated and the MPI rank.
    """
    handler = next((h for h in logger.handlers if getattr(h, "_bluefog", False)), None)
    if handler is None:
        handler = logging.StreamHandler()
        handler._bluefog = True
        handler.addFilter(_RankFilter())
        logger.addHandler(handler)
        logger.propagate = False
    if rank is not None:
        _RankFilter.rank = str(rank)
    stamp = "" if hide_time else "%(asctime)-15s "
    handler.setFormatter(logging.Formatter(stamp + "%(levelname)s [rank %(rank)s] %(message)s"))
    logger.setLevel(config.LOG_LEVELS.get(level or "warning", logging.WARNING))


_configure_logging(level=config.log_level(strict=False), hide_time=config.log_hide_time(strict=False))
_unknown_checked = False


def init(topology_fn: Optional[Callable[[int], nx.DiGraph]] = None, is_weighted: bool = False):
    """Start (or refresh) the runtime and set the topology (default: ``ExponentialGraph(size())``).

    Collective.  May be called again: it re-reads ``BLUEFOG_NODES_PER_MACHINE`` and resets the
    topology, keeping windows, switches and the timeline.

    Example::

        import bluefog.torch as bf
        bf.init()
        print(bf.rank(), bf.size())
    """
    ctx = context.create()
    settings = config.read()
    _configure_logging(ctx.rank, settings.log_level, settings.log_hide_time)
    memory.pool.limit = settings.output_pool_mb << 20       # the one buffer pool's limit
    global _unknown_checked
    if not _unknown_checked and ctx.rank == 0:
        for name in config.unknown_names():
            logger.warning("Ignoring unknown environment variable %s (see docs/environment.md).",
                           name)
    _unknown_checked = True
    if settings.timeline and not timeline.running():
        timeline.start(f"{settings.timeline}{ctx.rank}.json")
    topology = topology_fn(ctx.size) if topology_fn is not None else ExponentialGraph(ctx.size)
    set_topology(topology, is_weighted)


def shutdown():
    """Stop the runtime; pending ops fail with ``ShutdownError``.  ``init()`` may start it again.

    Also closes the timeline file (writing its closing ``]``); a later ``init()`` continues it.
    """
    context.destroy()
    timeline.stop()
    timeline.set_paused(False)


def size() -> int:
    """Number of ranks in the job."""
    return context.current().size


def rank() -> int:
    """This process's rank."""
    return context.current().rank


def failed_ranks() -> List[int]:
    """The ranks known dead, sorted, the same on every survivor (fault-tolerant mode,
    ``bfrun --fault-tolerant``); always empty otherwise.

    Example::

        if bf.failed_ranks():
            print(f"going on without {bf.failed_ranks()}")
    """
    return context.current().failed_ranks()


def local_size() -> int:
    """Number of ranks on this machine (or in this ``BLUEFOG_NODES_PER_MACHINE`` block)."""
    return context.current().local_size


def local_rank() -> int:
    """This rank's index on its machine."""
    return context.current().local_rank


def machine_size() -> int:
    """Number of machines (homogeneous layouts only)."""
    return context.current().machine_size()


def machine_rank() -> int:
    """This machine's index (homogeneous layouts only)."""
    return context.current().machine_rank()


def is_homogeneous() -> bool:
    """True when every machine holds the same number of contiguous ranks."""
    return context.current().homogeneous


def _digest(topology: nx.DiGraph, is_weighted: bool) -> int:
    data = weight_matrix(topology).tobytes() + bytes([int(is_weighted)])
    return int.from_bytes(hashlib.blake2b(data, digest_size=7).digest(), "little")


def set_topology(topology: Optional[nx.DiGraph] = None, is_weighted: bool = False) -> bool:
    """Set the rank graph (collective).  Returns False, changing nothing, while windows exist.

    Example::

        bf.set_topology(bf.RingGraph(bf.size()), is_weighted=True)
    """
    ctx = context.current()
    if topology is None:
        topology = ExponentialGraph(ctx.size)
    if not isinstance(topology, nx.DiGraph):
        raise TypeError("topology must be a networkx.DiGraph object.")
    if topology.number_of_nodes() != ctx.size:
        raise TypeError(f"topology must have the same number of nodes as bf.size() ({ctx.size}); "
                        f"got {topology.number_of_nodes()}.")
    from bluefog.ops.collective import allgather
    digests = allgather(torch.tensor([_digest(topology, is_weighted)], dtype=torch.int64),
                        name="bluefog.set_topology")
    if not bool((digests == digests[0]).all()):
        raise ValueError("set_topology: ranks passed different topologies or is_weighted flags; "
                         "every rank must set the same graph.")
    if IsTopologyEquivalent(topology, ctx.topology) and bool(is_weighted) == ctx.is_weighted:
        return True
    if ctx.windows:
        if ctx.local_rank == 0:
            logger.error("Cannot set the topology while windows exist (%s); call bf.win_free() "
                         "first.", ", ".join(sorted(ctx.windows)))
        return False
    ctx.topology = topology
    ctx.is_weighted = bool(is_weighted)
    if ctx.local_rank == 0:
        logger.info("Topology is set (weighted=%s).", ctx.is_weighted)
    return True


def load_topology() -> Optional[nx.DiGraph]:
    """The graph given to the last effective ``set_topology``."""
    return context.current().topology


def is_topo_weighted() -> bool:
    """Whether the topology was set with ``is_weighted=True`` (its edge weights are used)."""
    return context.current().is_weighted


def in_neighbor_ranks() -> List[int]:
    """Ranks this rank receives from (ascending, without self)."""
    return context.current().in_neighbors()


def out_neighbor_ranks() -> List[int]:
    """Ranks this rank sends to (ascending, without self)."""
    return context.current().out_neighbors()


def set_machine_topology(topology: Optional[nx.DiGraph], is_weighted: bool = False) -> bool:
    """Set the machine graph used by ``hierarchical_neighbor_allreduce`` (no communication)."""
    ctx = context.current()
    if topology is None:
        raise ValueError("Machine topology shall not be None.")
    if not isinstance(topology, nx.DiGraph):
        raise TypeError("machine topology must be a networkx.DiGraph object.")
    if not ctx.homogeneous:
        raise ArgumentAssertionError("Only supports homogeneous environment now")
    if topology.number_of_nodes() != ctx.machine_size():
        raise TypeError(f"machine topology must have bf.machine_size() ({ctx.machine_size()}) nodes; "
                        f"got {topology.number_of_nodes()}.")
    if (IsTopologyEquivalent(topology, ctx.machine_topology)
            and bool(is_weighted) == ctx.is_machine_weighted):
        return True
    ctx.machine_topology = topology
    ctx.is_machine_weighted = bool(is_weighted)
    return True


def load_machine_topology() -> Optional[nx.DiGraph]:
    """The machine topology set by :func:`set_machine_topology` (``None`` until one is set)."""
    return context.current().machine_topology


def is_machine_topo_weighted() -> bool:
    """Whether the machine topology was set with ``is_weighted=True``."""
    return context.current().is_machine_weighted


def in_neighbor_machine_ranks() -> List[int]:
    """Machine ranks this machine receives from in the machine topology (``[]`` without one)."""
    ctx = context.current()
    if ctx.machine_topology is None:
        return []
    return neighbors(ctx.machine_topology, ctx.machine_rank(), incoming=True)


def out_neighbor_machine_ranks() -> List[int]:
    """Machine ranks this machine sends to in the machine topology (``[]`` without one)."""
    ctx = context.current()
    if ctx.machine_topology is None:
        return []
    return neighbors(ctx.machine_topology, ctx.machine_rank(), incoming=False)


def mpi_threads_supported() -> bool:
    """True when MPI runs with ``MPI_THREAD_MULTIPLE``."""
    ctx = context.current()
    return ctx.MPI.Query_thread() == ctx.MPI.THREAD_MULTIPLE


def unified_mpi_window_model_supported() -> bool:
    """True when MPI windows use the unified memory model (collective: makes a dummy window)."""
    ctx = context.current()
    MPI = ctx.MPI
    win = MPI.Win.Allocate(8, comm=ctx.caller_comm)
    try:
        return win.Get_attr(MPI.WIN_MODEL) == MPI.WIN_UNIFIED
    finally:
        win.Free()


def nccl_built() -> bool:
    """True only when CUDA tensors would go over NCCL with one GPU per local rank: torch has NCCL,
    CUDA devices are visible, ``BLUEFOG_OPS_ON_CPU`` is off and no two local ranks must share a GPU
    (then CUDA tensors are staged through host memory).  Works before ``init``; creates no CUDA
    context."""
    if context.initialized():
        local_size = context.current().local_size
    else:
        local_size = int(os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE")
                         or os.environ.get("MPI_LOCALNRANKS") or 1)
    return cuda.nccl_built(local_size)


def suspend():
    """Pause bluefog between notebook cells (``ibfrun``), so idle engines use no CPU.

    Until :func:`resume`, every op (collective, neighbor, window, mutex, version) raises
    ``ValueError`` and the user timeline calls return False; the engine's background thread
    sleeps.  Ops already in flight stay pending (``synchronize`` on one still drives it).

    Example::

        bf.suspend()
        ...            # think, edit, plot
        bf.resume()
    """
    ctx = context.current()
    ctx.suspended = True
    ctx.engine.suspend(True)
    timeline.set_paused(True)


def resume():
    """Undo :func:`suspend`."""
    ctx = context.current()
    ctx.suspended = False
    ctx.engine.suspend(False)
    timeline.set_paused(False)


def set_skip_negotiate_stage(value: bool):
    """Run ops straight from the local queue, without matching names across ranks (collective)."""
    if not context.initialized():
        logger.error("Cannot set skip negotiate stage before bf.init().")
        return
    engine = context.current().engine
    engine.drain()
    engine.skip_negotiation = bool(value)


def get_skip_negotiate_stage() -> bool:
    """Whether the cross-rank check of op names, shapes and dtypes is off (see
    :func:`set_skip_negotiate_stage`); ``False`` before ``init()``."""
    return context.current().engine.skip_negotiation if context.initialized() else False
