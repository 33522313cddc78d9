"""Kernels: generators that move an op's data and return its output, one interface per route.

A kernel yields lists of MPI requests (the engine resumes it once all of them completed) and returns
the op's output tensor.  The ops call a route's kernels (:data:`ROUTE_METHODS`): :class:`MpiRoute`
runs them over MPI, ``cuda.DistRoute`` over torch.distributed.  Arithmetic is in ``averaging``:
``summed_rows``, and the op's ``combine`` (an ``averaging.Combine``, called with the received slots
or round bytes).
float16 data travels as raw 16-bit words and is added up in float32 (``compute_dtype``).
"""

import math
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import torch

from bluefog.averaging import compute_dtype, summed_rows
from bluefog.engine import memory
from bluefog.engine.fault import live_dim0s
from bluefog.engine.mpi import datatype, mpi, wire
from bluefog.packing import pack, split_like

Sends = Sequence[Tuple[int, Optional[float]]]   # (destination rank, weight or None for 1.0)
# the kernels every route has (MpiRoute's arguments)
ROUTE_METHODS = ("allreduce", "broadcast", "allgather", "neighbor_allreduce", "neighbor_allgather")


def scaled(tensor: torch.Tensor, weight: Optional[float]) -> torch.Tensor:
    """``tensor * weight`` computed in the tensor's own precision (float32 for float16)."""
    if weight is None:
        return tensor
    work = compute_dtype(tensor.dtype)
    return (tensor.to(work) * weight).to(tensor.dtype)


class MpiRoute:
    """The kernels of the route over MPI (CPU tensors, staged CUDA tensors), over ``comm`` (a
    ``fault.LiveComm`` in fault-tolerant mode).

    Every route (``cuda.DistRoute`` too) has the methods :data:`ROUTE_METHODS`, with these
    arguments, each returning a kernel.  ``output``: ``tensor`` for in place, None for a new
    tensor; ``launch``: the engine's ``Launch`` (tag, first dims, carried data).  ``by_mpi``:
    fusion (``fused_*``), carried data and deferral apply (this route only).

    Example::

        kernel = MpiRoute(comm).allreduce(tensor, None, comm.Get_size(), launch)
    """

    by_mpi = True

    def __init__(self, comm):
        self.comm = comm

    def allreduce(self, tensor, output, divisor, launch):
        """The sum over every rank divided by ``divisor`` (0: by the ranks alive, fault-tolerant
        mode); carried data are added in rank order (the same bits on every rank)."""
        if launch.carried is not None:
            return summed_rows(launch.carried.stacked, tensor, output, divisor)
        MPI, comm = mpi(), self.comm
        if divisor == 0:             # an average over the ranks alive now (fault-tolerant mode)
            divisor = comm.Get_size()
        if output is None:
            output = memory.empty_like(tensor)
        work_dtype = compute_dtype(tensor.dtype)
        if work_dtype != tensor.dtype:
            work = tensor.to(work_dtype)
            yield [comm.Iallreduce(MPI.IN_PLACE, work.reshape(-1).numpy(), MPI.SUM)]
        else:
            work = output
            source = MPI.IN_PLACE if output is tensor else wire(tensor)
            yield [comm.Iallreduce(source, wire(output), MPI.SUM)]
        if divisor > 1:
            work.div_(divisor)
        if work is not output:
            output.copy_(work)
        return output

    def broadcast(self, tensor, output, root, launch):
        """``root``'s tensor on every rank."""
        output = memory.empty_like(tensor) if output is None else output
        if self.comm.Get_rank() == root and output is not tensor:
            output.copy_(tensor)
        yield [self.comm.Ibcast(wire(output), root=root)]
        return output

    def allgather(self, tensor, launch):
        """Every rank's tensor concatenated along dim 0 (first dims may differ)."""
        comm = self.comm
        dim0s = live_dim0s(comm, (yield from gathered_dim0s(comm, tensor, launch.dim0s)))
        counts = np.array(dim0s, dtype=np.int64) * math.prod(tensor.shape[1:])
        displs = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        output = memory.new_empty(tensor, (int(sum(dim0s)),) + tuple(tensor.shape[1:]))
        received = wire(output)
        yield [comm.Iallgatherv(wire(tensor), [received, counts, displs, datatype(received)])]
        return output

    def neighbor_allreduce(self, tensor, sends: Sends, recvs, combine, launch, defer=False):
        """Send (weighted copies of) ``tensor`` to ``sends``; ``combine(tensor, slots)`` of what
        ``recvs`` sent (with ``defer``: the slots, for the caller to combine)."""
        carried = launch.carried
        if carried is not None and not defer:
            output = combined_from_round(tensor, sends, recvs, combine, carried)
            if output is not None:
                return output
        slots = yield from exchange(self.comm, launch.tag, tensor, sends, recvs, carried=carried)
        if defer:
            return slots
        return combine(tensor, slots)

    def neighbor_allgather(self, tensor, sends, recvs, launch):
        """Send ``tensor`` to ``sends``; what ``recvs`` sent, concatenated along dim 0."""
        comm, tag = self.comm, launch.tag
        counts = yield from neighbor_dim0s(comm, tag, tensor, sends, recvs, launch.dim0s)
        output = memory.new_empty(tensor, (int(sum(counts)),) + tuple(tensor.shape[1:]))
        requests, start = [], 0
        for r, count in zip(recvs, counts):
            requests.append(comm.Irecv(wire(output[start:start + count]), source=r, tag=tag))
            start += count
        requests += [comm.Isend(wire(tensor), dest=d, tag=tag) for d in sends]
        yield requests
        return output

    def fused_allreduce(self, parts: Sequence[Tuple[torch.Tensor, Optional[torch.Tensor]]],
                        divisor: int, launch):
        """:meth:`allreduce` of many (tensor, output or None) pairs of one dtype as a single message;
        new results are views of one fused allocation."""
        MPI, comm = mpi(), self.comm
        if divisor == 0:             # an average over the ranks alive now (fault-tolerant mode)
            divisor = comm.Get_size()
        work = pack([t for t, _ in parts], compute_dtype(parts[0][0].dtype))
        yield [comm.Iallreduce(MPI.IN_PLACE, wire(work), MPI.SUM)]
        if divisor > 1:
            work.div_(divisor)
        results = split_like(work.to(parts[0][0].dtype), [t for t, _ in parts])
        for (_, output), result in zip(parts, results):
            if output is not None:      # in place: the caller's tensor receives the result
                output.copy_(result)
        return [result if output is None else output for (_, output), result in zip(parts, results)]

    def fused_neighbor_allreduce(self, parts: Sequence[Tuple[torch.Tensor, Callable]], sends: Sends,
                                 recvs: Sequence[int], launch):
        """:meth:`neighbor_allreduce` of many tensors with one send/receive pattern: one message per
        neighbor.  One combine for all runs once on the fused buffer (outputs: views of one
        allocation); otherwise each part is combined on views of what arrived."""
        flat = pack([t for t, _ in parts], parts[0][0].dtype, read_only=True)
        slots = yield from exchange(self.comm, launch.tag, flat, sends, recvs)
        combine = parts[0][1]
        if all(c == combine for _, c in parts):
            outputs = split_like(combine(flat, slots), [t for t, _ in parts])
        else:
            outputs, start = [], 0
            for tensor, combine in parts:
                size = tensor.numel()
                received = slots[:, start:start + size].reshape((len(recvs),) + tuple(tensor.shape))
                outputs.append(combine(tensor, received))
                start += size
        return outputs


def carry_to_all(comm, tensor: torch.Tensor):
    """What an allreduce sends every other rank, as bytes (``Request.carry``)."""
    data = wire(tensor).reshape(-1).view(np.uint8)
    me = comm.Get_rank()
    return {r: data for r in range(comm.Get_size()) if r != me}


def gathered_dim0s(comm, tensor: torch.Tensor, dim0s: Optional[Sequence[int]]):
    """Every rank's first dim: ``dim0s`` from negotiation, or exchanged now when it is None."""
    if dim0s is None:      # buffers stay referenced until the request completes: MPI reads them
        mine = np.array([tensor.shape[0]], dtype=np.int64)
        table = np.empty(comm.Get_size(), dtype=np.int64)
        yield [comm.Iallgather(mine, table)]
        dim0s = table.tolist()
    return list(dim0s)


def neighbor_dim0s(comm, tag: int, tensor: torch.Tensor, sends: Sequence[int], recvs: Sequence[int],
                   dim0s: Optional[Sequence[int]]):
    """The first dims of what ``recvs`` send: from ``dim0s``, or exchanged now when it is None."""
    if dim0s is not None:
        return [dim0s[r] for r in recvs]
    sizes = np.zeros(len(recvs), dtype=np.int64)     # (stays 0 for a dead rank)
    mine = np.array([tensor.shape[0]], dtype=np.int64)
    yield ([comm.Irecv(sizes[k:k + 1], source=r, tag=tag) for k, r in enumerate(recvs)]
           + [comm.Isend(mine, dest=d, tag=tag) for d in sends])
    return sizes.tolist()


def exchange(comm, tag: int, tensor: torch.Tensor, sends: Sends, recvs: Sequence[int],
             wire_dtype: Optional[torch.dtype] = None, carried=None):
    """Send (weighted copies of) ``tensor``; receive one tensor of its shape from each of ``recvs``.

    Returns the received slots stacked in the order of ``recvs`` (shape ``(len(recvs),) + shape``),
    a pooled buffer (``memory.empty``) that returns to the pool when dropped.  What
    ``carried`` (a ``negotiation.Carried``) says already moved with the round is not sent again.
    """
    dtype = wire_dtype or tensor.dtype
    slots = memory.empty((len(recvs),) + tuple(tensor.shape), dtype)
    received = carried.received if carried is not None else {}
    delivered = carried.delivered if carried is not None else ()
    alive = getattr(comm, "alive", None)          # fault-tolerant mode (fault.LiveComm)
    if alive is not None:
        sends = [(d, w) for d, w in sends if alive(d)]
    sends = [(d, w) for d, w in sends if d not in delivered]
    outgoing = [scaled(tensor, w).to(dtype) for _, w in sends]
    requests = []
    rows = wire(slots).reshape(len(recvs), -1) if recvs else ()
    for k, r in enumerate(recvs):
        if r in received:
            rows[k].view(np.uint8)[:] = received[r]
        elif alive is not None and not alive(r):   # a dead source: its weight goes to self
            slots[k].copy_(tensor.to(dtype))
        else:
            requests.append(comm.Irecv(rows[k], source=r, tag=tag))
    requests += [comm.Isend(wire(t), dest=d, tag=tag) for (d, _), t in zip(sends, outgoing)]
    if requests:          # (all of it came with the round: done already)
        yield requests
    return slots


def carry(tensor: torch.Tensor, sends: Sends):
    """What a neighbor op sends each destination, as bytes (``Request.carry``); destinations of
    the same weight share one array (and so one round message)."""
    by_weight = {}
    for _, w in sends:
        if w not in by_weight:
            by_weight[w] = wire(scaled(tensor, w)).reshape(-1).view(np.uint8)
    return {d: by_weight[w] for d, w in sends}


def combined_from_round(tensor, sends, recvs, combine, carried):
    """When everything moved with the round (all sent, all received): ``combine`` (an
    ``averaging.Combine``) applied straight to the round's bytes; else None."""
    if len(carried.delivered) != len(sends):    # (what was delivered: some of ``sends``)
        return None
    received = carried.received
    try:
        rows = [received[r] for r in recvs]
    except KeyError:
        return None
    return combine(tensor, rows)


def hierarchical_neighbor_allreduce(comm, tag: int, tensor: torch.Tensor, members: Sequence[int],
                                    machine_sends: Sends, machine_recvs: Sequence[int],
                                    combine: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
    """Sum within the machine, exchange machine sums between machine leaders, share, combine.

    ``members`` are the world ranks of this machine (the first is the leader); ``machine_sends`` /
    ``machine_recvs`` name the leader ranks of neighbor machines.  Every member returns the same
    ``combine(machine_sum, received_machine_sums)``; sums travel in the compute dtype.
    """
    work_dtype = compute_dtype(tensor.dtype)
    rank, leader, others = comm.Get_rank(), members[0], list(members[1:])
    if rank == leader:
        parts = yield from exchange(comm, tag, tensor, [], others)
        total = tensor.to(work_dtype, copy=True)
        for part in parts:
            total += part.to(work_dtype)
        received = yield from exchange(comm, tag, total, machine_sends, machine_recvs, work_dtype)
        packed = torch.cat([total.unsqueeze(0), received]).contiguous()
        yield [comm.Isend(wire(packed), dest=m, tag=tag) for m in others]
    else:
        yield from exchange(comm, tag, tensor, [(leader, None)], [])
        packed = memory.empty((1 + len(machine_recvs),) + tuple(tensor.shape), work_dtype)
        yield [comm.Irecv(wire(packed), source=leader, tag=tag)]
    return combine(packed[0], packed[1:]).to(tensor.dtype)


def barrier(comm):
    """Wait until every rank of ``comm`` reached this op."""
    yield [comm.Ibarrier()]
    return None
