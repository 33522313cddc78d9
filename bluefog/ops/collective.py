"""allreduce, broadcast, allgather and barrier (spec §3.3–§3.5, §3.10)."""

from bluefog.averaging import summed_rows
from bluefog.engine import kernels
from bluefog.engine.polling import wait_request
from bluefog.engine.lone import LoneRound
from bluefog.engine.request import Request
from bluefog.ops.common import (ALLREDUCE_DTYPES, FLOAT_DTYPES, MOVE_DTYPES, Submission,
                                blocking, blocking_lone, check_tensor, live_context, require,
                                signature, submit)


def allreduce_nonblocking_(tensor, average=True, is_hierarchical_local=False, name=None):
    """In place: sum (or average) ``tensor`` over all ranks, or over the machine with
    ``is_hierarchical_local=True``.  Returns a handle; ``synchronize`` gives back ``tensor``."""
    return submit(_allreduce_request(tensor, average, is_hierarchical_local, name, True))


def _allreduce_request(tensor, average, is_hierarchical_local, name, inplace) -> Request:
    given, tensor = tensor, check_tensor(tensor, ALLREDUCE_DTYPES, "allreduce")
    if average:
        require(tensor.dtype in FLOAT_DTYPES,
                "If average is set in allreduce, only float or double tensor is allowed.")
    job = Submission("allreduce", name, tensor if inplace else None)
    comm = job.ctx.local_comm if is_hierarchical_local else job.ctx.engine.data_comm
    fault_tolerant = job.ctx.engine.ft is not None and not is_hierarchical_local
    # 0: divide by the ranks alive when the op runs (fault-tolerant mode)
    divisor = (0 if fault_tolerant else comm.Get_size()) if average else 1
    sig = signature("allreduce", tensor, bool(is_hierarchical_local), bool(average))
    source = tensor
    tensor = job.place("local_allreduce" if is_hierarchical_local else "allreduce", tensor, inplace,
                       comm)
    if inplace:
        job.hand_back(given, source)
    output = tensor if inplace or job.staged else None     # None: the kernel allocates it
    carry = None if is_hierarchical_local else lambda: kernels.carry_to_all(comm, tensor)
    return job.request(sig, lambda launch: job.kernels.allreduce(tensor, output, divisor, launch),
                       activity="ALLREDUCE", carry=carry, carry_to_all=True,
                       fusion_key=("allreduce", tensor.dtype, bool(is_hierarchical_local), divisor),
                       fusion_part=(tensor, output), nbytes=tensor.numel() * tensor.element_size(),
                       inplace=output if fault_tolerant and output is not None else None,
                       fuse=lambda group, launch: job.kernels.fused_allreduce(
                           [r.fusion_part for r in group], divisor, launch))


def allreduce_nonblocking(tensor, average=True, is_hierarchical_local=False, name=None):
    """Out of place :func:`allreduce_nonblocking_`: the input is left unchanged."""
    return submit(_allreduce_request(tensor, average, is_hierarchical_local, name, False))


def allreduce(tensor, average=True, is_hierarchical_local=False, name=None):
    """Sum or average of ``tensor`` over all ranks, as a new tensor.

    Example::

        mean = bf.allreduce(torch.tensor([float(bf.rank())]))   # (size-1)/2 everywhere
    """
    return _blocking_allreduce(tensor, average, is_hierarchical_local, name, False)


def allreduce_(tensor, average=True, is_hierarchical_local=False, name=None):
    """In-place :func:`allreduce`; returns ``tensor``."""
    return _blocking_allreduce(tensor, average, is_hierarchical_local, name, True)


def _blocking_allreduce(tensor, average, is_hierarchical_local, name, inplace):
    """A small CPU allreduce runs as a lone round when nothing else is in flight."""
    key = None if is_hierarchical_local else ("allreduce", average, inplace)
    return blocking_lone(live_context(), key, "allreduce", name, tensor, lambda name: (
        _allreduce_request(tensor, average, is_hierarchical_local, name, inplace)),
        lambda request, engine: _lone_plan(engine, request, tensor, average, inplace))


def _lone_plan(engine, request, tensor, average, inplace) -> LoneRound:
    """The lone round of a blocking allreduce: every rank carries to every other; the rows are
    added in rank order (``summed_rows``, as the kernel of an allreduce carried to all does)."""
    divisor = engine.size if average else 1
    return LoneRound(engine.mailbox, request, tensor, lambda x, carried: summed_rows(
        carried.stacked, x, x if inplace else None, divisor))


def broadcast_nonblocking_(tensor, root_rank, name=None):
    """In place: overwrite ``tensor`` with ``root_rank``'s value.  Returns a handle."""
    return _broadcast(tensor, root_rank, name, True)


def _broadcast(tensor, root_rank, name, inplace):
    given, tensor = tensor, check_tensor(tensor, MOVE_DTYPES, "broadcast")
    size = live_context().size
    if not isinstance(root_rank, int) or not 0 <= root_rank < size:
        raise ValueError(f"Argument root_rank must be an int in [0, {size}), got {root_rank!r}.")
    job = Submission("broadcast", name, tensor if inplace else None)
    sig = signature("broadcast", tensor, int(root_rank))
    source = tensor
    tensor = job.place("broadcast", tensor, inplace)
    if inplace:
        job.hand_back(given, source)
    output = tensor if inplace or job.staged else None     # None: the kernel allocates it
    return job.send(sig, lambda launch: job.kernels.broadcast(tensor, output, root_rank, launch),
                    activity="BROADCAST")


def broadcast_nonblocking(tensor, root_rank, name=None):
    """Out of place :func:`broadcast_nonblocking_`."""
    return _broadcast(tensor, root_rank, name, False)


def broadcast(tensor, root_rank, name=None):
    """``root_rank``'s ``tensor`` on every rank, as a new tensor."""
    return blocking(broadcast_nonblocking, tensor, root_rank, name)


def broadcast_(tensor, root_rank, name=None):
    """In-place :func:`broadcast`; returns ``tensor``."""
    return blocking(broadcast_nonblocking_, tensor, root_rank, name)


def allgather_nonblocking(tensor, name=None):
    """Concatenation of every rank's ``tensor`` along dim 0 (first dims may differ).  A handle."""
    tensor = check_tensor(tensor, MOVE_DTYPES, "allgather")
    if tensor.dim() == 0:
        raise ValueError("allgather: tried to allgather a rank-zero tensor; give it at least one "
                         "dimension (e.g. tensor.reshape(1)).")
    job = Submission("allgather", name)
    sig = signature("allgather", tensor, tensor.dim(), with_dim0=False)
    tensor = job.place("allgather", tensor)
    return job.send(sig, lambda launch: job.kernels.allgather(tensor, launch), dim0=tensor.shape[0],
                    activity="ALLGATHER")


def allgather(tensor, name=None):
    """Blocking :func:`allgather_nonblocking`."""
    return blocking(allgather_nonblocking, tensor, name)


def barrier():
    """Return once every rank has called ``barrier``; earlier blocking ops have all finished."""
    ctx = live_context()
    if ctx.engine.skip_negotiation and ctx.engine.ft is None:
        ctx.engine.drain()
        wait_request(ctx.caller_comm.Ibarrier())
        return
    job = Submission("barrier", "barrier")
    blocking(job.send, ("barrier",), lambda launch: kernels.barrier(ctx.engine.data_comm),
             activity="BARRIER")
