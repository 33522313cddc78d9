"""The kernel routes on CPU tensors: ``cuda.DistRoute`` (the torch.distributed route, here over a
gloo group on loopback) and ``kernels.MpiRoute``.  Every method of both runs on the same inputs;
each output is checked against plain torch computed from every rank's known inputs, and the two
routes against each other.  Run by tests/test_routes.py at 2 and 4 ranks.
"""

import atexit
import datetime
import os

import torch
import torch.distributed as dist

import bluefog.torch as bf
from bluefog.engine import cuda, kernels
from bluefog.engine.mpi import mpi
from bluefog.engine.request import Launch
from bluefog.ops import combine as mix
from bluefog.ops.common import Submission, submit, synchronize
from casetools import close, sizes, timeout

DTYPES = (torch.float32, torch.float64)
TAG = 77
_routes = {}


def _setup():
    """Both routes over this job's ranks, made once: a gloo group whose TCPStore listens on
    127.0.0.1 at a port rank 0 picks and shares over MPI, as ``CudaRuntime.setup`` does."""
    if not _routes:
        comm = mpi().COMM_WORLD.Dup()
        rank, size = comm.Get_rank(), comm.Get_size()
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"        # gloo's own connections: loopback only
        wait = datetime.timedelta(seconds=60)
        store = (dist.TCPStore("127.0.0.1", 0, size, True, wait, wait_for_workers=False)
                 if rank == 0 else None)
        port = comm.bcast(store.port if store is not None else None, root=0)
        if store is None:
            store = dist.TCPStore("127.0.0.1", port, size, False, wait)
        dist.init_process_group("gloo", store=store, rank=rank, world_size=size, timeout=wait)
        atexit.register(dist.destroy_process_group)
        runtime = cuda.CudaRuntime(rank, size, ops_on_cpu=False)
        _routes.update(comm=comm, runtime=runtime, dist=cuda.DistRoute(runtime, comm),
                       mpi=kernels.MpiRoute(comm))
    return _routes


def _both():
    routes = _setup()
    return [("dist", routes["dist"]), ("mpi", routes["mpi"])]


def _run(kernel):
    """Drive ``kernel`` as the engine does: wait for what it yields; return its output."""
    try:
        waiting = next(kernel)
        while True:
            if callable(waiting):
                while not waiting():
                    pass
            elif waiting:
                mpi().Request.Waitall(waiting)
            waiting = kernel.send(None)
    except StopIteration as stop:
        return stop.value


def _data(rank, shape, dtype, salt=0):
    g = torch.Generator().manual_seed(1000 * rank + salt)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * 4).to(dtype)


def _agree(outputs, expected, atol):
    """Every route's output equals ``expected``, and the routes equal each other."""
    for name, out in outputs.items():
        assert out.dtype == expected.dtype, (name, out.dtype, expected.dtype)
        close(out, expected, atol=atol)
    close(outputs["dist"], outputs["mpi"], atol=atol)


def _atol(dtype):
    return 1e-4 if dtype == torch.float32 else 1e-10


def _launches(dim0s):
    """A launch without first dims (skip-negotiate mode: the kernel exchanges them) and one with
    every rank's first dim (from negotiation)."""
    return [Launch(tag=TAG), Launch(tag=TAG, dim0s=tuple(dim0s))]


@sizes(2, 4)
@timeout(120)
def case_allreduce_sums_and_divides_in_place_or_not():
    n, r = bf.size(), bf.rank()
    for dtype in DTYPES:
        for shape in [(7,), (3, 4)]:
            total = sum(_data(q, shape, torch.float64, 1) for q in range(n))
            for divisor in (1, n):
                expected = (total / divisor).to(dtype)
                for inplace in (False, True):
                    outputs = {}
                    for name, route in _both():
                        x = _data(r, shape, dtype, 1)
                        before = x.clone()
                        out = _run(route.allreduce(x, x if inplace else None, divisor,
                                                   Launch(tag=TAG)))
                        if inplace:
                            assert out is x, name
                        else:
                            assert out is not x and torch.equal(x, before), name
                        outputs[name] = out
                    _agree(outputs, expected, _atol(dtype))


@sizes(2, 4)
@timeout(120)
def case_broadcast_copies_the_root_in_place_or_not():
    n, r = bf.size(), bf.rank()
    for dtype in DTYPES:
        for root in range(n):
            expected = _data(root, (2, 5), dtype, 2)
            for inplace in (False, True):
                outputs = {}
                for name, route in _both():
                    x = _data(r, (2, 5), dtype, 2)
                    before = x.clone()
                    out = _run(route.broadcast(x, x if inplace else None, root,
                                               Launch(tag=TAG)))
                    assert (out is x) == inplace, name
                    if not inplace:
                        assert torch.equal(x, before), name
                    outputs[name] = out
                _agree(outputs, expected, 0)


@sizes(2, 4)
@timeout(120)
def case_allgather_concatenates_uneven_and_even_first_dims():
    n, r = bf.size(), bf.rank()
    patterns = [[q + 1 for q in range(n)], [0] + [2] * (n - 1), [3] * n]
    for dtype in DTYPES:
        for dim0s in patterns:
            expected = torch.cat([_data(q, (dim0s[q], 3), dtype, 3) for q in range(n)])
            for launch in _launches(dim0s):
                outputs = {name: _run(route.allgather(_data(r, (dim0s[r], 3), dtype, 3), launch))
                           for name, route in _both()}
                _agree(outputs, expected, 0)


def _graph(n):
    """Each rank sends to the next one and (from 4 ranks) the one after; who receives from whom."""
    steps = [1, 2] if n >= 4 else [1]
    sends = {q: sorted((q + s) % n for s in steps) for q in range(n)}
    recvs = {q: sorted(p for p in range(n) if q in sends[p]) for q in range(n)}
    return sends, recvs


def _send_weight(src, dst):
    return 0.5 + 0.125 * src + 0.0625 * dst


@sizes(2, 4)
@timeout(120)
def case_neighbor_allreduce_weighted_and_uniform_with_send_weights():
    n, r = bf.size(), bf.rank()
    out_to, in_from = _graph(n)
    recvs = in_from[r]
    for dtype in DTYPES:
        x_of = {q: _data(q, (4, 3), dtype, 4) for q in range(n)}
        for weighted_sends in (False, True):
            sends = [(d, _send_weight(r, d) if weighted_sends else None) for d in out_to[r]]

            def sent(q):        # what q sent this rank, as plain torch computes it
                w = _send_weight(q, r) if weighted_sends else 1.0
                return (x_of[q].double() * w).to(dtype).double()

            slot_weights = [0.2 + 0.1 * k for k in range(len(recvs))]
            combines = {
                "uniform": (mix.uniform(),
                            (x_of[r].double() + sum(sent(q) for q in recvs)) / (len(recvs) + 1)),
                "weighted": (mix.weighted(0.3, slot_weights),
                             0.3 * x_of[r].double() + sum(w * sent(q)
                                                          for w, q in zip(slot_weights, recvs))),
            }
            for kind, (combine, expected) in combines.items():
                outputs = {}
                for name, route in _both():
                    x = x_of[r].clone()
                    out = _run(route.neighbor_allreduce(x, sends, recvs, combine,
                                                        Launch(tag=TAG)))
                    assert torch.equal(x, x_of[r]), (name, kind)
                    outputs[name] = out
                _agree(outputs, expected.to(dtype), _atol(dtype))


@sizes(2, 4)
@timeout(120)
def case_neighbor_allgather_concatenates_in_receive_order():
    n, r = bf.size(), bf.rank()
    out_to, in_from = _graph(n)
    for dtype in DTYPES:
        for dim0s in ([q + 1 for q in range(n)], [0] + [2] * (n - 1), [2] * n):
            recvs = list(reversed(in_from[r]))         # the output follows the order of recvs
            expected = torch.cat([_data(q, (dim0s[q], 2, 2), dtype, 5) for q in recvs])
            for launch in _launches(dim0s):
                outputs = {name: _run(route.neighbor_allgather(_data(r, (dim0s[r], 2, 2), dtype, 5),
                                                               out_to[r], recvs, launch))
                           for name, route in _both()}
                _agree(outputs, expected, 0)


@sizes(2, 4)
@timeout(120)
def case_the_dist_route_through_the_engine_without_fusion():
    """An op whose kernels are the torch.distributed route runs through the engine like any op
    (first dims from negotiation); its request drops fusion and carried data."""
    routes = _setup()
    n, r = bf.size(), bf.rank()
    x = _data(r, (r + 1, 2), torch.float32, 6)
    job = Submission("allgather", "routes.engine")
    assert job.kernels is None
    job.place("allgather", x)
    assert type(job.kernels) is kernels.MpiRoute and job.kernels.by_mpi
    job.kernels = routes["dist"]
    request = job.request(("allgather", "float32", "cpu", (2,)),
                          lambda launch: job.kernels.allgather(x, launch), dim0=r + 1,
                          fusion_key=("allgather",), nbytes=x.numel() * 4, carry=lambda: {})
    assert request.fusion_key is None and request.carry is None and request.nbytes == 0
    out = synchronize(submit(request))
    close(out, torch.cat([_data(q, (q + 1, 2), torch.float32, 6) for q in range(n)]), atol=0)
