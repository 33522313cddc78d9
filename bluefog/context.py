"""The one runtime context of a process: MPI world, ranks, machines, topologies and the engine.

``bf.init()`` creates it (and may be called again: it re-reads ``BLUEFOG_NODES_PER_MACHINE``, rebuilds
the machine groups if that changed, and resets the topology); ``bf.shutdown()`` ends it.
"""

import atexit
import logging
import os
import signal
import sys
import threading
from typing import List, Optional

import networkx as nx

from bluefog import config
from bluefog.errors import NOT_INITIALIZED
from bluefog.topology import GetRecvWeights

logger = logging.getLogger("bluefog")


class Context:
    """Everything ``init`` sets up.  Reach it through :func:`current`."""

    def __init__(self):
        from bluefog.engine import Engine
        from bluefog.engine.cuda import CudaRuntime
        from bluefog.engine.mpi import mpi
        MPI = mpi()
        self.MPI = MPI
        self.world = MPI.COMM_WORLD
        self.size = self.world.Get_size()
        self.rank = self.world.Get_rank()
        self.settings = config.read()
        if self.settings.fault_tolerant:
            _check_ulfm(MPI, self.size)
        self.engine = Engine(self.world, self.settings.cycle_time_ms, self.settings.fusion_threshold,
                             self.settings.fault_tolerant)
        self.engine.failure_hooks.append(self._after_failure)
        # fault-tolerant mode: where each rank runs, so that a rank declared dead while frozen
        # (SIGSTOP, a hung loop) is ended rather than left holding the job open
        self._processes = (self.world.allgather((os.uname().nodename, os.getpid()))
                           if self.settings.fault_tolerant else None)
        self.caller_comm = self.world.Dup()   # collectives issued on the caller's thread
        self.cuda = CudaRuntime(self.rank, self.size, self.settings.ops_on_cpu)   # touches no GPU yet
        self.local_comm = None
        self.nodes_per_machine: object = "unset"
        self.topology: Optional[nx.DiGraph] = None
        self._neighbor_cache = None
        self.is_weighted = False
        self.machine_topology: Optional[nx.DiGraph] = None
        self.is_machine_weighted = False
        self.windows: dict = {}
        self.associated_p = False
        self.suspended = False
        self.build_machines()

    # ------------------------------------------------------------------ machines
    def build_machines(self):
        """(Re)build the machine-local groups from ``BLUEFOG_NODES_PER_MACHINE`` or shared memory."""
        per_machine = config.read().nodes_per_machine
        if per_machine == self.nodes_per_machine:
            return
        if self.local_comm is not None:
            self.local_comm.Free()
        if per_machine is None:
            self.local_comm = self.world.Split_type(self.MPI.COMM_TYPE_SHARED, key=self.rank)
        else:
            if self.size % per_machine:
                logger.warning("BLUEFOG_NODES_PER_MACHINE=%d does not divide the world size %d.",
                               per_machine, self.size)
            self.local_comm = self.world.Split(color=self.rank // per_machine, key=self.rank)
        self.nodes_per_machine = per_machine
        self.local_size = self.local_comm.Get_size()
        self.local_rank = self.local_comm.Get_rank()
        pairs = self.world.allgather((self.local_size, self.local_rank))
        self.homogeneous = all(ls == self.local_size and r % ls == lr
                               for r, (ls, lr) in enumerate(pairs))
        self.local_members = self.local_comm.allgather(self.rank)
        if not self.homogeneous and self.rank == 0:
            logger.warning("The ranks are not spread homogeneously over machines; machine-level "
                           "ops (hierarchical_neighbor_allreduce) need a homogeneous layout.")

    def machine_size(self) -> int:
        self.require_homogeneous()
        return self.size // self.local_size

    def machine_rank(self) -> int:
        self.require_homogeneous()
        return self.rank // self.local_size

    def require_homogeneous(self):
        if not self.homogeneous:
            raise AssertionError("Only supports homogeneous environment now")

    # ------------------------------------------------------------------ topology
    def _neighbor_lists(self):
        """(in, out) neighbors of this rank, recomputed only when the topology object changes."""
        cached = self._neighbor_cache
        if cached is None or cached[0] is not self.topology:
            cached = (self.topology, neighbors(self.topology, self.rank, incoming=True),
                      neighbors(self.topology, self.rank, incoming=False))
            self._neighbor_cache = cached
        return cached[1], cached[2]

    def in_neighbors(self) -> List[int]:
        return list(self._neighbor_lists()[0])

    def out_neighbors(self) -> List[int]:
        return list(self._neighbor_lists()[1])

    def recv_weights(self):
        return GetRecvWeights(self.topology, self.rank)

    def failed_ranks(self) -> List[int]:
        return self.engine.failed_ranks()

    def _after_failure(self, newly: List[int]):
        """Fault-tolerant mode, on every survivor at the same point (engine recovery): when the
        survivors' part of the graph is no longer strongly connected, use the default graph over
        the survivors (logged once, by the lowest survivor)."""
        if not newly:
            return
        live = [r for r in range(self.size) if r not in set(self.failed_ranks())]
        if self._processes is not None and self.rank == live[0]:
            here = os.uname().nodename
            for r in newly:
                host, pid = self._processes[r]
                if host == here:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:      # gone already
                        pass
        if self.topology is None:
            return
        if len(live) > 1 and nx.is_strongly_connected(self.topology.subgraph(live)):
            return
        from bluefog.topology import ExponentialGraph
        inner = ExponentialGraph(len(live))
        graph = nx.DiGraph()
        graph.add_nodes_from(range(self.size))
        graph.add_edges_from((live[u], live[v]) for u, v in inner.edges())
        self.topology = graph
        self.is_weighted = False
        if self.rank == live[0]:
            logger.warning("bluefog: the surviving ranks %s are no longer strongly connected in the "
                           "topology; using the default (exponential) graph over them.", live)

    def close(self):
        """Free the windows (collective, as every rank shuts down), stop the engine, free comms."""
        if self.failed_ranks():          # collective frees would wait for the dead
            self.engine.close()
            return
        for name in sorted(self.windows):
            try:
                self.windows.pop(name).window.free()
            except Exception:  # MPI may already be finalized at interpreter exit
                pass
        self.engine.close()
        self.cuda.close()
        for comm in (self.caller_comm, self.local_comm):
            try:
                comm.Free()
            except Exception:
                pass


def neighbors(graph: Optional[nx.DiGraph], node: int, incoming: bool) -> List[int]:
    if graph is None:
        return []
    found = graph.predecessors(node) if incoming else graph.successors(node)
    return sorted(int(r) for r in found if r != node)


_context: Optional[Context] = None
_lock = threading.Lock()
_atexit_registered = False


def current() -> Context:
    """The live context; ``ValueError`` if ``bf.init()`` has not run."""
    if _context is None:
        raise ValueError(NOT_INITIALIZED)
    return _context


def initialized() -> bool:
    return _context is not None


def create() -> Context:
    """Create the context on first use, or refresh the machine groups of the existing one."""
    global _context, _atexit_registered
    with _lock:
        if _context is None:
            _install_failure_hook()   # first: an exception inside Context() must end the job too
            _context = Context()
            if not _atexit_registered:
                atexit.register(_exit_after_failures)
                _atexit_registered = True
        else:
            _context.engine.drain()
            _context.build_machines()
        return _context


def destroy():
    """Shut down: fail pending ops, free communicators.  ``init`` may create a new context later."""
    global _context
    with _lock:
        if _context is not None:
            ctx, _context = _context, None
            ctx.close()


def _exit_after_failures():
    """At interpreter exit in fault-tolerant mode: wait for the survivors (a barrier), then end the
    process without ``MPI_Finalize``, exit status 0 (under ULFM's failure detector, finalizing
    waits for the dead after a death, and was seen to spin without one)."""
    ctx = _context
    tolerant = ctx is not None and ctx.engine.ft is not None
    if tolerant:
        try:
            _exit_barrier(ctx.engine)
        except Exception:  # shut down already: go anyway
            pass
    destroy()
    if tolerant:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        logging.shutdown()
        os._exit(0)


def _exit_barrier(engine):
    """A barrier over the survivors through the engine (fault-tolerant mode, at exit)."""
    from bluefog.engine import kernels
    from bluefog.engine.handle import Handle
    from bluefog.engine.request import Request
    request = Request(name="bluefog.exit", signature=("exit_barrier",),
                      start=lambda launch: kernels.barrier(engine.data_comm),
                      handle=Handle("bluefog.exit"))
    engine.wait(engine.submit(request))


def _check_ulfm(MPI, size: int):
    """Fault-tolerant mode needs ULFM, switched on by the launcher (Open MPI: --with-ft ulfm)."""
    if not hasattr(MPI.Comm, "Revoke") or not hasattr(MPI.Comm, "Iagree"):
        raise RuntimeError(f"{config.FAULT_TOLERANT}=1 needs an MPI with ULFM fault tolerance "
                           "(mpi4py >= 4 with MPI_Comm_revoke/shrink/agree); this one has none.")
    if (size > 1 and "Open MPI" in MPI.Get_library_version()
            and os.environ.get("OMPI_MCA_mpi_ft_enable") != "1"):
        raise RuntimeError(f"{config.FAULT_TOLERANT}=1 but the job was not started with ULFM on: "
                           "use `bfrun --fault-tolerant`, or `mpirun --with-ft ulfm` with the "
                           "failure-detector settings (see docs/fault-tolerance.md).")


def _install_failure_hook():
    """An uncaught exception on one rank (also one raised inside ``bf.init()``) ends the whole job at
    once, naming that rank."""
    if getattr(sys.excepthook, "_bluefog", False):
        return
    previous = sys.excepthook

    def hook(kind, value, tb):
        previous(kind, value, tb)
        ctx = _context
        world = ctx.world if ctx is not None else _initialized_world()
        if world is None or world.Get_size() == 1:
            return
        rank = world.Get_rank()
        from bluefog.run.failure import record_failure
        record_failure(rank, value)
        if ctx is not None and ctx.engine.ft is not None:     # the others go on without this rank
            sys.stderr.write(f"bluefog: rank {rank} failed with {kind.__name__}: {value}; "
                             "the other ranks go on (fault-tolerant mode).\n")
            sys.stderr.flush()
            os._exit(1)
        sys.stderr.write(f"bluefog: rank {rank} failed with {kind.__name__}: {value}; "
                         "aborting the job.\n")
        sys.stderr.flush()
        world.Abort(1)

    hook._bluefog = True
    sys.excepthook = hook


def _initialized_world():
    """MPI.COMM_WORLD if mpi4py has initialized MPI and not finalized it, else None."""
    MPI = sys.modules.get("mpi4py.MPI")
    try:
        if MPI is not None and MPI.Is_initialized() and not MPI.Is_finalized():
            return MPI.COMM_WORLD
    except Exception:
        pass
    return None
