"""The MPI side of window ops: window memory, one-sided transfers, the mutex, and their worker.

Every bluefog window is one ``MPI.Win.Allocate`` region per rank (never ``Win.Create`` over user
memory: only MPI-allocated memory gets passive progress on every MPI we support, see DESIGN §1).
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
import itertools
import threading
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from bluefog.engine.polling import Backoff
from bluefog.engine.kernels import scaled
from bluefog.engine.memory import BoundedCache
from bluefog.engine.mpi import datatype, mpi

WINDOW_DTYPES = (torch.int32, torch.int64, torch.float32, torch.float64)
_ALIGN = 64
_ONE = np.ones(1, dtype=np.int64)
_ZERO = np.zeros(1, dtype=np.int64)


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
        self.slot_spec = {t: (d, self.numel, self.mpi_type) for t, d in self.slot_disp.items()}
        self.self_spec = (self.meta, self.numel, self.mpi_type)
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
        self._get_into = {j: [a, self.mpi_type] for j, a in self.slot_np.items()}   # for a Get
        # Versions: each writer counts its completed puts to each target in its own window memory
        # (``_sent``: the version array as Python ints); an owner reads its writers' counts and
        # remembers what they were at its last update; it counts its own gets locally.
        self._sent = memoryview(self.version)
        self._counts_read = np.zeros(size, dtype=np.int64)
        self._seen = np.zeros(size, dtype=np.int64)
        self._gets = [0] * size
        self._lock = threading.Lock()
        self._views = BoundedCache(16)       # see view_of
        self._plans = BoundedCache(64)       # see _unit_plan
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
        targets), so the messages prepared for it and the tensor's address are kept: the common
        call then costs one MPI call per target and a ``Flush_all``.
        """
        if reuse and not mutex and p_self is None and self.send_plain(tensor, targets, accumulate):
            return
        view = self.view_of(tensor)
        if mutex:
            me = self.rank
            for target, weight in targets:
                self.acquire(target, me)
                try:
                    kept = self._post(view, tensor, target, weight, accumulate, p_self)
                    self.win.Flush(target)
                    if not accumulate:
                        self._count_puts(((target,),))
                finally:
                    self.release(target, me)
            return
        kept = [self._post(view, tensor, target, weight, accumulate, p_self)
                for target, weight in targets]
        if len(targets) > 1:
            self.win.Flush_all()
        elif targets:
            self.win.Flush(targets[0][0])
        del kept                  # referenced until here: mpi4py does not keep send buffers
        if not accumulate:
            self._count_puts(targets)

    def send_plain(self, tensor: torch.Tensor, targets, accumulate: bool) -> bool:
        """:meth:`send` of weight-1 data to ``targets`` (one long-lived object, see ``reuse``), no
        p, no mutex, in one message per target; False (nothing sent) where that does not apply."""
        found = self._plans.get((tensor.data_ptr(), id(targets)))
        plan = found[2] if found is not None else self._unit_plan(tensor, targets)
        if plan is None:
            return False
        win = self.win
        if accumulate:
            SUM = self.MPI.SUM
            for target, message, spec in plan:
                win.Accumulate(message, target, spec, SUM)
        else:
            for target, message, spec in plan:
                win.Put(message, target, spec)
        if len(plan) > 1:
            win.Flush_all()
        elif plan:
            win.Flush(plan[0][0])
        if not accumulate:
            counts = self._sent                    # (_count_puts, inline: the common case)
            for target, _, _ in plan:
                counts[target] += 1
            if not self.unified:
                win.Sync()
        return True

    def _count_puts(self, done):
        """One more completed put to each ``done[k][0]``, in my window memory, where the targets
        read it (:meth:`versions`): in the unified memory model a store is visible to remote gets
        without further calls, in the separate one ``Win_sync`` publishes it."""
        counts = self._sent
        for entry in done:
            counts[entry[0]] += 1
        if not self.unified:
            self.win.Sync()

    def _unit_plan(self, tensor: torch.Tensor, targets):
        """For ``tensor`` sent with weight 1 to every target, in one message each: ``(target,
        message, target spec)`` per target; None otherwise.  Kept by the tensor's address (which
        names the same bytes whichever tensor owns them later, see :meth:`view_of`)."""
        view, plan = self.view_of(tensor), None
        if self.numel <= self.chunk and all(weight == 1.0 for _, weight in targets):
            message = [view, self.mpi_type]
            plan = [(t, message, self.slot_spec[t]) for t, _ in targets]
        # the entry keeps the view (its memory) and the targets (so their id stays theirs)
        self._plans.put((tensor.data_ptr(), id(targets)), (view, targets, plan))
        return plan

    def _post(self, view, tensor, target, weight, accumulate, p_self):
        """Start one target's transfer of :meth:`send` (the general case); returns the buffers MPI
        reads from."""
        MPI, win = self.MPI, self.win
        data = view if weight == 1.0 else scaled(tensor.detach(), weight).numpy()
        if self.numel > self.chunk:
            self._post_pieces(data, target, accumulate)
        elif accumulate:
            win.Accumulate([data, self.mpi_type], target, self.slot_spec[target], MPI.SUM)
        else:
            win.Put([data, self.mpi_type], target, self.slot_spec[target])
        value = None
        if p_self is not None:
            value = np.array([p_self * weight], dtype=np.float64)
            win.Accumulate([value, MPI.DOUBLE], target, self.p_spec,
                           MPI.SUM if accumulate else MPI.REPLACE)
        return data, value

    def _post_pieces(self, data: np.ndarray, target: int, accumulate: bool):
        """``data`` into my slot on ``target`` in messages of at most ``chunk`` elements."""
        MPI, win, kind, step = self.MPI, self.win, self.mpi_type, self.chunk
        disp, data = self.slot_disp[target], data.reshape(-1)
        for start in range(0, self.numel, step):
            count = min(step, self.numel - start)
            spec = (disp + start * self.itemsize, count, kind)
            piece = [data[start:start + count], kind]
            if accumulate:
                win.Accumulate(piece, target, spec, MPI.SUM)
            else:
                win.Put(piece, target, spec)

    def fetch(self, sources: Sequence[int], mutex: bool):
        """Copy each source's self memory into my slot for it and count a version; complete when
        it returns (with ``mutex``, each under my mutex at the source)."""
        if mutex:
            me = self.rank
            for source in sources:
                self.acquire(source, me)
                try:
                    self._post_read(source)
                    self.win.Flush(source)
                finally:
                    self.release(source, me)
        else:
            win = self.win
            if self.numel <= self.chunk:
                into, spec = self._get_into, self.self_spec
                for source in sources:
                    win.Get(into[source], source, spec)
            else:
                for source in sources:
                    self._post_read(source)
            if len(sources) > 1:
                win.Flush_all()
            elif sources:
                win.Flush(sources[0])
        with self._lock:
            for source in sources:
                self._gets[source] += 1

    def _post_read(self, source: int):
        win, kind, step = self.win, self.mpi_type, self.chunk
        into = self.slot_np[source]
        if self.numel <= step:
            win.Get([into, kind], source, self.self_spec)
        else:
            for start in range(0, self.numel, step):
                count = min(step, self.numel - start)
                win.Get([into[start:start + count], kind], source,
                        (self.meta + start * self.itemsize, count, kind))

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
        self._get_into.clear()
        self._views.clear()
        self._plans.clear()
        self._sent.release()
        self.self_tensor = self.self_np = self.mutex = self.version = self.p = None
        self.win.Unlock_all()
        self.win.Free()


class WindowHandle:
    """The pending result of a nonblocking window op (Future-like), for ``bf.win_wait`` /
    ``bf.win_poll``.  Numbered by its own counter, apart from the collective ops' handles, as in
    Bluefog; ``int(handle)`` is that number."""

    __slots__ = ("id", "name", "output", "cleared", "_error", "_event")
    _numbers = itertools.count(1)

    def __init__(self, name: str):
        self.id = next(WindowHandle._numbers)
        self.name = name
        self.output = None
        self.cleared = False
        self._error: Optional[BaseException] = None
        self._event = threading.Event()

    def __int__(self):
        return self.id

    __index__ = __int__

    def __repr__(self):
        state = "done" if self.done() else "pending"
        return f"<bluefog WindowHandle {self.id} {self.name!r} {state}>"

    def done(self) -> bool:
        return self._event.is_set()

    def set_result(self, output) -> None:
        self.output = output
        self._event.set()

    def set_error(self, error: BaseException) -> None:
        self._error = error
        self._event.set()

    def wait(self):
        """Block until done; return the output or raise the op's error."""
        self._event.wait()
        if self._error is not None:
            raise self._error
        return self.output


class Worker:
    """Runs nonblocking window ops one after another on a daemon thread, in submission order.

    Window ops are never negotiated, so they do not go through the engine queue (where they would
    wait behind negotiation rounds).  A blocking op runs on the caller's thread when the worker is
    idle, and queues behind the worker's jobs otherwise, so ops complete in the order issued.
    """

    def __init__(self):
        self._jobs: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._active = 0
        self._thread: Optional[threading.Thread] = None

    def idle(self) -> bool:
        return self._active == 0

    def submit(self, job: Callable[[], object], handle: WindowHandle) -> WindowHandle:
        with self._cond:
            self._jobs.append((job, handle))
            self._active += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="bluefog-window",
                                                daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return handle

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
