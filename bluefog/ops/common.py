"""What every op shares: argument checks, internal names, submission, and handle functions."""

import functools
import itertools
import threading
from typing import Callable, Optional

import torch

from bluefog import context
from bluefog.engine import Handle, Request, cuda, kernels
from bluefog.engine.lone import LoneRound
from bluefog.engine.mailbox import CARRY_MAX
from bluefog.engine.request import Launch
from bluefog.errors import ArgumentAssertionError

FLOAT_DTYPES = (torch.float16, torch.float32, torch.float64)
ALLREDUCE_DTYPES = (torch.int32, torch.int64) + FLOAT_DTYPES
MOVE_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64) + FLOAT_DTYPES
_NOT_ON_CUDA = (torch.uint8, torch.int8, torch.int16)    # spec §3.2: CPU-only dtypes

_nameless = itertools.count(1)


class _Caller(threading.local):
    blocking = False     # inside blocking(): this thread waits for what it submits


_caller = _Caller()
_SUSPENDED = "Bluefog background thread is suspended. use bf.resume() first."


def live_context():
    """The context, refusing while suspended."""
    ctx = context.current()
    if ctx.suspended:
        raise ValueError(_SUSPENDED)
    return ctx


def check_tensor(tensor, allowed, op: str) -> torch.Tensor:
    """Validate the tensor argument of ``op``: a contiguous CPU or CUDA tensor of an allowed dtype.
    Returns what the op reads and writes: ``tensor``, or its detached alias (its ``.data``) when it
    requires grad, since the ops are not autograd-aware (spec §3.2)."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{op}: argument 'tensor' must be a torch.Tensor, got {type(tensor).__name__}.")
    if not tensor.is_contiguous():
        raise ValueError("Tensor is required to be contiguous.")
    if tensor.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{op}: argument 'tensor' is on {tensor.device}; bluefog communicates CPU "
                         "and CUDA tensors, so move it with tensor.cpu() first.")
    if tensor.is_cuda:
        allowed = tuple(d for d in allowed if d not in _NOT_ON_CUDA)
    if tensor.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise ValueError(f"Tensor type {tensor.type()} is not supported. {op} takes {names}"
                         f"{' on CUDA' if tensor.is_cuda else ''}.")
    return tensor.detach() if tensor.requires_grad else tensor


def check_float_weight(value, argument: str):
    if not isinstance(value, float):
        raise ValueError(f"Argument {argument} has to be a float for self rank.")


def signature(kind: str, tensor: torch.Tensor, *extra, with_dim0: bool = True) -> tuple:
    """What must agree across ranks for ``kind`` on ``tensor``."""
    shape = tuple(tensor.shape) if with_dim0 else tuple(tensor.shape[1:])
    dtype = tensor.dtype
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = str(dtype)
    return (kind, name, tensor.device.type, shape) + extra


_DTYPE_NAMES = {}


def op_name(prefix: str, name: Optional[str]) -> str:
    """The engine's name of an op: ``prefix.name``, or ``prefix.noname.N`` for the N-th nameless
    op this process submits (every rank counts the same calls, so the names match)."""
    if name is None:
        name = f"noname.{next(_nameless)}"
    elif not isinstance(name, str):
        raise TypeError(f"Argument name must be a str or None, got {type(name).__name__}.")
    return f"{prefix}.{name}"


class Submission:
    """Build a request under the op's internal name and hand it to the engine.

    Example::

        handle = Submission("allreduce", name, output).send(sig, lambda launch: kernel(...))
    """

    def __init__(self, prefix: str, name: Optional[str], output=None):
        self.ctx = live_context()
        self.handle = Handle("", output)
        self.route = None              # for CUDA tensors: cuda.NCCL or cuda.STAGED
        self.kernels = None            # the route's kernels (kernels.ROUTE_METHODS), set by place
        self.handle.name = op_name(prefix, name)

    def place(self, op: str, tensor: torch.Tensor, inplace: bool = False, comm=None) -> torch.Tensor:
        """Choose the route ``self.kernels`` over ``comm`` (default: the engine's data comm) and
        return what its kernels work on.  CPU tensors take the MPI route; a CUDA ``tensor`` (its
        route decided the first time, collectively) goes over torch.distributed, or is staged: the
        MPI route works on a host copy, its result copied back by ``synchronize`` (into ``tensor``
        when ``inplace``)."""
        comm = self.ctx.engine.data_comm if comm is None else comm
        if not tensor.is_cuda:
            self.kernels = kernels.MpiRoute(comm)
            return tensor
        runtime = self.ctx.cuda
        if runtime.needs_setup(op):
            engine = self.ctx.engine
            with engine.unheld():
                blocking(Submission("cuda", "setup").send, ("cuda_setup",),
                         lambda launch: runtime.setup(engine.data_comm, tensor.device),
                         activity="CUDA_SETUP")
        self.route = runtime.route(op, tensor)
        if self.route == cuda.NCCL:
            self.kernels = cuda.DistRoute(runtime, comm, runtime.ready_event(tensor))
            self.handle.convert = cuda.handover
            return tensor
        self.kernels = kernels.MpiRoute(comm)
        self.handle.convert = cuda.staged_back(tensor, inplace)
        return cuda.to_host(tensor)

    def hand_back(self, given: torch.Tensor, used: torch.Tensor):
        """An in-place op on ``used``, the detached alias of ``given`` (which requires grad):
        ``synchronize`` returns ``given`` itself, as for any in-place op."""
        if given is used:
            return
        inner = self.handle.convert
        self.handle.convert = lambda output: (inner(output), given)[1] if inner else given

    @property
    def staged(self) -> bool:
        """The op works on a private host copy of a CUDA tensor (so it may work in place on it)."""
        return self.route == cuda.STAGED

    def request(self, sig: tuple, start: Callable[[Launch], object], dim0: int = 0, sends=None,
                recvs=None, activity: str = "OP", **fusion) -> Request:
        """The op for the engine; ``fusion`` holds ``fusion_key``, ``fusion_part``, ``fuse``,
        ``nbytes`` and ``carry`` and ``carry_to_all`` (see :class:`~bluefog.engine.request.Request`)."""
        if self.route is not None:     # ranks must agree on the route as on the device
            sig = sig + (self.route,)
        if self.kernels is not None and not self.kernels.by_mpi:
            fusion = {}                # fusion and carried data exist on the MPI route only
        return Request(name=self.handle.name, signature=sig, start=start, handle=self.handle,
                       dim0=dim0, sends=sends, recvs=recvs, activity=activity, **fusion)

    def send(self, *args, **kwargs) -> Handle:
        """Submit :meth:`request` (same arguments); returns its handle."""
        return submit(self.request(*args, **kwargs))


def submit(request: Request) -> Handle:
    """Hand ``request`` to the engine; returns its handle.  Inside :func:`blocking` the engine may
    run its round at once on this thread."""
    return context.current().engine.submit(request, here=_caller.blocking)


def poll(handle) -> bool:
    """True if the op behind ``handle`` has finished (never blocks)."""
    if not isinstance(handle, Handle) or handle.worker is not None or handle.cleared:
        raise ValueError(f"Handle {handle} was not created or has been cleared.")
    return handle.done()


def synchronize(handle):
    """Wait for the op behind ``handle`` and return its output tensor (or raise its error)."""
    if not isinstance(handle, Handle) or handle.worker is not None or handle.cleared:
        raise ValueError("Cannot find handle to synchronize")
    try:
        return context.current().engine.wait(handle)
    finally:
        handle.cleared = True


wait = synchronize


def submission_batch():
    """A context manager: nonblocking ops submitted inside it are negotiated together (one round).

    Example::

        with submission_batch():
            handles = [neighbor_allreduce_nonblocking(p, name=n) for n, p in params]
    """
    return live_context().engine.batch()


def blocking(start: Callable, *args, **kwargs):
    """``synchronize(start(*args, **kwargs))``, with this thread driving the engine from the start.

    Example::

        out = blocking(allreduce_nonblocking, tensor, average=True)
    """
    engine = live_context().engine
    engine.add_waiter()
    outer, _caller.blocking = _caller.blocking, True
    try:
        try:
            handle = start(*args, **kwargs)
        finally:
            _caller.blocking = outer
        try:
            return engine.wait(handle, counted=True)
        finally:
            handle.cleared = True
    finally:
        engine.remove_waiter()


def blocking_lone(ctx, key, prefix: str, name, tensor, build: Callable[[str], Request],
                  plan: Callable[..., object]):
    """A blocking op that may run as a lone round (``engine/lone.py``): ``key`` (None: never)
    names the op and its arguments; the plan of ``key``, ``tensor``'s dtype and shape is made by
    ``plan(request, engine)`` on first use.  ``build(name)`` makes the op's request under
    ``name`` (``op_name(prefix, name)`` to the engine), submitted and waited for when the plan
    does not apply or the engine is busy.  ``ctx``: the live context."""
    if key is None or not LoneRound.may_take(tensor):
        return blocking(submit, build(name))
    engine = ctx.engine
    key += (tensor.dtype, tensor.shape)
    lone = engine.lone_plans.get(key)
    if lone is None:
        request = build(name)        # (checks the arguments; a nameless call takes its number)
        if not engine.may_run_lone() or not 0 < request.nbytes <= CARRY_MAX:
            return blocking(submit, request)
        assert request.name.startswith(prefix + "."), (request.name, prefix)
        lone = engine.lone_plans.put(key, plan(request, engine))
        full = request.name
    else:
        full = op_name(prefix, name)              # (a nameless call takes its number)
    if name is None:
        name = full[len(prefix) + 1:]
    output = engine.run_lone(lone, full, tensor, lambda: build(name))
    return blocking(submit, build(name)) if output is None else output


def require(condition: bool, message: str):
    """Raise the dual ValueError/AssertionError the original raised through ``assert``."""
    if not condition:
        raise ArgumentAssertionError(message)


def renamed_keywords(**renames):
    """Reject keywords that Bluefog renamed, with a ``TypeError`` saying what to use instead."""
    def wrap(func):
        @functools.wraps(func)
        def checked(*args, **kwargs):
            for old, new in renames.items():
                if old in kwargs:
                    raise TypeError(f"{old} is deprecated in {func.__name__}: Use {new} instead.")
            return func(*args, **kwargs)
        return checked
    return wrap
