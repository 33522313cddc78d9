"""The engine: a queue of ops, their negotiation rounds, and the kernels that move the data.

``submit`` queues a :class:`Request` and returns its handle.  Whoever holds the *drive lock* runs
:meth:`Engine.progress`: it starts rounds (``negotiation.py``), launches what they decide in the
decided order, and resumes the kernels (generators that yield MPI requests, or a test of GPU work,
and return the op's output) whose requests completed.  A background thread drives while the
caller computes, backing off when nothing moves; a caller in ``wait`` drives itself, and blocks in
MPI once all its work is posted.  A blocking op that finds the engine idle runs its round on the
calling thread (``submit(here=True)``, or :meth:`Engine.run_lone` for a prepared lone round,
``lone.py``).  Every failure reaches the caller through the op's handle.  See docs/design.md
("The life of one op", "Rounds").
"""

import collections
import contextlib
import logging
import threading
import time
from typing import Callable, List, Optional


from bluefog.engine import fault, negotiation
from bluefog.engine.handle import Handle
from bluefog.engine.memory import BoundedCache
from bluefog.engine.mpi import mpi
from bluefog.engine.polling import CALLER_SPINS, Backoff, Running, resume, wait_any
from bluefog.engine.record import Decision
from bluefog.engine.request import Launch, Request
from bluefog.errors import SHUT_DOWN, ShutdownError
from bluefog.timeline import tracer as _timeline   # hooks below: one `is not None` test when off

logger = logging.getLogger("bluefog")

_DUPLICATE_NAME = ("Requested to collective operation like (allreduce, neighbor_allreduce) or window "
                   "ops like (win_put, win_create) a tensor with the same name as another tensor that "
                   "is currently being processed: '{}'. Wait for it (bf.synchronize) or use another name.")
_STUCK_ROUNDS = 40          # unproductive rounds with every rank blocked before we call it a deadlock
_SKIP_TAG = 7
MAX_LONE_PLANS = 256        # prepared lone rounds kept (lone.py)


class Engine:
    """Owns the communicators of the world and drives every op.

    Example::

        engine = Engine(MPI.COMM_WORLD, cycle_time_ms=0.5)
        handle = engine.submit(request)
        output = engine.wait(handle)
    """

    def __init__(self, world, cycle_time_ms: float = 0.5, fusion_threshold: int = 8 << 20,
                 fault_tolerant: bool = False):
        MPI = mpi()
        # prepared lone rounds by the op's own key (see lone.py; at most MAX_LONE_PLANS)
        self.lone_plans = BoundedCache(MAX_LONE_PLANS)
        self.size = world.Get_size()
        self.rank = world.Get_rank()
        # fault-tolerant mode (fault.py): survivors' communicators, epochs that end in agreements
        self.ft: Optional[fault.FaultState] = None
        self._epoch: Optional[fault.Epoch] = None
        self._commit: Optional[Running] = None
        self.failure_hooks: List[Callable[[List[int]], None]] = []
        if fault_tolerant:
            world.Set_errhandler(MPI.ERRORS_RETURN)
            self.ft = fault.FaultState(world)
            self.data_comm = fault.LiveComm(world.Dup(), self.ft)
            self.ctrl_comm = fault.LiveComm(world.Dup(), self.ft)
            self.mailbox = negotiation.mailbox_for(self.size, self.rank, list(range(self.size)))
        else:
            self.data_comm = world.Dup()
            self.ctrl_comm = world.Dup()
            self.mailbox = negotiation.mailbox_for(self.size, self.rank)
        tag_ub = self.data_comm.Get_attr(MPI.TAG_UB) or 32767
        self._tag_span = max(1024, min(int(tag_ub), 1 << 30) - 64)
        self._cycle = cycle_time_ms / 1000.0
        self._fusion_threshold = fusion_threshold
        # for tests and benchmarks; "lone": ops done by a lone round (run_lone), "handed_over": lone
        # rounds that showed other work and were read by the engine; "here": rounds of blocking
        # ops run on the calling thread (submit(here=True))
        self.stats = {"kernels": 0, "fused_requests": 0, "carried": 0, "lone": 0, "handed_over": 0,
                      "here": 0}
        self.skip_negotiation = False
        self.suspended = False        # bf.suspend(): the background thread sleeps

        self._drive = threading.Lock()
        self._state = threading.Condition(threading.Lock())   # never taken twice by a thread
        self._submitted: collections.deque = collections.deque()
        self._names: set = set()
        self._pending: List[Request] = []
        self._running: List[Running] = []
        self._round: Optional[Running] = None
        self._next_round = 0.0
        self._holding = 0          # open batch() blocks: keep submissions back until they close
        self._round_started: Optional[float] = None   # while a round is in flight
        self._waiting_for: List[str] = []               # the names it negotiates (for warnings)
        self._stall_warned = False
        self.stall_warning_seconds = 60.0
        self._unproductive = 0
        self._seq = 0
        self._waiters = 0
        self._closed = False
        self._thread = threading.Thread(target=self._background, name="bluefog-engine", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------- submission and waiting
    def submit(self, request: Request, here: bool = False) -> Handle:
        """Queue ``request``; raises ``ValueError`` if its name is already in flight.  ``here``: the
        caller waits for it next (a blocking op): when nothing else is in flight, its round runs at
        once on this thread (:meth:`_round_here`)."""
        if here and self._claim(request.name):
            try:
                self.stats["here"] += 1
                self._pending.append(request)
                self._start_round(negotiation.negotiate(self.ctrl_comm, self.mailbox, [request],
                                                        True))
                self._round_to_decision()
            finally:
                self._drive.release()
            return request.handle
        with self._state:
            if self._closed:
                raise ShutdownError(SHUT_DOWN)
            if request.name in self._names:
                raise ValueError(_DUPLICATE_NAME.format(request.name))
            self._names.add(request.name)
            tl = _timeline.TIMELINE
            if tl is not None:
                tl.enqueued(request)        # timeline: ENQUEUE_<activity> opens
            self._submitted.append(request)
            if not self._waiters and not self._holding:
                self._state.notify()   # otherwise a waiting caller drives, or batch() will
        return request.handle

    def _claim(self, name: str) -> bool:
        """Take the drive lock, with nothing in flight, and claim ``name``, to run a round on the
        calling thread; False (nothing taken) when the engine is busy or closed, ``name`` is in
        flight, or rounds need the engine's own pass (fault-tolerant or skip-negotiate mode, a
        timeline)."""
        if not self._rounds_may_run_here() or not self._drive.acquire(blocking=False):
            return False
        with self._state:
            if not self._closed and self.idle() and name not in self._names:
                self._names.add(name)
                return True
        self._drive.release()
        return False

    def _rounds_may_run_here(self) -> bool:
        """Rounds may run on a calling thread: not in fault-tolerant mode (epochs) or
        skip-negotiate mode, and no timeline recording the engine's pass."""
        return self.ft is None and not self.skip_negotiation and _timeline.TIMELINE is None

    def _round_to_decision(self):
        """Drive the round in flight on this thread, waiting inside MPI, until it is decided (which
        launches what it decided); the caller holds the drive lock."""
        entry = self._round
        while self._round is entry:
            if entry.waiting:
                mpi().Request.Waitall(entry.waiting)
                entry.waiting = []          # (complete: nothing to test again)
            self._advance_round()

    def run_lone(self, plan, name: str, tensor, make_request: Callable[[], Request]):
        """A blocking small op named ``name``, prepared as a lone round (``lone.LoneRound``): run
        it on this thread now if nothing else is in flight, and return its output; None when the
        engine is busy or lone rounds do not apply (the caller then submits it as usual).  When the
        mailbox has no verdict for the round's records, or not all the data came with them,
        ``make_request()`` gives the op to the engine's settling of that round, driven here."""
        if not self.mailbox.point_to_point or not self._claim(name):
            return None                  # (_claim checks the rest of may_run_lone)
        try:
            self._watch([name])
            try:
                carried = plan.exchange(self.ctrl_comm, self.mailbox, tensor, name)
                output = None if carried is None else plan.compute(tensor, carried)
            except BaseException:
                self._forget(name)
                raise
            finally:
                self._round_started = None
            if output is not None:
                self._count_kernel(1, carried=True)
                self.stats["lone"] += 1
                self._unproductive = 0
                self._forget(name)
                return output
            self.stats["handed_over"] += 1
            request = make_request()
            self._pending.append(request)
            self._start_round(negotiation.settle_received(self.ctrl_comm, self.mailbox,
                                                          [request], frozenset(plan.data_to)))
            self._round_to_decision()
        finally:
            self._drive.release()
        return self.wait(request.handle)

    def may_run_lone(self) -> bool:
        """Lone rounds apply: ops are negotiated, point to point, and no timeline records them."""
        return self._rounds_may_run_here() and self.mailbox.point_to_point

    def _forget(self, name: str):
        with self._state:
            self._names.discard(name)

    @contextlib.contextmanager
    def batch(self):
        """Submissions made inside the block reach negotiation together, in one round.

        Example::

            with engine.batch():
                handles = [submit(request) for request in requests]
        """
        with self._state:
            self._holding += 1
        try:
            yield
        finally:
            with self._state:
                self._holding -= 1
                if not self._waiters:
                    self._state.notify()

    @contextlib.contextmanager
    def unheld(self):
        """Let submissions through while ``batch()`` blocks are open, for an op that must finish
        inside one (the one-time CUDA setup)."""
        with self._state:
            held, self._holding = self._holding, 0
        try:
            yield
        finally:
            with self._state:
                self._holding += held

    def add_waiter(self):
        """This thread is about to wait: the background thread leaves driving to it."""
        with self._state:
            self._waiters += 1

    def remove_waiter(self):
        with self._state:
            self._waiters -= 1
            if not self._waiters and not self.idle():
                self._state.notify()

    def wait(self, handle: Handle, counted: bool = False):
        """Drive the engine until ``handle`` is done; return its output or raise its error.
        ``counted``: the caller already counts as a waiter (:meth:`add_waiter`)."""
        if not handle.done():
            if counted:
                self._drive_until(handle.done)
            else:
                self.add_waiter()
                try:
                    self._drive_until(handle.done)
                finally:
                    self.remove_waiter()
        return handle.result()

    def idle(self) -> bool:
        return not (self._submitted or self._pending or self._running or self._round
                    or self._epoch)

    def drain(self):
        """Wait until every submitted op has finished (used before changing global state)."""
        self._drive_until(self.idle)

    def _drive_until(self, finished):
        """Drive until ``finished()``: progress passes; once everything is posted and ``finished``
        still is not, block inside MPI until one request completes (MPI then polls in C and
        yields, as a blocking MPI call would; no test-then-wait round trip), otherwise back off
        politely."""
        backoff = None       # made only when needed: most waits never pause
        while not finished():
            if self._closed:
                raise ShutdownError(SHUT_DOWN)
            if self._drive_once(0, finished):
                if backoff is not None:
                    backoff.reset()
            else:
                backoff = backoff or Backoff(spins=CALLER_SPINS)
                backoff.pause()

    def _drive_once(self, timeout: float, finished=None) -> bool:
        """One progress pass if the drive lock comes free within ``timeout``, then, for a caller
        waiting for ``finished()``, a wait in MPI (:meth:`_wait_in_mpi`); True if anything moved."""
        if not self._drive.acquire(timeout=timeout):
            return False
        try:
            moved = self.progress()
            if finished is not None and not finished():
                moved = self._wait_in_mpi() or moved
            return moved
        except Exception as error:
            if self.ft is None or not fault.is_failure(error):
                raise
            self._recover()
            return True
        finally:
            self._drive.release()

    def _wait_in_mpi(self) -> bool:
        """Block in MPI until a request in flight completes (:func:`polling.wait_any`), if all the
        work is posted: no queued submissions, and no pending op without a round in flight, so
        the requests complete without further action from this rank.  Only a waiting caller does
        this (the background thread never blocks in MPI)."""
        if self._submitted or (self._pending and self._round is None):
            return False
        return wait_any(self._running + [entry for entry in (self._round, self._commit)
                                         if entry is not None])

    # ----------------------------------------------------------------- the progress pass
    def progress(self) -> bool:
        """Advance everything one step; the caller holds the drive lock.  True if anything moved."""
        moved = False
        while self._submitted and not self._holding:
            self._pending.append(self._submitted.popleft())
            moved = True
        if self.skip_negotiation:
            if (self._pending and not self._running and self._round is None
                    and self._epoch is None):
                if self.ft is not None:
                    self._epoch = fault.Epoch(self.ft)
                self._launch([self._pending.pop(0)], None, negotiated=False)
                moved = True
        else:
            moved |= self._advance_round()
        for entry in list(self._running):
            moved |= self._step(entry)
        if self._epoch is not None:
            moved |= self._advance_commit()
        return moved

    # ----------------------------------------------------------------- fault-tolerant mode
    def _advance_commit(self) -> bool:
        """Once the epoch's kernels are done here, agree; then hand every outcome to its handle."""
        if self._running or self._round is not None:
            return False
        if self._commit is None:
            self._commit = Running([], self.ft.agree())
        try:
            return resume(self._commit)
        except StopIteration:
            pass
        epoch, self._epoch, self._commit = self._epoch, None, None
        for req, output, error in epoch.outcomes:
            self._finish(req, output=output, error=error)
        return True

    def _recover(self):
        """A peer died (fault.py): agree on the survivors, rebuild, and put the epoch's ops back."""
        epoch = self._epoch
        self._round = self._commit = self._epoch = None
        self._round_started = None
        self._running.clear()
        newly = self.ft.recover()
        self.mailbox.free()
        self.mailbox = negotiation.mailbox_for(self.size, self.rank, self.ft.members)
        if epoch is not None:
            self._pending[0:0] = epoch.restore()
        self._next_round = 0.0
        if newly:
            logger.warning("bluefog: rank %d: rank(s) %s died; %d rank(s) go on (failed: %s).",
                           self.rank, newly, len(self.ft.members), self.ft.failed)
        for hook in self.failure_hooks:
            hook(newly)

    def failed_ranks(self) -> List[int]:
        return [] if self.ft is None else list(self.ft.failed)

    def _advance_round(self) -> bool:
        if self._round is None:
            now = time.monotonic()
            if not self._pending or now < self._next_round:
                return False
            blocked = self._waiters > 0
            if self.ft is not None and self._epoch is not None:
                return False     # fault-tolerant mode: one epoch at a time
            kernel = negotiation.negotiate(self.ctrl_comm, self.mailbox, list(self._pending),
                                           blocked)
            if self.ft is not None:
                self._epoch = fault.Epoch(self.ft)
                kernel = self.ft.agreed(kernel)
            self._start_round(kernel)
        try:
            return resume(self._round)
        except StopIteration as stop:
            self._round = None
            self._round_started = None
            self._apply(stop.value)
            return True
        except Exception as error:   # a failing round fails what it negotiates, not the engine
            if self.ft is not None and fault.is_failure(error):
                raise
            self._round = None
            self._round_started = None
            self._fail_pending(lambda error=error: error)   # (one error for all, as before)
            return True

    def _start_round(self, kernel):
        self._round = Running([], kernel)
        self._watch([req.name for req in self._pending[:5]])

    def _watch(self, names: List[str]):
        """A round waiting for the other ranks' ``names`` starts now (stall warnings)."""
        self._round_started, self._stall_warned = time.monotonic(), False
        self._waiting_for = names

    def _apply(self, decision: Decision):
        if self._epoch is not None:
            if decision.ready:
                self.ft.begin_phase()         # the kernel phase, which ends in an agreement
            else:
                self._epoch = None
        for req, error in decision.errors:
            self._pending.remove(req)
            self._finish(req, error=error)
        group, group_bytes, group_dim0s = [], 0, None
        carried = decision.carried    # belongs to ready[0], which then runs alone
        for req, dim0s, fuses in decision.ready:
            self._pending.remove(req)
            if group and fuses and group_bytes + req.nbytes <= self._fusion_threshold:
                group.append(req)
                group_bytes += req.nbytes
                continue
            if group:
                self._launch(group, group_dim0s, negotiated=True, carried=carried)
                carried = None
            group, group_bytes = [req], req.nbytes
            group_dim0s = dim0s
        if group:
            self._launch(group, group_dim0s, negotiated=True, carried=carried)
        if decision.empty():
            self._unproductive += 1
            self._next_round = time.monotonic() + max(self._cycle, min(0.05, 1e-4 * self._unproductive))
            if decision.stuck and self._unproductive >= _STUCK_ROUNDS:
                self._fail_pending(lambda: ValueError(decision.stuck))
        else:
            self._unproductive = 0

    def _fail_pending(self, error: Callable[[], BaseException]):
        """Every pending op fails with the exception ``error()`` makes for it."""
        pending, self._pending = self._pending, []
        for req in pending:
            self._finish(req, error=error())

    def _launch(self, group: List[Request], dim0s, negotiated: bool, carried=None):
        """Start one kernel for ``group`` (one request, or several fused ones)."""
        req = group[0]
        seq = self._count_kernel(len(group), carried is not None)
        if negotiated:
            launch = Launch(tag=64 + seq % self._tag_span, dim0s=dim0s, carried=carried)
        else:
            launch = Launch(tag=_SKIP_TAG, dim0s=None)
        if self._epoch is not None:
            self._epoch.launched(group)
        try:
            kernel = req.start(launch) if len(group) == 1 else req.fuse(group, launch)
        except Exception as error:  # bad input caught late: report through the handle
            for member in group:
                self._finish(member, error=error)
            return
        if not negotiated and req.sends is not None:
            kernel = self._checked(req, kernel)
        tl = _timeline.TIMELINE
        if tl is not None:
            kernel = tl.processing(group, kernel)   # timeline: the MPI_<activity> spans
        entry = Running(group, kernel)
        self._running.append(entry)
        self._step(entry)

    def _count_kernel(self, requests: int, carried: bool) -> int:
        """Account for one kernel (of ``requests`` fused requests); return its sequence number.
        Every rank counts every negotiated kernel, lone rounds included, so tags agree."""
        seq = self._seq
        self._seq += 1
        self.stats["kernels"] += 1
        if requests > 1:
            self.stats["fused_requests"] += requests
        if carried:
            self.stats["carried"] += 1
        return seq

    def _checked(self, req: Request, kernel):
        """Skip-negotiate mode: the topology check is its own collective before the data moves."""
        yield from negotiation.check_topology(self.ctrl_comm, self.mailbox, req)
        return (yield from kernel)

    def _step(self, entry: Running) -> bool:
        try:
            return resume(entry)
        except StopIteration as stop:
            self._running.remove(entry)
            outputs = stop.value if len(entry.requests) > 1 else [stop.value]
            for req, output in zip(entry.requests, outputs):
                self._finish(req, output=output)
        except Exception as error:
            if self.ft is not None and fault.is_failure(error):
                raise
            self._running.remove(entry)
            for req in entry.requests:
                self._finish(req, error=error)
        return True

    def _finish(self, req: Request, output=None, error: Optional[BaseException] = None):
        epoch = self._epoch
        if epoch is not None and req in epoch.requests:   # fault-tolerant: after the agreement
            epoch.outcomes.append((req, output, error))
            return
        with self._state:
            self._names.discard(req.name)
        tl = _timeline.TIMELINE
        if tl is not None:
            tl.finished(req)                # timeline: ENQUEUE_<activity> closes
        if error is not None:
            req.handle.set_error(error)
        else:
            req.handle.set_result(output)

    # ----------------------------------------------------------------- background thread
    def _background(self):
        # Requests in flight need frequent MPI calls to move (round messages, rendezvous
        # hand-shakes, single-copy reads): poll every ~0.1 ms while something moved recently, and
        # back off to 1 ms once nothing has moved for a while (peers are busy elsewhere).
        # Fault-tolerant mode: a parked thread still runs MPI's progress engine every
        # KEEP_ALIVE_SECONDS, which sends this rank's heartbeats (fault.keep_alive).
        backoff = Backoff(longest=1e-3, brisk=1e-4, brisk_for=5e-3)
        parked = 1.0 if self.ft is None else fault.KEEP_ALIVE_SECONDS
        while True:
            with self._state:
                while not self._closed and (self.idle() or self._waiters or self.suspended):
                    self._state.wait(0.002 if self._waiters else parked)
                    self._warn_if_stalled()
                    if self.ft is not None and not self._waiters:   # (a waiter drives MPI)
                        fault.keep_alive()
                if self._closed:
                    return
            self._warn_if_stalled()
            try:
                moved = self._drive_once(timeout=0.002)
            except BaseException:  # never die silently
                logger.exception("bluefog engine failure")
                moved = False
            if moved:
                backoff.reset()
            else:
                backoff.pause()

    def _warn_if_stalled(self):
        """Log once per round when it has waited ``stall_warning_seconds`` for the other ranks."""
        started = self._round_started
        if (started is None or self._stall_warned
                or time.monotonic() - started < self.stall_warning_seconds):
            return
        self._stall_warned = True
        names = self._waiting_for
        logger.warning("Stalled ops: rank %d has waited %.1f s for the other ranks to submit %s; a "
                       "rank that never calls the same op (with the same name) keeps this one "
                       "waiting.", self.rank, self.stall_warning_seconds, names)

    def suspend(self, value: bool):
        """``bf.suspend()`` / ``bf.resume()``: park or wake the background thread."""
        with self._state:
            self.suspended = bool(value)
            self._state.notify_all()

    def close(self):
        """Stop the thread, fail every unfinished op with :class:`ShutdownError`, free communicators."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            self._state.notify_all()
        self._thread.join(timeout=5)
        with self._drive:
            leftovers = (list(self._submitted) + self._pending
                         + [req for entry in self._running for req in entry.requests])
            self._submitted.clear()
            self._pending.clear()
            self._running.clear()
            for req in leftovers:
                self._finish(req, error=ShutdownError(SHUT_DOWN))
            try:
                self.mailbox.free()
            except Exception:  # MPI may already be finalized at interpreter exit
                pass
            for comm in (self.data_comm, self.ctrl_comm):
                try:
                    comm.Free()
                except Exception:  # MPI may already be finalized at interpreter exit
                    pass
