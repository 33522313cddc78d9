"""Asynchronous window optimizers (win-put, pull-get, push-sum) with ranks that step at different
speeds and stop after different numbers of steps, then finish together.

Nothing here depends on timing: ranks differ in their step counts (and some sleep a little, which
only changes the interleaving); a step that waited for a peer would hang, and the harness's
timeout turns that hang into a failure.
"""

import time

import torch
import torch.nn.functional as F

import bluefog.torch as bf
from bluefog.common import topology_util
from casetools import sizes, timeout


class TwoDtypes(torch.nn.Module):
    """Parameters of two dtypes (two push-sum windows), values depending on the rank."""

    def __init__(self, r):
        super().__init__()
        g = torch.Generator().manual_seed(100 + r)
        self.a = torch.nn.Parameter(torch.randn(6, 3, generator=g, dtype=torch.float64) + r)
        self.b = torch.nn.Parameter(torch.randn(4, generator=g, dtype=torch.float64) * (r + 1))
        self.c = torch.nn.Parameter(torch.randn(5, generator=g).float() - r)

    def forward(self, x):
        return (x.double() @ self.a.t()).sum() + self.b.sum() + (self.c.double() * 2).sum()


def _sum_over_ranks(t, name):
    return bf.allreduce(t.detach().double().clone(), average=False, name=name)


def _mass_run(topology=None, label="", dynamic=False):
    n, r = bf.size(), bf.rank()
    if topology is not None:
        assert bf.set_topology(topology)
    try:
        model = TwoDtypes(r)
        start = [p.detach().double().clone() for p in model.parameters()]
        opt = bf.DistributedPushSumOptimizer(torch.optim.SGD(model.parameters(), lr=0.0),
                                             model=model)
        assert opt.force_barrier is False          # asynchronous by default
        assert len(opt.push_sum_weights) == 2               # float64 and float32
        steps = 10 + 7 * r                          # every rank stops after its own count
        outs = bf.out_neighbor_ranks()
        for k in range(steps):
            if dynamic and outs:                    # one out-neighbour a step, in turn
                opt.dst_weights = [outs[k % len(outs)]] if k % 4 else {outs[0]: 0.25}
            if k == 3:                              # the user replaces a parameter's data
                model.b.data = model.b.data.clone()
            loss = model(torch.ones(2, 3))
            opt.zero_grad()
            loss.backward()
            opt.step()
            if r % 2 == 1 and k % 3 == 0:
                time.sleep(0.001)                   # odd ranks run slower
        opt.unregister_window()                     # collective: collects what is in flight
        assert bf.get_current_created_window_names() == []
        weights = opt.push_sum_weights
        by_dtype = {torch.float64: [w for k, w in weights.items() if k.endswith("float64")][0],
                    torch.float32: [w for k, w in weights.items() if k.endswith("float32")][0]}
        for i, p in enumerate(model.parameters()):
            w = by_dtype[p.dtype]
            total_w = _sum_over_ranks(torch.tensor([w], dtype=torch.float64), f"w{label}{i}").item()
            mass = _sum_over_ranks(p.detach().double() * w, f"m{label}{i}")
            initial = _sum_over_ranks(start[i], f"s{label}{i}")
            tol = 1e-9 if p.dtype == torch.float64 else 1e-4
            assert abs(total_w - n) < (1e-9 if p.dtype == torch.float64 else 1e-4), total_w
            assert torch.allclose(mass, initial, atol=tol * n, rtol=tol), (mass - initial)
            if n > 1:
                assert w != 1.0 or steps == 0
        return opt
    finally:
        if topology is not None:
            bf.set_topology(topology_util.ExponentialGraph(n))


@sizes(1, 2, 4)
@timeout(120)
def case_push_sum_conserves_mass_without_barrier():
    """Every rank pushes a different number of times at a different pace, with no barrier; after
    unregister_window() the weights sum to n and sum_i weight_i * z_i is the initial sum; also
    with dynamic destinations (a list, or a dict keeping the rest)."""
    _mass_run()
    _mass_run(label="dynamic", dynamic=True)


@sizes(4)
@timeout(120)
def case_push_sum_conserves_mass_on_a_directed_irregular_graph():
    n = bf.size()
    graph = topology_util.StarGraph(n)
    graph.remove_edge(0, 1)                         # directed: 1 -> 0 stays, 0 -> 1 goes
    _mass_run(graph, "star")


@sizes(2, 4)
@timeout(120)
def case_a_rank_that_never_steps_does_not_block_the_others():
    """Rank 0 goes straight to unregister_window() while the others take 40 steps each: with a
    barrier (or any collective) inside step() this hangs.  Then the final consensus agrees."""
    r = bf.rank()
    makers = {"win_put": bf.DistributedWinPutOptimizer,
              "pull_get": bf.DistributedPullGetOptimizer,
              "push_sum": bf.DistributedPushSumOptimizer}
    for label, make in makers.items():
        torch.manual_seed(r)
        model = torch.nn.Linear(4, 2)
        opt = make(torch.optim.SGD(model.parameters(), lr=0.05), model=model)
        assert opt.force_barrier is False, label
        x, y = torch.randn(8, 4), torch.randn(8, 2)
        for _ in range(0 if r == 0 else 40):
            loss = F.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        opt.unregister_window()
        bf.allreduce_parameters(model.state_dict())
        w = model.weight.detach()
        everyone = bf.allgather(w.reshape(1, -1).clone(), name=f"final {label}")
        assert torch.allclose(everyone, everyone[0:1].expand_as(everyone), atol=1e-6), label
        opt.remove_hooks()


def _digits(r, n):
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    test, train = order[:400], order[400:]
    return x[train[r::n]], y[train[r::n]], x[test], y[test]


@sizes(4)
@timeout(240)
def case_async_optimizers_train_with_a_straggler_that_stops_early():
    """Three ranks take 300 steps, the last rank 75 (and sleeps a little each step); no barrier.
    After unregister_window() and a final average, the model classifies digits well."""
    n, r = bf.size(), bf.rank()
    xs, ys, xt, yt = _digits(r, n)
    straggler = n - 1
    makers = {"push_sum": bf.DistributedPushSumOptimizer,
              "win_put": bf.DistributedWinPutOptimizer,
              "pull_get": bf.DistributedPullGetOptimizer}
    results = {}
    for label, make in makers.items():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(),
                                    torch.nn.Linear(32, 10))
        opt = make(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), model=model)
        g = torch.Generator().manual_seed(r)
        for _ in range(75 if r == straggler else 300):
            idx = torch.randint(len(xs), (32,), generator=g)
            loss = F.cross_entropy(model(xs[idx]), ys[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if r == straggler:
                time.sleep(0.002)
        opt.unregister_window()
        for p in model.parameters():
            assert torch.isfinite(p).all(), label
        bf.allreduce_parameters(model.state_dict())
        with torch.no_grad():
            results[label] = (model(xt).argmax(1) == yt).float().mean().item()
        opt.remove_hooks()
    assert all(acc > 0.9 for acc in results.values()), results
