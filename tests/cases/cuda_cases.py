"""CUDA tensors through every op (spec §3.1 GPU, §3.2, §4.4): each result is checked against the
same op on CPU tensors, and must live on the input's device.

Rank r uses ``cuda:(local_rank % device_count)`` as Bluefog's own tests do, so several ranks share a
GPU on a one-GPU machine (then every op is staged through host memory; NCCL refuses shared GPUs).
Run by tests/test_cuda.py only where CUDA exists.
"""

import os

import torch

import bluefog.torch as bf
from bluefog import context
from casetools import close, expect_error, sizes, timeout

SHAPES = [(23,), (5, 7), ()]


def _device():
    return torch.device("cuda", bf.local_rank() % torch.cuda.device_count())


def _runtime():
    return context.current().cuda


def _data(shape, dtype, salt=0):
    g = torch.Generator().manual_seed(100 * bf.rank() + salt)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 4
    return x.to(dtype) if dtype.is_floating_point else x.round().to(dtype)


def _same(gpu_out, cpu_out, atol=1e-5):
    assert gpu_out.device == _device(), (gpu_out.device, _device())
    assert gpu_out.dtype == cpu_out.dtype, (gpu_out.dtype, cpu_out.dtype)
    close(gpu_out.cpu(), cpu_out, atol=atol)


def _route_counts():
    return dict(_runtime().stats)


@sizes(2, 4)
@timeout(120)
def case_first_cuda_op_on_one_rank_only_is_an_error_everywhere():
    """The one-time route decision is a negotiated op: a rank that passes a CUDA tensor where the
    others pass CPU tensors gets the deadlock error like every other rank, instead of hanging."""
    assert not _runtime().decided
    x = torch.ones(3, device=_device()) if bf.rank() == 0 else torch.ones(3)
    expect_error(ValueError, "Mismatched collective calls", bf.allreduce, x, name="first")
    assert not _runtime().decided


@timeout(120)
def case_route_is_decided_once_and_told_the_truth():
    x = torch.ones(3, device=_device())
    bf.allreduce(x, name="route")
    rt = _runtime()
    assert rt.decided
    shared = bf.local_size() > torch.cuda.device_count()
    on_cpu = os.environ.get("BLUEFOG_OPS_ON_CPU") == "1"
    assert rt.nccl is (not shared and not on_cpu), (rt.nccl, rt.reason)
    if shared:
        assert "share one GPU" in rt.reason, rt.reason
    if on_cpu:
        assert "BLUEFOG_OPS_ON_CPU" in rt.reason, rt.reason
    assert bf.nccl_built() is (not shared and not on_cpu)


@timeout(120)
def case_allreduce_matches_cpu():
    for dtype in (torch.float32, torch.float64, torch.float16, torch.int32, torch.int64):
        for shape in SHAPES:
            x = _data(shape, dtype)
            for average in ((True, False) if dtype.is_floating_point else (False,)):
                atol = 1e-2 if dtype == torch.float16 else 1e-5
                _same(bf.allreduce(x.to(_device()), average=average), bf.allreduce(x, average=average),
                      atol)
                y = x.to(_device())
                assert bf.allreduce_(y, average=average) is y
                _same(y, bf.allreduce(x, average=average), atol)
    handles = [bf.allreduce_nonblocking(_data((4,), torch.float32, k).to(_device()), name=f"a{k}")
               for k in range(8)]
    for k, h in enumerate(handles):
        _same(bf.synchronize(h), bf.allreduce(_data((4,), torch.float32, k)))


@timeout(120)
def case_broadcast_matches_cpu():
    for dtype in (torch.float32, torch.float64, torch.int32, torch.int64, torch.float16):
        for shape in SHAPES:
            x = _data(shape, dtype)
            for root in range(bf.size()):
                _same(bf.broadcast(x.to(_device()), root), bf.broadcast(x, root))
                y = x.to(_device())
                assert bf.broadcast_(y, root) is y
                _same(y, bf.broadcast(x, root))


@timeout(120)
def case_allgather_matches_cpu_with_uneven_first_dims():
    for dtype in (torch.float32, torch.int64):
        for rows in (3, bf.rank() + 1, 2 * (bf.rank() % 2)):
            x = _data((rows, 4), dtype)
            _same(bf.allgather(x.to(_device())), bf.allgather(x))
    _same(bf.allgather(_data((0, 2), torch.float32).to(_device())), torch.empty(0, 2))


@timeout(120)
def case_neighbor_allreduce_matches_cpu():
    r, n = bf.rank(), bf.size()
    for dtype in (torch.float32, torch.float64, torch.float16):
        atol = 1e-2 if dtype == torch.float16 else 1e-5
        x = _data((6, 5), dtype)
        _same(bf.neighbor_allreduce(x.to(_device())), bf.neighbor_allreduce(x), atol)
        ins = bf.in_neighbor_ranks()
        weights = {j: 0.25 / (k + 1) for k, j in enumerate(ins)}
        kwargs = dict(self_weight=0.5, src_weights=weights)
        _same(bf.neighbor_allreduce(x.to(_device()), **kwargs), bf.neighbor_allreduce(x, **kwargs), atol)
    x = _data((9,), torch.float32)
    self_only = dict(self_weight=0.75, src_weights={}, dst_weights={})
    _same(bf.neighbor_allreduce(x.to(_device()), **self_only), bf.neighbor_allreduce(x, **self_only))
    if n > 1:
        one_peer = dict(self_weight=0.5, src_weights={(r - 1) % n: 0.5},
                        dst_weights={(r + 1) % n: 2.0})
        _same(bf.neighbor_allreduce(x.to(_device()), **one_peer), bf.neighbor_allreduce(x, **one_peer))
    handles = [bf.neighbor_allreduce_nonblocking(_data((3,), torch.float32, k).to(_device()),
                                                 name=f"n{k}") for k in range(8)]
    for k, h in enumerate(handles):
        _same(bf.synchronize(h), bf.neighbor_allreduce(_data((3,), torch.float32, k)))


@timeout(120)
def case_neighbor_allgather_matches_cpu():
    r, n = bf.rank(), bf.size()
    for rows in (2, r + 1):
        x = _data((rows, 3), torch.float64)
        _same(bf.neighbor_allgather(x.to(_device())), bf.neighbor_allgather(x))
    if n > 1:
        ring = dict(src_ranks=[(r - 1) % n], dst_ranks=[(r + 1) % n])
        x = _data((r + 1, 2), torch.int32)
        _same(bf.neighbor_allgather(x.to(_device()), **ring), bf.neighbor_allgather(x, **ring))


@timeout(120)
def case_ready_event_orders_against_the_callers_stream():
    """Data written by work still queued on a side stream must be what the op communicates."""
    device = _device()
    side = torch.cuda.Stream(device=device)
    with torch.cuda.stream(side):
        x = torch.zeros(1000, device=device)
        torch.cuda._sleep(100_000_000)        # ~50 ms of GPU time queued before the write below
        x.add_(bf.rank() + 1.0)
        out = bf.allreduce(x, average=False, name="ready")
        total = bf.size() * (bf.size() + 1) / 2
        assert torch.all(out == total).item(), out[:4]
        y = torch.zeros(1000, device=device)
        torch.cuda._sleep(100_000_000)
        y.add_(float(bf.rank()))
        got = bf.neighbor_allreduce(y, name="ready_n")
    _same(got, bf.neighbor_allreduce(torch.full((1000,), float(bf.rank()))))


@timeout(120)
def case_per_op_switch_stages_that_op():
    before = _route_counts()
    os.environ["BLUEFOG_ALLREDUCE_BY_MPI"] = "1"
    try:
        _same(bf.allreduce(torch.ones(4, device=_device()), name="by_mpi"), torch.ones(4))
    finally:
        del os.environ["BLUEFOG_ALLREDUCE_BY_MPI"]
    after = _route_counts()
    assert after["staged"] == before["staged"] + 1 and after["nccl"] == before["nccl"], (before, after)
    bf.allreduce(torch.ones(4, device=_device()), name="by_default")
    expected = "nccl" if _runtime().nccl else "staged"
    assert _route_counts()[expected] == after[expected] + 1


@sizes(2, 4)
@timeout(120)
def case_cpu_on_one_rank_and_cuda_on_another_is_an_error_everywhere():
    x = torch.ones(3)
    if bf.rank() == 0:
        x = x.to(_device())
    expect_error(ValueError, "Mismatched", bf.allreduce, x, name="placement")
    _same(bf.allreduce(torch.ones(3, device=_device()), name="after"), torch.ones(3))


@timeout(120)
def case_unsupported_cuda_dtype_is_refused():
    x = torch.ones(3, dtype=torch.uint8, device=_device())
    expect_error(ValueError, "not supported", bf.broadcast, x, 0)
    expect_error(ValueError, "not supported", bf.allgather, x)


@timeout(120)
def case_windows_of_cuda_tensors_match_cpu():
    r = bf.rank()
    results = {}
    for where in ("cpu", "cuda"):
        device = torch.device("cpu") if where == "cpu" else _device()
        x = torch.full((4, 3), float(r), dtype=torch.float64, device=device)
        name = f"w_{where}"
        assert bf.win_create(x, name=name, zero_init=True)
        bf.win_put(x, name=name)
        bf.barrier()
        first = bf.win_update(name=name, clone=True).clone()
        bf.win_accumulate(x * 2, name=name, require_mutex=True)
        bf.barrier()
        assert bf.win_get(name=name)
        bf.barrier()
        out = bf.win_update(name=name)
        assert out is x and out.device == device
        results[where] = (first.cpu(), out.cpu())
        bf.barrier()
        assert bf.win_free(name)
    close(results["cuda"][0], results["cpu"][0])
    close(results["cuda"][1], results["cpu"][1])


def _tiny_model(device):
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    return model.to(device)


@timeout(180)
def case_optimizers_on_a_cuda_model_match_cpu():
    r = bf.rank()
    g = torch.Generator().manual_seed(r)
    data, target = torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g)
    final = {}
    for factory in (bf.DistributedAdaptWithCombineOptimizer, bf.DistributedGradientAllreduceOptimizer):
        for where in ("cpu", "cuda"):
            device = torch.device("cpu") if where == "cpu" else _device()
            model = _tiny_model(device)
            bf.broadcast_parameters(model.state_dict(), root_rank=0)
            opt = factory(torch.optim.SGD(model.parameters(), lr=0.05), model=model)
            for _ in range(3):
                opt.zero_grad()
                loss = torch.nn.functional.mse_loss(model(data.to(device)), target.to(device))
                loss.backward()
                opt.step()
            final[where] = [p.detach().cpu() for p in model.parameters()]
            assert all(p.device == device for p in model.parameters())
        for a, b in zip(final["cuda"], final["cpu"]):
            close(a, b, atol=1e-5)


