"""The MPI side of window ops: window memory, one-sided transfers, the mutex, and their worker.

Every bluefog window is one ``MPI.Win.Allocate`` region per rank (never ``Win.Create`` over user
memory: only MPI-allocated memory gets passive progress on every MPI we support).
Each rank opens a single ``Lock_all(MODE_NOCHECK)`` epoch at creation and keeps it until the window
is freed; every transfer is completed with ``Flush``, so a put, get or accumulate finishes while the
target rank computes or sleeps without calling MPI.

Layout of one rank's region (byte offsets, each part aligned to 64 bytes)::

    [ mutex int64[size] | version int64[size] | p float64[size] ]  meta: same offsets everywhere
    [ self: numel elements ]                                        the owner's mirror (win_get)
    [ slot 0 ] [ slot 1 ] ...                                       one per in-neighbour, ascending

Entry ``j`` of the mutex and p arrays belongs to the buffer written by rank ``j`` (entry ``rank`` of
p is the owner's own push-sum weight).  Entry ``i`` of the version array counts the puts this rank
has completed to rank ``i``: a writer only bumps its own memory after each put, and the owner of a
buffer reads the count from the writer's window (a one-sided ``Get``) when it asks for versions, so
a put moves its data and nothing else.  A writer finds its slot on a target from the
topology: the slot index is its position among the target's in-neighbours.

The mutex is a test-and-set spin lock on ``Fetch_and_op(REPLACE)`` (not ``Compare_and_swap``, which
crashes Open MPI 4.1 targets), polled with :class:`Backoff`, so it behaves like ``threading.Lock``.

Example::

    win = Window(comm, (3,), torch.float32, in_ranks=[1, 2], remote_slots={1: 0, 3: 1},
                 chunk=1 << 20)
    win.send(torch.ones(3), [(1, 1.0), (3, 0.5)], accumulate=False, p_self=None, mutex=False)
    win.free()
"""

import collections
import functools
import itertools
import threading
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from bluefog.engine.handle import Handle
from bluefog.engine.polling import Backoff
from bluefog.engine.kernels import scaled
from bluefog.engine.memory import BoundedCache
from bluefog.engine.mpi import datatype, mpi

WINDOW_DTYPES = (torch.int32, torch.int64, torch.float32, torch.float64)
_ALIGN = 64
_ONE = np.ones(1, dtype=np.int64)
_ZERO = np.zeros(1, dtype=np.int64)


def _nothing():
    pass


def _aligned(nbytes: int) -> int:
    return (nbytes + _ALIGN - 1) // _ALIGN * _ALIGN


class Window:
    """One rank's part of a window: MPI memory exposed as torch tensors without copies."""

    def __init__(self, comm, shape: Tuple[int, ...], dtype: torch.dtype, in_ranks: Sequence[int],
                 remote_slots: Dict[int, int], chunk: int):
        MPI = mpi()
        self.MPI = MPI
        self.rank = comm.Get_rank()
        self.size = size = comm.Get_size()
        self.shape = tuple(shape)
        self.dtype = dtype
        self.numel = int(np.prod(self.shape, dtype=np.int64))
        self.in_ranks = list(in_ranks)
        self.chunk = max(1, int(chunk))
        self.np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
        self.itemsize = self.np_dtype.itemsize
        self.nbytes = self.numel * self.itemsize
        self.mpi_type = datatype(np.empty(0, dtype=self.np_dtype))
        self.meta = _aligned(24 * size)
        self.stride = _aligned(max(self.nbytes, 1))
        # where this rank writes on each target (its slot, its p entry) and reads its put count
        self.slot_disp = {t: self.meta + self.stride * (1 + k) for t, k in remote_slots.items()}
        self.version_spec = (8 * size + 8 * self.rank, 1, MPI.INT64_T)   # my count on a writer
        self.p_spec = (16 * size + 8 * self.rank, 1, MPI.DOUBLE)
        nbytes = self.meta + self.stride * (1 + len(self.in_ranks))
        self.win = MPI.Win.Allocate(nbytes, 1, comm=comm)
        raw = np.frombuffer(self.win.tomemory(), dtype=np.uint8)
        self.mutex = raw[0:8 * size].view(np.int64)
        self.version = raw[8 * size:16 * size].view(np.int64)   # puts completed to i, ever
        self.p = raw[16 * size:24 * size].view(np.float64)
        self.self_np = self._region(raw, 0)
        self.self_tensor = torch.from_numpy(self.self_np).view(self.shape)
        self.slot_np = {j: self._region(raw, 1 + k) for k, j in enumerate(self.in_ranks)}
        self.slots = {j: torch.from_numpy(a).view(self.shape) for j, a in self.slot_np.items()}
        # a get of j's self memory into its slot here (fetch)
        self._reads = {j: self._pieces(a, self.meta) for j, a in self.slot_np.items()}
        # Versions: each writer counts its completed puts to each target in its own window memory
        # (``_sent``: the version array as Python ints); an owner reads its writers' counts and
        # remembers what they were at its last update; it counts its own gets locally.
        self._sent = memoryview(self.version)
        self._counts_read = np.zeros(size, dtype=np.int64)
        self._seen = np.zeros(size, dtype=np.int64)
        self._gets = [0] * size
        self._lock = threading.Lock()
        self._views = BoundedCache(16)       # see view_of
        self._plans = BoundedCache(64)       # see _send_plan
        self.unified = self.win.Get_attr(MPI.WIN_MODEL) == MPI.WIN_UNIFIED
        self.win.Lock_all(MPI.MODE_NOCHECK)
        self.open = True

    def _region(self, raw: np.ndarray, index: int) -> np.ndarray:
        start = self.meta + index * self.stride
        return raw[start:start + self.nbytes].view(self.np_dtype)

    def view_of(self, tensor: torch.Tensor) -> np.ndarray:
        """A numpy array over a contiguous CPU tensor of this window's dtype and size.

        Cached by address (an address names the same bytes whichever tensor owns them now), which
        saves the cost of ``Tensor.numpy()`` on every put of the same tensor.
        """
        ptr = tensor.data_ptr()
        found = self._views.get(ptr)
        if found is None:
            memory = self.MPI.memory.fromaddress(ptr, self.nbytes) if self.nbytes else b""
            found = self._views.put(ptr, np.frombuffer(memory, dtype=self.np_dtype))
        return found

    # ------------------------------------------------------------------ one-sided transfers
    def send(self, tensor: torch.Tensor, targets: Sequence[Tuple[int, float]], accumulate: bool,
             p_self: Optional[float], mutex: bool, reuse: bool = False):
        """Put (or add, with ``accumulate``) the CPU ``tensor`` times each target's weight into my
        slot on every ``(target, weight)``; a put counts a version there, and ``p_self`` (when
        given) times the weight goes to my p entry.  With ``mutex`` each target is written under
        my mutex there.  When this returns the data is in the targets' memory, whatever they do.

        ``reuse``: ``targets`` is one long-lived object passed again and again (the default
        targets), so the messages made for it are kept when they read the tensor itself (every
        weight 1): the common call costs one MPI call per target and a ``Flush_all``.
        """
        if mutex:                 # each target alone, completed and counted under its mutex
            for target, weight in targets:
                self.acquire(target, self.rank)
                try:
                    self.send(tensor, ((target, weight),), accumulate, p_self, False)
                finally:
                    self.release(target, self.rank)
            return
        found = self._plans.get((tensor.data_ptr(), id(targets))) if reuse else None
        transfers, flush, ranks, _ = found or self._send_plan(tensor, targets, reuse)
        win = self.win
        if accumulate:
            SUM = self.MPI.SUM
            for target, message, spec in transfers:
                win.Accumulate(message, target, spec, SUM)
        else:
            for target, message, spec in transfers:
                win.Put(message, target, spec)
        kept = None if p_self is None else self._send_p(targets, p_self, accumulate)
        flush()
        del kept                  # referenced until here: mpi4py does not keep send buffers
        if not accumulate:
            self._count_puts(ranks)

    def _send_plan(self, tensor: torch.Tensor, targets, reuse: bool):
        """What :meth:`send` posts: ``(target, message, spec)`` transfers of ``tensor`` (weight 1)
        or its scaled copy in :meth:`_pieces`, the call that completes them, the target ranks and
        ``targets``.  Kept, with ``reuse`` and every weight 1, by the tensor's address (which names
        the same bytes whichever tensor owns them later, see :meth:`view_of`) and the targets' id
        (the entry keeps the targets, so their id stays theirs; the messages keep the view)."""
        view, ranks, win = self.view_of(tensor), [target for target, _ in targets], self.win
        transfers = [(target, message, spec) for target, weight in targets
                     for message, spec in self._pieces(
                         view if weight == 1.0 else scaled(tensor.detach(), weight).numpy(),
                         self.slot_disp[target])]
        flush = (win.Flush_all if len(ranks) > 1 else functools.partial(win.Flush, ranks[0])
                 if ranks else _nothing)
        plan = (transfers, flush, ranks, targets)
        if reuse and all(weight == 1.0 for _, weight in targets):
            self._plans.put((tensor.data_ptr(), id(targets)), plan)
        return plan

    def _pieces(self, data: np.ndarray, disp: int) -> list:
        """``(local message, remote spec)`` pairs moving the window-sized ``data`` to or from the
        remote region at byte ``disp``, in messages of at most ``chunk`` elements."""
        data, kind, step = data.reshape(-1), self.mpi_type, self.chunk
        return [([data[start:start + step], kind],
                 (disp + start * self.itemsize, min(step, self.numel - start), kind))
                for start in range(0, max(self.numel, 1), step)]

    def _send_p(self, targets, p_self: float, accumulate: bool) -> list:
        """Start sending ``p_self`` times each target's weight to my p entry there (added, with
        ``accumulate``); returns the messages (keep them until flushed)."""
        MPI = self.MPI
        values = [np.array([p_self * weight], dtype=np.float64) for _, weight in targets]
        for (target, _), value in zip(targets, values):
            self.win.Accumulate([value, MPI.DOUBLE], target, self.p_spec,
                                MPI.SUM if accumulate else MPI.REPLACE)
        return values

    def _count_puts(self, targets: Sequence[int]):
        """One more completed put to each of ``targets``, in my window memory, where the targets
        read it (:meth:`versions`): in the unified memory model a store is visible to remote gets
        without further calls, in the separate one ``Win_sync`` publishes it."""
        counts = self._sent
        for target in targets:
            counts[target] += 1
        if not self.unified:
            self.win.Sync()

    def fetch(self, sources: Sequence[int], mutex: bool):
        """Copy each source's self memory into my slot for it and count a version; complete when
        it returns (with ``mutex``, each under my mutex at the source)."""
        if mutex:                 # each source alone, completed under its mutex
            for source in sources:
                self.acquire(source, self.rank)
                try:
                    self.fetch((source,), False)
                finally:
                    self.release(source, self.rank)
            return
        win, reads = self.win, self._reads
        for source in sources:
            for into, spec in reads[source]:
                win.Get(into, source, spec)
        if len(sources) > 1:
            win.Flush_all()
        elif sources:
            win.Flush(sources[0])
        with self._lock:
            for source in sources:
                self._gets[source] += 1

    def _writers_counts(self) -> np.ndarray:
        """Read, from each in-neighbour's window, how many puts it has completed to me."""
        MPI, win, counts = self.MPI, self.win, self._counts_read
        for j in self.in_ranks:
            win.Get([counts[j:j + 1], MPI.INT64_T], j, self.version_spec)
        if self.in_ranks:
            win.Flush_all()
        return counts

    def versions(self) -> Dict[int, int]:
        """``{in-neighbour: puts from it + gets from it since the last clear_versions}``."""
        counts = self._writers_counts()
        with self._lock:
            return {j: int(counts[j] - self._seen[j] + self._gets[j]) for j in self.in_ranks}

    def clear_versions(self):
        """Start counting versions afresh (every in-neighbour back to 0)."""
        counts = self._writers_counts()
        with self._lock:
            self._seen[:] = counts
            self._gets = [0] * self.size

    def sync(self):
        """Make remote writes to this rank's memory visible to local loads (``Win_sync``)."""
        self.win.Sync()

    # ------------------------------------------------------------------ mutex
    def try_acquire(self, target: int, index: int) -> bool:
        """One test-and-set of ``mutex[index]`` on ``target``."""
        INT64 = self.MPI.INT64_T
        old = np.empty(1, dtype=np.int64)
        self.win.Fetch_and_op([_ONE, INT64], [old, INT64], target, 8 * index, self.MPI.REPLACE)
        self.win.Flush(target)
        return int(old[0]) == 0

    def acquire(self, target: int, index: int):
        """Spin (politely) until ``mutex[index]`` on ``target`` is ours."""
        backoff = Backoff(longest=1e-3)
        while not self.try_acquire(target, index):
            backoff.pause()

    def release(self, target: int, index: int):
        INT64 = self.MPI.INT64_T
        self.win.Accumulate([_ZERO, INT64], target, (8 * index, 1, INT64), self.MPI.REPLACE)
        self.win.Flush(target)

    # ------------------------------------------------------------------ teardown
    def abandon(self):
        """Fault-tolerant mode after a death: close this rank's use of the window without the
        collective free (which would wait for the dead); the memory stays until exit."""
        if self.open:
            self.open = False
            self.win.Unlock_all()

    def free(self):
        """Collective: end the epoch and free the memory.  Views of it must be gone by now."""
        if not self.open:
            return
        self.open = False
        self.slots.clear()
        self.slot_np.clear()
        self._reads.clear()
        self._views.clear()
        self._plans.clear()
        self._sent.release()
        self.self_tensor = self.self_np = self.mutex = self.version = self.p = None
        self.win.Unlock_all()
        self.win.Free()


class Worker:
    """Runs nonblocking window ops one after another on a daemon thread, in submission order.

    Window ops are never negotiated, so they do not go through the engine queue (where they would
    wait behind negotiation rounds).  A blocking op runs on the caller's thread when the worker is
    idle, and queues behind the worker's jobs otherwise, so ops complete in the order issued.  Its
    handles (``Handle(name, worker=worker)``) are numbered by ``numbers``.
    """

    def __init__(self):
        self.numbers = itertools.count(1)
        self._jobs: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._active = 0
        self._thread: Optional[threading.Thread] = None

    def idle(self) -> bool:
        return self._active == 0

    def submit(self, job: Callable[[], object], name: str) -> Handle:
        """Run ``job`` after the jobs submitted before; its handle is named ``name``."""
        handle = Handle(name, worker=self)
        with self._cond:
            self._jobs.append((job, handle))
            self._active += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="bluefog-window",
                                                daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return handle

    def wait(self, handle: Handle):
        """Block until ``handle``'s job is done; return its output or raise its error."""
        with self._cond:
            while not handle.done():
                self._cond.wait()
        return handle.result()

    def drain(self):
        """Wait until every submitted job has finished."""
        with self._cond:
            while self._active:
                self._cond.wait(0.05)

    def _run(self):
        while True:
            with self._cond:
                while not self._jobs:
                    self._cond.wait()
                job, handle = self._jobs.popleft()
            try:
                handle.set_result(job())
            except BaseException as error:  # reaches the caller through win_wait
                handle.set_error(error)
            finally:
                with self._cond:
                    self._active -= 1
                    self._cond.notify_all()
