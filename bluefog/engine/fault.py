"""Fault-tolerant mode: the engine keeps going when ranks die (ULFM underneath).

Turned on by ``BLUEFOG_FAULT_TOLERANT=1`` under ``mpirun --with-ft ulfm`` (``bfrun
--fault-tolerant``).  Ranks keep their world numbers; the engine talks through :class:`LiveComm`,
which maps a world rank to its place among the survivors and drops messages to and from the dead.
Work runs in epochs (:class:`Epoch`: a round, then the kernels it decided), each phase ending in
a uniform agreement, so an op completes on every survivor or on none; after a failure every
survivor revokes, shrinks, rebuilds its communicators and runs the epoch again
(:meth:`FaultState.recover`).  See docs/fault-tolerance.md ("How it works").

Example::

    state = FaultState(world)          # in Engine.__init__ when fault-tolerant
    comm = LiveComm(world.Dup(), state)
"""

import logging
from typing import Dict, List, Optional

import numpy as np

from bluefog.engine.mpi import mpi
from bluefog.errors import PeerFailureError

logger = logging.getLogger("bluefog")

DEAD_ROOT = ("broadcast: root rank {} has died (failed ranks: {}); no survivor holds its tensor. "
             "Broadcast from a live rank (bf.failed_ranks() lists the dead).")


def failure_classes() -> tuple:
    MPI = mpi()
    return (MPI.ERR_PROC_FAILED, MPI.ERR_PROC_FAILED_PENDING, MPI.ERR_REVOKED, MPI.ERR_IN_STATUS)


def is_failure(error: BaseException) -> bool:
    """An MPI error that signals a dead peer (or a peer's revocation after one, or an agreement
    that a survivor saw one)."""
    MPI = mpi()
    return isinstance(error, MPI.Exception) and error.Get_error_class() in failure_classes()


# ULFM's failure detector runs inside MPI's progress engine (its own thread crashed ranks at
# start-up: run/mpi_command.py), so an idle rank calls into MPI this often to send its heartbeats
# and watch the peer it observes: well under the detector's period (1 s; with
# BLUEFOG_FAILURE_TIMEOUT a quarter of it, at most 0.5 s: engine/mpi.py).
KEEP_ALIVE_SECONDS = 0.1


def keep_alive():
    """One pass of MPI's progress engine, touching no communicator a failure could revoke."""
    mpi().COMM_SELF.Iprobe(source=0, tag=0)


class Epoch:
    """A round and the kernels it launched, which complete together after one agreement: their
    outcomes meanwhile, and copies of what in-place ops overwrite (restored if it is redone)."""

    __slots__ = ("requests", "outcomes", "saved")

    def __init__(self, state: "FaultState"):
        state.begin_phase()
        self.requests: list = []
        self.outcomes: list = []        # (request, output, error)
        self.saved: list = []           # (tensor, its copy at launch)

    def launched(self, group):
        """The requests of a kernel start now: keep what they will overwrite."""
        self.requests += group
        self.saved += [(req.inplace, req.inplace.clone()) for req in group if req.inplace is not None]

    def restore(self) -> list:
        """After a failure: put the overwritten tensors back; the requests, to run again."""
        for tensor, copy in self.saved:
            tensor.copy_(copy)
        return self.requests


class FaultState:
    """The survivors: their world ranks, the failed set, and the agreement communicator."""

    def __init__(self, world):
        self.world = world
        self.world_group = world.Get_group()
        self.size = world.Get_size()
        self.rank = world.Get_rank()
        self.commit_comm = world.Dup()
        self.members: List[int] = list(range(self.size))
        self.failed: List[int] = []
        self.index: Dict[int, int] = {r: r for r in self.members}
        self.owed = False        # this rank is in a phase whose agreement it has not joined yet
        self.comms: List["LiveComm"] = []
        self._flag = np.ones(1, dtype=np.intc)

    def alive(self, rank: int) -> bool:
        return rank in self.index

    def begin_phase(self):
        self.owed = True

    def agree(self):
        """A kernel step: the uniform agreement that ends a phase; raises ``MPI_ERR_PROC_FAILED``
        when a survivor saw a failure in it."""
        flag = self._flag
        flag[0] = 1
        request = self.commit_comm.Iagree(flag)
        self.owed = False
        yield [request]
        if int(flag[0]) != 1:
            raise mpi().Exception(mpi().ERR_PROC_FAILED)

    def agreed(self, kernel):
        """``kernel``, then the agreement that every survivor completed it (a kernel)."""
        value = yield from kernel
        yield from self.agree()
        return value

    def recover(self) -> List[int]:
        """After a failure seen in a phase: revoke, join the pending agreement, shrink, rebuild the
        communicators over the survivors.  Returns the ranks newly found dead."""
        MPI = mpi()
        for comm in self.comms:
            comm.revoke()
        if self.owed:
            self.owed = False
            try:
                self.commit_comm.Agree(0)
            except MPI.Exception:
                pass
        old = self.commit_comm
        while True:
            try:
                base = old.Shrink()
                base.Set_errhandler(MPI.ERRORS_RETURN)
                fresh = [base.Shrink() for _ in self.comms]
            except MPI.Exception:      # (should not happen: shrink tolerates failures)
                continue
            if all(c.Get_size() == base.Get_size() for c in fresh):
                break
            old = base                 # another rank died between the shrinks: again
        members = sorted(MPI.Group.Translate_ranks(base.Get_group(),
                                                   list(range(base.Get_size())), self.world_group))
        newly = sorted(set(self.members) - set(members))
        self.commit_comm = base
        self.members = members
        self.index = {r: k for k, r in enumerate(members)}
        self.failed = sorted(set(range(self.size)) - set(members))
        for comm, new in zip(self.comms, fresh):
            new.Set_errhandler(MPI.ERRORS_RETURN)
            comm.replace(new)
        return newly


class LiveComm:
    """A communicator over the survivors addressed by world rank.

    Point-to-point calls to or from a dead rank return a null request (nothing moves); a broadcast
    from a dead root raises :class:`PeerFailureError`; collectives run over the survivors, and
    ``Get_size()`` is their count while ``Get_rank()`` stays the world rank.
    """

    def __init__(self, comm, state: FaultState):
        self.comm = comm
        self.state = state
        state.comms.append(self)

    @property
    def members(self) -> List[int]:
        return self.state.members

    def alive(self, rank: int) -> bool:
        return rank in self.state.index

    def replace(self, comm):
        self.comm = comm

    def revoke(self):
        try:
            self.comm.Revoke()
        except Exception:  # already revoked
            pass

    def Get_rank(self) -> int:
        return self.state.rank

    def Get_size(self) -> int:
        return len(self.state.members)

    def Get_attr(self, key):
        return self.comm.Get_attr(key)

    def Isend(self, buf, dest: int, tag: int = 0):
        k = self.state.index.get(dest)
        return mpi().REQUEST_NULL if k is None else self.comm.Isend(buf, dest=k, tag=tag)

    def Irecv(self, buf, source: int, tag: int = 0):
        k = self.state.index.get(source)
        return mpi().REQUEST_NULL if k is None else self.comm.Irecv(buf, source=k, tag=tag)

    def Ibcast(self, buf, root: int):
        k = self.state.index.get(root)
        if k is None:
            raise PeerFailureError(DEAD_ROOT.format(root, self.state.failed))
        return self.comm.Ibcast(buf, root=k)

    def Iallreduce(self, *args):
        return self.comm.Iallreduce(*args)

    def Iallgather(self, *args):
        return self.comm.Iallgather(*args)

    def Iallgatherv(self, *args):
        return self.comm.Iallgatherv(*args)

    def Ibarrier(self):
        return self.comm.Ibarrier()

    def Free(self):
        self.comm.Free()


def live_dim0s(comm, dim0s: Optional[List[int]]) -> Optional[List[int]]:
    """``dim0s`` indexed by world rank (0 for the dead) -> in the order of the survivors' comm."""
    members = getattr(comm, "members", None)
    if members is None or dim0s is None or len(dim0s) == len(members):
        return dim0s
    return [dim0s[r] for r in members]
