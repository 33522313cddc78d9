"""CUDA tensors: the route each op takes, the NCCL process group, and the torch.distributed route.

* ``nccl``: collectives, or grouped send / receive for neighbor ops, over a ``torch.distributed``
  group (:class:`DistRoute`), on a side stream that first waits for the *ready event* recorded on
  the caller's stream at submission.
* ``staged``: a pinned host copy travels over MPI (``kernels.MpiRoute``) and the result is copied
  back to the device in ``synchronize``.

The choice is made once per process, at the first CUDA collective or neighbor op, by a negotiated
op (:meth:`CudaRuntime.setup`): NCCL only if every rank has it and its own GPU, else every rank
stages and rank 0 says why.  ``BLUEFOG_<OP>_BY_MPI=1`` stages single op kinds; hierarchical ops,
pair gossip and machine-local allreduce always stage.  Nothing here touches CUDA before an op is
given a CUDA tensor.  See docs/gpu.md.
"""

import contextlib
import datetime
import json
import logging
import math
import socket
from typing import Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

from bluefog import config
from bluefog.engine.kernels import gathered_dim0s, neighbor_dim0s, scaled

logger = logging.getLogger("bluefog")

NCCL = "nccl"
STAGED = "staged"
_RENDEZVOUS_TIMEOUT = datetime.timedelta(seconds=120)
_RECORD_BYTES = 1024


def nccl_available() -> bool:
    """torch.distributed has NCCL and a CUDA device is visible (creates no CUDA context)."""
    try:
        return bool(dist.is_available() and dist.is_nccl_available() and torch.cuda.is_available())
    except Exception:      # a torch build without distributed support
        return False


def nccl_built(local_size: int) -> bool:
    """Whether CUDA tensors would go over NCCL with one GPU per local rank (spec: ``nccl_built``)."""
    if config.ops_on_cpu() or not nccl_available():
        return False
    return local_size <= torch.cuda.device_count()


def _gpu_identity(device: torch.device) -> str:
    props = torch.cuda.get_device_properties(device)
    uuid = getattr(props, "uuid", None)
    return str(uuid) if uuid is not None else f"{props.name}#{device.index}"


def _why_not_nccl(records) -> Optional[str]:
    """Why the ranks' ``records`` rule NCCL out, or None if every rank can use it."""
    lacking = [r for r, rec in enumerate(records) if not rec["nccl"]]
    if lacking:
        return f"rank(s) {lacking} have no NCCL in torch.distributed"
    if any(rec["ops_on_cpu"] for rec in records):
        return "BLUEFOG_OPS_ON_CPU=1"
    owners = {}
    for r, rec in enumerate(records):
        key = (rec["host"], rec["gpu"])
        if key in owners:
            return (f"ranks {owners[key]} and {r} share one GPU on {rec['host']} (NCCL needs one GPU "
                    "per rank)")
        owners[key] = r
    return None


class CudaRuntime:
    """Per-process CUDA state: the route decision, the NCCL group and the side streams.

    Example::

        runtime = CudaRuntime(rank=0, size=1, ops_on_cpu=False)
        if not runtime.decided:
            ...                                        # run runtime.setup(...) as a negotiated op
        route = runtime.route("allreduce", tensor)     # "nccl" or "staged"
    """

    def __init__(self, rank: int, size: int, ops_on_cpu: bool):
        self.rank = rank
        self.size = size
        self.ops_on_cpu = ops_on_cpu
        self.decided = False
        self.nccl = False
        self.reason = ""                # why CUDA tensors are staged, once decided
        self.device: Optional[torch.device] = None
        self.group = None               # None: the default process group
        self.stats = {NCCL: 0, STAGED: 0}
        self._created_default = False
        self._streams = {}

    # ------------------------------------------------------------------ the route
    def needs_setup(self, op: str) -> bool:
        """Whether ``op`` on a CUDA tensor must first run :meth:`setup` (on every rank)."""
        return not self.decided and op in config.BY_MPI

    def route(self, op: str, tensor: torch.Tensor) -> str:
        """``NCCL`` or ``STAGED`` for ``op`` on CUDA ``tensor`` (after :meth:`setup`)."""
        nccl = (self.nccl and op in config.BY_MPI and tensor.device == self.device
                and not config.by_mpi(op))
        route = NCCL if nccl else STAGED
        self.stats[route] += 1
        return route

    def setup(self, comm, device: torch.device):
        """Kernel, run once on every rank as a negotiated op: agree on NCCL or staging, and start the
        NCCL process group if every rank can use it."""
        store = None
        mine = {"host": socket.gethostname(), "gpu": _gpu_identity(device),
                "nccl": nccl_available(), "ops_on_cpu": self.ops_on_cpu, "port": 0}
        if self.rank == 0 and mine["nccl"] and not self.ops_on_cpu:
            store = dist.TCPStore("0.0.0.0", 0, self.size, True, _RENDEZVOUS_TIMEOUT,
                                  wait_for_workers=False)
            mine["port"] = store.port
        records = yield from _allgather_json(comm, mine)
        reason = _why_not_nccl(records)
        if reason is None:
            failure = None
            try:
                self._create_group(device, records, store)
            except Exception as error:      # reported on every rank below, then staged
                failure = f"NCCL could not start on rank {self.rank}: {error}"
            failures = [f for f in (yield from _allgather_json(comm, failure)) if f]
            if failures:
                reason = failures[0]
                self.close()
        self.decided = True
        if reason is None:
            self.nccl, self.device = True, device
            if self.rank == 0:
                logger.info("bluefog: CUDA tensors go over NCCL (%d ranks, one GPU each).", self.size)
        else:
            self.reason = reason
            if self.rank == 0:
                level = logging.INFO if self.ops_on_cpu else logging.WARNING
                logger.log(level, "bluefog: CUDA tensors are staged through host memory over MPI: "
                           "%s.", reason)
        return None

    def _create_group(self, device: torch.device, records, store):
        if store is None:
            host0 = records[0]["host"]
            address = "127.0.0.1" if host0 == socket.gethostname() else socket.gethostbyname(host0)
            store = dist.TCPStore(address, records[0]["port"], self.size, False, _RENDEZVOUS_TIMEOUT)
        if dist.is_initialized():
            if dist.get_world_size() != self.size:
                raise RuntimeError(f"the default process group has {dist.get_world_size()} ranks, "
                                   f"the bluefog job {self.size}")
            self.group = dist.new_group(ranks=list(range(self.size)), backend="nccl")
        else:
            dist.init_process_group("nccl", store=store, rank=self.rank, world_size=self.size,
                                    timeout=_RENDEZVOUS_TIMEOUT, device_id=device)
            self._created_default = True

    def close(self):
        """Destroy the process group bluefog created (at shutdown)."""
        if not (self.group is not None or self._created_default):
            return
        try:
            if self.group is not None:
                dist.destroy_process_group(self.group)
            elif self._created_default and dist.is_initialized():
                dist.destroy_process_group()
        except Exception:      # shutting down: nothing useful to report
            pass
        self.group, self._created_default, self.nccl = None, False, False

    # ------------------------------------------------------------------ streams
    def ready_event(self, tensor: torch.Tensor) -> torch.cuda.Event:
        """An event on the caller's current stream: the NCCL work waits for it."""
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(tensor.device))
        return event

    @contextlib.contextmanager
    def launching(self, device: torch.device, ready: Optional[torch.cuda.Event]):
        """Queue work on this device's side stream, after ``ready``; yields the stream (None for a
        CPU device: no stream).  Never keep it open across a ``yield`` of a kernel (another thread
        may resume the kernel)."""
        if device.type != "cuda":
            yield None
            return
        stream = self._streams.get(device)
        if stream is None:
            stream = self._streams[device] = torch.cuda.Stream(device=device)
        with torch.cuda.device(device), torch.cuda.stream(stream):
            if ready is not None:
                stream.wait_event(ready)
            yield stream


def handover(output):
    """In ``synchronize`` (the caller's thread): outputs made on the side stream may be used on the
    caller's stream; tell the caching allocator so it does not reuse their memory too early."""
    for tensor in output if isinstance(output, (list, tuple)) else [output]:
        if isinstance(tensor, torch.Tensor) and tensor.is_cuda:
            tensor.record_stream(torch.cuda.current_stream(tensor.device))
    return output


def to_host(tensor: torch.Tensor) -> torch.Tensor:
    """A copy of ``tensor`` in pinned host memory, made after the work queued on the current stream.

    Copies between the GPU and pinned memory run at full PCIe / NVLink speed; from pageable memory
    they go through the driver's small bounce buffers (measured on an H100: a 64 MB round trip takes
    2.5 ms through pinned memory and 47 ms from pageable memory)."""
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor.detach())        # a blocking copy: the data is there when it returns
    return host


def staged_back(device_tensor: torch.Tensor, inplace: bool):
    """The ``synchronize`` step of a staged op: copy the host result to the device (through pinned
    memory when the kernel made a pageable one: a host copy costs less than a pageable upload)."""
    def back(host_output):
        if not host_output.is_pinned():
            host_output = to_host(host_output)
        if inplace:
            with torch.no_grad():
                return device_tensor.copy_(host_output)
        return host_output.to(device_tensor.device)
    return back


def _allgather_json(comm, value):
    """Kernel step: every rank's JSON-able ``value``, in rank order."""
    data = json.dumps(value).encode()
    if len(data) > _RECORD_BYTES:
        raise ValueError(f"setup record too long: {data[:80]!r}...")
    mine = np.zeros(_RECORD_BYTES, dtype=np.uint8)
    mine[:len(data)] = np.frombuffer(data, dtype=np.uint8)
    table = np.empty((comm.Get_size(), _RECORD_BYTES), dtype=np.uint8)
    yield [comm.Iallgather(mine, table)]
    return [json.loads(row.tobytes().rstrip(b"\0").decode()) for row in table]


def _finished(stream):
    """What a kernel yields to wait for the work queued on ``stream``: the test of an event
    recorded there (nothing for None, on CPU)."""
    if stream is None:
        return []
    done = torch.cuda.Event()
    done.record(stream)
    return done.query


# ---------------------------------------------------------------------- the torch.distributed route
class DistRoute:
    """The kernels (``kernels.ROUTE_METHODS``, as ``kernels.MpiRoute``) over ``runtime``'s
    torch.distributed group: NCCL for CUDA tensors, queued on a side stream after the ``ready``
    event; gloo for CPU tensors (tests), with nothing to wait for.  ``comm`` (MPI) exchanges first
    dims that negotiation did not give.  No fusion or deferral."""

    by_mpi = False

    def __init__(self, runtime: CudaRuntime, comm, ready=None):
        self.comm, self.runtime, self.ready = comm, runtime, ready

    def allreduce(self, tensor, output, divisor, launch):
        with self.runtime.launching(tensor.device, self.ready) as stream:
            output = tensor if output is tensor else tensor.clone()
            dist.all_reduce(output, group=self.runtime.group, async_op=True).wait()
            if divisor > 1:
                output.div_(divisor)
            done = _finished(stream)
        yield done
        return output

    def broadcast(self, tensor, output, root, launch):
        with self.runtime.launching(tensor.device, self.ready) as stream:
            output = tensor if output is tensor else tensor.clone()
            dist.broadcast(output, src=root, group=self.runtime.group, async_op=True).wait()
            done = _finished(stream)
        yield done
        return output

    def allgather(self, tensor, launch):
        """Uneven first dims travel padded to the longest."""
        dim0s = yield from gathered_dim0s(self.comm, tensor, launch.dim0s)
        rest, longest = tuple(tensor.shape[1:]), max(dim0s)
        with self.runtime.launching(tensor.device, self.ready) as stream:
            if longest == 0 or math.prod(rest) == 0:
                output = tensor.new_empty((sum(dim0s),) + rest)
            else:
                padded = tensor
                if tensor.shape[0] < longest:
                    padded = torch.cat([tensor, tensor.new_zeros((longest - tensor.shape[0],) + rest)])
                gathered = tensor.new_empty((len(dim0s) * longest,) + rest)
                gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
                gather(gathered, padded, group=self.runtime.group, async_op=True).wait()
                output = gathered
                if min(dim0s) != longest:
                    output = torch.cat([gathered[r * longest:r * longest + d]
                                        for r, d in enumerate(dim0s)])
            done = _finished(stream)
        yield done
        return output

    def neighbor_allreduce(self, tensor, sends, recvs, combine, launch, defer=False):
        with self.runtime.launching(tensor.device, self.ready) as stream:
            slots = tensor.new_empty((len(recvs),) + tuple(tensor.shape))
            outgoing = [(d, scaled(tensor, w).contiguous()) for d, w in sends]
            _exchange(self.runtime.group, outgoing, list(zip(recvs, slots)))
            output = combine(tensor, slots)
            done = _finished(stream)
        yield done
        return output

    def neighbor_allgather(self, tensor, sends, recvs, launch):
        counts = yield from neighbor_dim0s(self.comm, launch.tag, tensor, sends, recvs, launch.dim0s)
        with self.runtime.launching(tensor.device, self.ready) as stream:
            output = tensor.new_empty((int(sum(counts)),) + tuple(tensor.shape[1:]))
            incoming, start = [], 0
            for r, count in zip(recvs, counts):
                incoming.append((r, output[start:start + count]))
                start += count
            _exchange(self.runtime.group, [(d, tensor) for d in sends], incoming)
            done = _finished(stream)
        yield done
        return output


def _exchange(group, outgoing: Sequence, incoming: Sequence):
    """Grouped sends of (rank, tensor) ``outgoing`` and receives into (rank, buffer) ``incoming``
    over ``group``; the current stream then waits for them.  Empty tensors are left out (both sides
    know the sizes)."""
    ops = [dist.P2POp(dist.irecv, buf, r, group=group) for r, buf in incoming if buf.numel()]
    ops += [dist.P2POp(dist.isend, t, r, group=group) for r, t in outgoing if t.numel()]
    if ops:
        for work in dist.batch_isend_irecv(ops):
            work.wait()
