"""Distributed optimizers and parameter utilities (spec §5, §6) against plain-torch references.

Every rank can compute every other rank's starting point and gradient (they are functions of the
rank), so each case checks one step against ``Combine`` / ``Adapt`` written out by hand.
"""

import os
import warnings

import numpy as np
import torch
import torch.nn.functional as F

import bluefog.torch as bf
from bluefog.common import topology_util
from casetools import expect_error, sizes, timeout

LR = 0.1
__warningregistry__ = {}   # warnings write it; defining it up front keeps the module dict stable


# -- a tiny problem whose every rank's data and start are known everywhere -----------------------

def make_model(k):
    """nn.Linear(3, 2) whose weights depend on rank ``k`` (a root module that is itself a leaf)."""
    torch.manual_seed(7)
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.add_(0.5 * k)
        model.bias.add_(-0.25 * k)
    return model


def batch(k, step=0):
    g = torch.Generator().manual_seed(1000 * step + k)
    return torch.randn(5, 3, generator=g), torch.randn(5, 2, generator=g)


def loss_of(model, k, step=0):
    x, y = batch(k, step)
    return F.mse_loss(model(x), y)


def start_and_grad(k, step=0):
    """[(value, grad)] of rank ``k``'s parameters at its start."""
    model = make_model(k)
    loss_of(model, k, step).backward()
    return [(p.detach().clone(), p.grad.clone()) for p in model.parameters()]


def neighbor_mix(values, r):
    """Uniform average of rank ``r`` and its in-neighbors (default static neighbor_allreduce)."""
    ranks = [r] + bf.in_neighbor_ranks()
    return sum(values[k] for k in ranks) / len(ranks)


def global_mix(values, r):
    return sum(values) / len(values)


def own(values, r):
    return values[r]


def check_params(model, expected, atol=1e-5):
    for p, e in zip(model.parameters(), expected):
        assert torch.allclose(p.detach(), e, atol=atol), (p.detach(), e)


def awc_reference(mix):
    """Combine(w) - lr * grad(w) for this rank, with plain SGD."""
    r, n = bf.rank(), bf.size()
    per_rank = [start_and_grad(k) for k in range(n)]
    return [mix([per_rank[k][i][0] for k in range(n)], r) - LR * per_rank[r][i][1]
            for i in range(2)]


def atc_reference(mix):
    """Combine(w - lr * grad(w))."""
    r, n = bf.rank(), bf.size()
    per_rank = [start_and_grad(k) for k in range(n)]
    return [mix([per_rank[k][i][0] - LR * per_rank[k][i][1] for k in range(n)], r)
            for i in range(2)]


def gradient_reference():
    r, n = bf.rank(), bf.size()
    per_rank = [start_and_grad(k) for k in range(n)]
    return [per_rank[r][i][0] - LR * sum(per_rank[k][i][1] for k in range(n)) / n
            for i in range(2)]


def one_step(make_opt, model=None):
    model = model or make_model(bf.rank())
    opt = make_opt(torch.optim.SGD(model.parameters(), lr=LR), model)
    loss = loss_of(model, bf.rank())
    opt.zero_grad()
    loss.backward()
    opt.step()
    opt.remove_hooks()
    return model, opt


# -- one step against the hand-computed references -----------------------------------------------

def case_adapt_with_combine_one_step_every_communication_type():
    for ctype, mix in [(bf.CommunicationType.neighbor_allreduce, neighbor_mix),
                       (bf.CommunicationType.allreduce, global_mix),
                       (bf.CommunicationType.empty, own)]:
        model, opt = one_step(lambda o, m: bf.DistributedAdaptWithCombineOptimizer(
            o, model=m, communication_type=ctype))
        check_params(model, awc_reference(mix if bf.size() > 1 else own))


def case_adapt_then_combine_one_step_every_communication_type():
    for ctype, mix in [(bf.CommunicationType.neighbor_allreduce, neighbor_mix),
                       (bf.CommunicationType.allreduce, global_mix),
                       (bf.CommunicationType.empty, own)]:
        model, opt = one_step(lambda o, m: bf.DistributedAdaptThenCombineOptimizer(
            o, model=m, communication_type=ctype))
        check_params(model, atc_reference(mix if bf.size() > 1 else own))


def case_gradient_allreduce_one_step():
    model, opt = one_step(lambda o, m: bf.DistributedGradientAllreduceOptimizer(o, model=m))
    check_params(model, gradient_reference())


def case_weighted_topology_and_explicit_weights():
    n, r = bf.size(), bf.rank()
    bf.set_topology(topology_util.RingGraph(n), is_weighted=True)
    self_w, nbr_w = topology_util.GetRecvWeights(bf.load_topology(), r)

    def weighted(values, rank):
        return self_w * values[rank] + sum(w * values[k] for k, w in nbr_w.items())

    model, _ = one_step(lambda o, m: bf.DistributedAdaptWithCombineOptimizer(o, model=m))
    check_params(model, awc_reference(weighted))
    bf.set_topology(topology_util.RingGraph(n))
    if n > 1:
        src = {k: 0.25 for k in bf.in_neighbor_ranks()}
        self_weight = 1.0 - 0.25 * len(src)

        def make(o, m):
            opt = bf.DistributedAdaptThenCombineOptimizer(o, model=m)
            opt.self_weight, opt.src_weights = self_weight, src
            return opt

        def explicit(values, rank):
            return self_weight * values[rank] + sum(w * values[k] for k, w in src.items())

        model, _ = one_step(make)
        check_params(model, atc_reference(explicit))


@sizes(4)
def case_hierarchical_neighbor_allreduce_one_step():
    os.environ["BLUEFOG_NODES_PER_MACHINE"] = "2"
    try:
        bf.init()
        bf.set_machine_topology(topology_util.ExponentialGraph(bf.machine_size()))

        def machine_mix(values, rank):
            means = [(values[2 * m] + values[2 * m + 1]) / 2 for m in range(2)]
            return (means[0] + means[1]) / 2

        model, _ = one_step(lambda o, m: bf.DistributedAdaptWithCombineOptimizer(
            o, model=m, communication_type=bf.CommunicationType.hierarchical_neighbor_allreduce))
        check_params(model, awc_reference(machine_mix))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model, _ = one_step(lambda o, m: bf.DistributedHierarchicalNeighborAllreduceOptimizer(
                o, model=m))
        assert any(w.category is PendingDeprecationWarning for w in caught)
        check_params(model, awc_reference(machine_mix))
    finally:
        del os.environ["BLUEFOG_NODES_PER_MACHINE"]
        bf.init()


def case_dynamic_one_peer_and_switching_to_allreduce():
    """The §5.8 knobs are read at every launch: dynamic one-peer, then allreduce, then static."""
    n, r = bf.size(), bf.rank()
    if n == 1:
        return                            # a one-peer schedule needs a peer
    model = make_model(r)
    opt = bf.DistributedAdaptWithCombineOptimizer(torch.optim.SGD(model.parameters(), lr=0.0),
                                                  model=model)
    schedule = topology_util.GetDynamicOnePeerSendRecvRanks(bf.load_topology(), r)
    values = [[p.detach().clone() for p in make_model(k).parameters()] for k in range(n)]
    # every rank can follow every rank's schedule, so it can replay the whole exchange by hand
    schedules = [topology_util.GetDynamicOnePeerSendRecvRanks(bf.load_topology(), k)
                 for k in range(n)]
    for it in range(3):
        send, recv = next(schedule)
        plans = [next(s) for s in schedules]
        opt.dst_weights = send
        opt.src_weights = {k: 1.0 / (len(recv) + 1) for k in recv}
        opt.self_weight = 1.0 / (len(recv) + 1)
        opt.enable_topo_check = False
        loss_of(model, r).backward()
        opt.step()
        values = [[(values[k][i] + sum(values[j][i] for j in plans[k][1])) / (len(plans[k][1]) + 1)
                   for i in range(2)] for k in range(n)]
        check_params(model, values[r])
    opt.communication_type = bf.CommunicationType.allreduce
    loss_of(model, r).backward()
    opt.step()
    values = [[sum(values[k][i] for k in range(n)) / n for i in range(2)]] * n
    check_params(model, values[r])
    opt.communication_type = bf.CommunicationType.neighbor_allreduce
    opt.self_weight = opt.src_weights = opt.dst_weights = None
    loss_of(model, r).backward()
    opt.step()
    check_params(model, values[r])        # consensus is a fixed point of the static average
    expect_error(AssertionError, "CommunicationType", setattr, opt, "communication_type", "allreduce")
    opt.remove_hooks()


# -- what a torch user expects from an optimizer --------------------------------------------------

def case_wrapper_looks_like_the_base_optimizer():
    model = make_model(bf.rank())
    base = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    for make in (lambda: bf.DistributedAdaptWithCombineOptimizer(base, model=model),
                 lambda: bf.DistributedAdaptThenCombineOptimizer(base, model=model),
                 lambda: bf.DistributedGradientAllreduceOptimizer(base, model=model)):
        opt = make()
        assert isinstance(opt, torch.optim.SGD) and isinstance(opt, torch.optim.Optimizer)
        assert not isinstance(opt, torch.optim.Adam)
        assert opt.param_groups is base.param_groups and opt.state is base.state
        opt.param_groups[0]["lr"] = 0.05
        assert base.param_groups[0]["lr"] == 0.05
        opt.param_groups[0]["lr"] = LR
        assert "SGD" in repr(opt)
        opt.remove_hooks()
    expect_error(TypeError, "optimizer", bf.DistributedAdaptWithCombineOptimizer, model, model)
    expect_error(ValueError, "num_steps_per_communication",
                 bf.DistributedAdaptWithCombineOptimizer, base, model, num_steps_per_communication=0)
    other = torch.nn.Linear(2, 2)
    expect_error(ValueError, "mismatch", bf.DistributedAdaptWithCombineOptimizer,
                 torch.optim.SGD(other.parameters(), lr=1.0), model)
    expect_error(ValueError, "model", bf.DistributedAdaptWithCombineOptimizer, base, "model")


def case_state_dict_round_trip_and_lr_scheduler():
    r = bf.rank()
    for make in (bf.DistributedAdaptWithCombineOptimizer, bf.DistributedAdaptThenCombineOptimizer,
                 bf.DistributedGradientAllreduceOptimizer):
        model = make_model(r)
        opt = make(torch.optim.Adam(model.parameters(), lr=0.01), model=model)
        scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        for step in range(2):
            opt.zero_grad()
            loss_of(model, r, step).backward()
            opt.step()
            scheduler.step()
        saved = opt.state_dict()
        assert saved["param_groups"][0]["lr"] == 0.0025
        assert float(saved["state"][0]["step"]) == 2.0
        twin = make_model(r)
        again = make(torch.optim.Adam(twin.parameters(), lr=0.01), model=twin)
        again.load_state_dict(saved)
        loaded = again.state_dict()
        assert loaded["param_groups"][0]["lr"] == 0.0025
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(loaded["state"][1][key], saved["state"][1][key])
        opt.remove_hooks()
        again.remove_hooks()


def case_zero_grad_guard_only_for_backward_triggered():
    r = bf.rank()
    model = make_model(r)
    awc = bf.DistributedAdaptWithCombineOptimizer(torch.optim.SGD(model.parameters(), lr=LR), model)
    loss = loss_of(model, r)
    awc.zero_grad()                       # the tests' loop: forward, zero_grad, backward, step
    loss.backward()
    awc.step()
    awc.remove_hooks()
    for make in (bf.DistributedAdaptThenCombineOptimizer, bf.DistributedGradientAllreduceOptimizer):
        model = make_model(r)
        opt = make(torch.optim.SGD(model.parameters(), lr=LR), model=model)
        loss_of(model, r).backward()
        if bf.size() > 1:
            expect_error(AssertionError, "zero_grad() was called after loss.backward()", opt.zero_grad)
        opt.step()
        opt.zero_grad()
        opt.remove_hooks()


def case_eval_forward_does_not_communicate_and_hooks_are_removable():
    r = bf.rank()
    model = make_model(r)
    opt = bf.DistributedAdaptWithCombineOptimizer(torch.optim.SGD(model.parameters(), lr=LR), model)
    model.eval()
    with torch.no_grad():
        model(batch(r)[0])
    assert not opt._handles
    model.train()
    model(batch(r)[0])
    assert len(opt._handles) == (2 if bf.size() > 1 else 0)
    opt.step()                            # no gradient: pure averaging
    n = bf.size()
    starts = [[p.detach() for p in make_model(k).parameters()] for k in range(n)]
    check_params(model, [(neighbor_mix if n > 1 else own)([starts[k][i] for k in range(n)], r)
                         for i in range(2)])
    opt.remove_hooks()
    model(batch(r)[0])
    assert not opt._handles


def case_shared_parameters_and_nested_modules():
    """A tied weight is communicated once; a module's own parameter next to children is covered."""
    r = bf.rank()

    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(3, 3, bias=False)
            self.b = torch.nn.Linear(3, 3, bias=False)
            self.b.weight = self.a.weight
            self.scale = torch.nn.Parameter(torch.tensor([1.0 + r]))

        def forward(self, x):
            return self.b(self.a(x)) * self.scale

    model = Tied()
    assert [n for n, _ in model.named_parameters()] == ["scale", "a.weight"]
    opt = bf.DistributedAdaptWithCombineOptimizer(torch.optim.SGD(model.parameters(), lr=0.0),
                                                  model=model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(torch.ones(1, 3)).sum().backward()
        opt.step()
    if bf.size() > 1:
        expected = neighbor_mix([torch.tensor([1.0 + k]) for k in range(bf.size())], r)
        assert torch.allclose(model.scale.detach(), expected)
    opt.remove_hooks()


def case_deprecated_aliases_warn():
    model = make_model(bf.rank())
    for factory, ctype in [(bf.DistributedAllreduceOptimizer, bf.CommunicationType.allreduce),
                           (bf.DistributedNeighborAllreduceOptimizer,
                            bf.CommunicationType.neighbor_allreduce)]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            opt = factory(torch.optim.SGD(model.parameters(), lr=LR), model=model)
        assert [w.category for w in caught] == [PendingDeprecationWarning], caught
        assert "DistributedAdaptWithCombineOptimizer" in str(caught[0].message)
        assert isinstance(opt, bf.DistributedAdaptWithCombineOptimizer)
        assert opt.communication_type is ctype
        opt.remove_hooks()


def case_adapt_then_combine_step_functions_and_registration():
    """Every built-in step function inside backward equals torch's own step (one rank's view)."""
    r = bf.rank()
    for cls, kwargs in [(torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
                        (torch.optim.Adam, dict(lr=0.01, amsgrad=True, weight_decay=0.1)),
                        (torch.optim.RMSprop, dict(lr=0.01, momentum=0.5, centered=True)),
                        (torch.optim.Adagrad, dict(lr=0.1, lr_decay=0.01)),
                        (torch.optim.Adadelta, dict(lr=1.0, weight_decay=0.1))]:
        model, twin = make_model(r), make_model(r)
        opt = bf.DistributedAdaptThenCombineOptimizer(cls(model.parameters(), **kwargs), model=model,
                                                      communication_type=bf.CommunicationType.empty)
        plain = cls(twin.parameters(), **kwargs)
        for step in range(3):
            for m, o in ((model, opt), (twin, plain)):
                o.zero_grad()
                loss_of(m, r, step).backward()
                o.step()
        for p, q in zip(model.parameters(), twin.parameters()):
            assert torch.allclose(p, q, atol=1e-6), (cls, p, q)
        opt.remove_hooks()
    if bf.size() > 1:
        model = make_model(r)
        opt = bf.DistributedAdaptThenCombineOptimizer(torch.optim.ASGD(model.parameters(), lr=LR),
                                                      model=model)
        expect_error(ValueError, "default implementation", loss_of(model, r).backward)
        opt.remove_hooks()
    model = make_model(r)
    opt = bf.DistributedAdaptThenCombineOptimizer(torch.optim.ASGD(model.parameters(), lr=LR),
                                                  model=model)
    calls = []

    def plain_sgd(optimizer, p, grad, group):
        calls.append(p.shape)
        p.add_(grad, alpha=-group["lr"])

    opt.register_step_function(plain_sgd)
    model.zero_grad()
    loss_of(model, r).backward()
    opt.step()
    assert len(calls) == (2 if bf.size() > 1 else 0)
    if bf.size() > 1:
        check_params(model, atc_reference(neighbor_mix))
    opt.remove_hooks()


# -- window optimizers ----------------------------------------------------------------------------

def _window_one_step(make, force_barrier=True, configure=None):
    r = bf.rank()
    model = make_model(r)
    opt = make(torch.optim.SGD(model.parameters(), lr=LR), model)
    opt.force_barrier = force_barrier
    if configure is not None:
        configure(opt)
    loss = loss_of(model, r)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return model, opt


def case_win_put_one_step_static_dynamic_and_prefix():
    n, r = bf.size(), bf.rank()
    model, opt = _window_one_step(lambda o, m: bf.DistributedWinPutOptimizer(
        o, model=m, window_prefix="CPU"))
    assert bf.get_current_created_window_names() == (["CPU.bias", "CPU.weight"] if n > 1 else [])
    check_params(model, awc_reference(neighbor_mix if n > 1 else own))
    opt.unregister_window()
    opt.unregister_window()                       # idempotent
    assert bf.get_current_created_window_names() == []
    if n == 1:
        return
    # dynamic: each rank puts to one out-neighbor; untouched buffers still hold the receiver's own
    # start (buffers begin as copies of the owner's tensor)
    topo = bf.load_topology()
    outs = {k: sorted(j for j in topo.successors(k) if j != k) for k in range(n)}
    target = {k: outs[k][0] for k in range(n)}
    model, opt = _window_one_step(
        lambda o, m: bf.DistributedWinPutOptimizer(o, model=m),
        configure=lambda o: setattr(o, "dst_weights", {target[r]: 1.0}))
    per_rank = [start_and_grad(k) for k in range(n)]
    ins = bf.in_neighbor_ranks()
    expected = []
    for i in range(2):
        total = per_rank[r][i][0].clone()
        for j in ins:
            total += per_rank[j][i][0] if target[j] == r else per_rank[r][i][0]
        expected.append(total / (len(ins) + 1) - LR * per_rank[r][i][1])
    check_params(model, expected)
    opt.unregister_window()


def case_win_put_del_never_frees_a_newer_optimizers_windows():
    import gc
    model = make_model(bf.rank())
    first = bf.DistributedWinPutOptimizer(torch.optim.SGD(model.parameters(), lr=LR), model=model,
                                          window_prefix="CPU")
    first.unregister_window()
    second = bf.DistributedWinPutOptimizer(torch.optim.SGD(model.parameters(), lr=LR), model=model,
                                           window_prefix="CPU")
    del first
    gc.collect()
    assert bf.get_current_created_window_names() == (["CPU.bias", "CPU.weight"]
                                                     if bf.size() > 1 else [])
    second.unregister_window()
    assert bf.get_current_created_window_names() == []


def case_pull_get_one_step_default_and_given_weights():
    n, r = bf.size(), bf.rank()
    model, opt = _window_one_step(lambda o, m: bf.DistributedPullGetOptimizer(o, model=m))
    check_params(model, awc_reference(neighbor_mix if n > 1 else own))
    opt.unregister_window()
    if n == 1:
        return
    left = (r - 1) % n                 # an in-neighbor in every Exp-2 graph

    def configure(o):
        o.src_weights = {left: 0.25}

    model, opt = _window_one_step(lambda o, m: bf.DistributedPullGetOptimizer(o, model=m),
                                  configure=configure)
    check_params(model, awc_reference(lambda v, k: 0.75 * v[k] + 0.25 * v[(k - 1) % n]))
    opt.unregister_window()


def case_push_sum_one_step_equals_neighbor_average_on_a_regular_graph():
    n = bf.size()
    model, opt = _window_one_step(lambda o, m: bf.DistributedPushSumOptimizer(o, model=m))
    check_params(model, awc_reference(neighbor_mix if n > 1 else own))
    opt.unregister_window()


@sizes(2, 4)
def case_push_sum_reaches_the_exact_mean_on_an_irregular_graph():
    """On a star, uniform neighbor averaging is biased toward the centre; push-sum is not."""
    n, r = bf.size(), bf.rank()
    bf.set_topology(topology_util.StarGraph(n))
    try:
        model = make_model(r)
        opt = bf.DistributedPushSumOptimizer(torch.optim.SGD(model.parameters(), lr=0.0), model=model)
        opt.force_barrier = True     # the synchronous schedule: exact after 40 steps on every rank
        for _ in range(40):
            model(batch(r)[0])
            opt.step()
        mean = [sum(list(make_model(k).parameters())[i].detach() for k in range(n)) / n
                for i in range(2)]
        check_params(model, mean, atol=1e-4)
        opt.unregister_window()
    finally:
        bf.set_topology(topology_util.ExponentialGraph(n))


# -- num_steps_per_communication (spec §5.9) -----------------------------------------------------

def _pattern_run(make, pattern, steps):
    """Run a pattern like "F B s F B S" ('F' forward+backward, 's'/'S' step) and return the model."""
    r = bf.rank()
    model = make_model(r)
    opt = make(torch.optim.SGD(model.parameters(), lr=LR), model)
    step = 0
    opt.zero_grad()
    for token in pattern.split():
        if token == "F":
            loss_of(model, r, step).backward()
            step += 1
        else:
            opt.step()
            opt.zero_grad()
    opt.remove_hooks()
    return model


def _replay(pattern, mode, mix, steps):
    """The same pattern by hand on every rank: mode 'awc', 'atc' or 'ga'."""
    n, r = bf.size(), bf.rank()
    models = [make_model(k) for k in range(n)]
    opts = [torch.optim.SGD(m.parameters(), lr=LR) for m in models]
    count, step = 0, 0
    for token in pattern.split():
        if token == "F":
            for k in range(n):
                loss_of(models[k], k, step).backward()
            step += 1
            count += 1
            continue
        communicate = count == steps or mode == "ga"     # GA averages at every step
        if communicate:
            count = 0
        with torch.no_grad():
            params = [list(m.parameters()) for m in models]
            if communicate and mode == "ga":
                for i in range(2):
                    avg = sum(params[k][i].grad for k in range(n)) / n
                    for k in range(n):
                        params[k][i].grad = avg.clone()
            if communicate and mode == "awc":
                mixed = [[mix([params[j][i].detach().clone() for j in range(n)], k) for i in range(2)]
                         for k in range(n)]
                for k in range(n):
                    for i in range(2):
                        params[k][i].copy_(mixed[k][i])
        for o in opts:
            o.step()
            o.zero_grad()
        if communicate and mode == "atc":
            with torch.no_grad():
                params = [list(m.parameters()) for m in models]
                mixed = [[mix([params[j][i].detach().clone() for j in range(n)], k) for i in range(2)]
                         for k in range(n)]
                for k in range(n):
                    for i in range(2):
                        params[k][i].copy_(mixed[k][i])
    return models[r]


def case_local_aggregation_and_local_steps_patterns():
    """J=3: "FFF S" (accumulate, one step) and "Fs Fs FS" (local steps) for AWC, ATC and GA."""
    mix = neighbor_mix if bf.size() > 1 else own
    gmix = global_mix if bf.size() > 1 else own
    for pattern in ("F F F S", "F s F s F S"):
        for mode, make, m in [
                ("awc", lambda o, md: bf.DistributedAdaptWithCombineOptimizer(
                    o, model=md, num_steps_per_communication=3), mix),
                ("atc", lambda o, md: bf.DistributedAdaptThenCombineOptimizer(
                    o, model=md, num_steps_per_communication=3), mix),
                ("ga", lambda o, md: bf.DistributedGradientAllreduceOptimizer(
                    o, model=md, num_steps_per_communication=3), gmix)]:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                got = _pattern_run(make, pattern, 3)
            if bf.size() == 1:
                mode = "plain"
            want = _replay(pattern, mode, m, 3)
            for p, q in zip(got.parameters(), want.parameters()):
                assert torch.allclose(p, q, atol=1e-5), (pattern, mode, p, q)


def case_too_many_passes_warn_once():
    if bf.size() == 1:
        return
    for make in (lambda o, m: bf.DistributedAdaptWithCombineOptimizer(o, model=m,
                                                                       num_steps_per_communication=2),
                 lambda o, m: bf.DistributedAdaptThenCombineOptimizer(o, model=m,
                                                                      num_steps_per_communication=2),
                 lambda o, m: bf.DistributedGradientAllreduceOptimizer(o, model=m,
                                                                       num_steps_per_communication=2)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _pattern_run(make, "F F F S F F S", 2)
        messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
        assert len(messages) == 1 and messages[0].startswith("Unexpected behavior"), messages


def case_double_synchronize_warns_unless_skipped():
    r = bf.rank()
    model = make_model(r)
    opt = bf.DistributedGradientAllreduceOptimizer(torch.optim.SGD(model.parameters(), lr=LR), model)
    loss_of(model, r).backward()
    opt.synchronize()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with opt.skip_synchronize():
            opt.step()
    check_params(model, gradient_reference())
    opt.remove_hooks()


# -- the regression test of the original suite (spec §13) -----------------------------------------

class LinearNet(torch.nn.Module):
    def __init__(self, input_dim=16, output_dim=3):
        super().__init__()
        self.fc = torch.nn.Linear(input_dim, output_dim)

    def forward(self, x):
        return self.fc(x)


class DuplicatedLinearNet(torch.nn.Module):
    def __init__(self, input_dim=16, output_dim=3):
        super().__init__()
        self.fc1 = torch.nn.Linear(input_dim, output_dim)
        self.fc2 = torch.nn.Linear(output_dim, output_dim)

    def forward(self, x):
        return self.fc2(self.fc2(self.fc1(x)))


def regression_problem(net=LinearNet, samples=1024):
    torch.manual_seed(123)
    truth = net()
    for p in truth.parameters():
        p.data.mul_(2.0)
    g = torch.Generator().manual_seed(10 + bf.rank())
    x = torch.randn(samples, 16, generator=g)
    with torch.no_grad():
        y = truth(x)
    torch.manual_seed(5 + bf.rank())        # different starts; broadcast makes them equal
    model = net()
    bf.broadcast_parameters(model.state_dict(), root_rank=0)
    return model, x, y


def train_regression(make, net=LinearNet, epochs=50, batch_size=128, micro=1, dynamic=None):
    model, x, y = regression_problem(net)
    base = torch.optim.Adam(model.parameters(), lr=0.01 * bf.size())
    opt = make(base, model)
    bf.broadcast_optimizer_state(opt, root_rank=0)
    mse = []
    for epoch in range(epochs):
        model.train()
        for start in range(0, x.shape[0], batch_size):
            if dynamic is not None:
                dynamic(opt)
            opt.zero_grad()
            chunk = batch_size // micro
            for k in range(micro):
                lo = start + k * chunk
                loss = F.mse_loss(model(x[lo:lo + chunk]), y[lo:lo + chunk]) / micro
                loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            mse.append(bf.allreduce(F.mse_loss(model(x), y), name="mse").item())
    if hasattr(opt, "unregister_window"):
        opt.unregister_window()
    opt.remove_hooks()
    return mse


def _dynamic_neighbor(opt):
    send, recv = next(opt._test_schedule)
    opt.dst_weights = send
    opt.src_weights = {k: 1.0 / (len(recv) + 1) for k in recv}
    opt.self_weight = 1.0 / (len(recv) + 1)
    opt.enable_topo_check = False


def _dynamic_put(opt):
    outs = bf.out_neighbor_ranks()
    opt._test_round = getattr(opt, "_test_round", -1) + 1
    opt.dst_weights = {outs[opt._test_round % len(outs)]: 1.0} if outs else None


def _with_schedule(make):
    def build(o, m):
        opt = make(o, m)
        opt._test_schedule = topology_util.GetDynamicOnePeerSendRecvRanks(bf.load_topology(),
                                                                          bf.rank())
        return opt
    return build


@timeout(240)
def case_linear_regression_converges_with_every_optimizer():
    awc = bf.DistributedAdaptWithCombineOptimizer
    atc = bf.DistributedAdaptThenCombineOptimizer
    runs = {
        "awc neighbor": dict(make=lambda o, m: awc(o, model=m)),
        "awc allreduce": dict(make=lambda o, m: awc(
            o, model=m, communication_type=bf.CommunicationType.allreduce)),
        "awc empty": dict(make=lambda o, m: awc(o, model=m,
                                                communication_type=bf.CommunicationType.empty)),
        "awc dynamic": dict(make=_with_schedule(lambda o, m: awc(o, model=m)),
                            dynamic=_dynamic_neighbor),
        "awc local aggregation J=4": dict(make=lambda o, m: awc(o, model=m,
                                                                 num_steps_per_communication=4),
                                          micro=4),
        "atc neighbor": dict(make=lambda o, m: atc(o, model=m)),
        "atc local aggregation J=4": dict(make=lambda o, m: atc(o, model=m,
                                                                 num_steps_per_communication=4),
                                          micro=4),
        "gradient allreduce": dict(make=lambda o, m: bf.DistributedGradientAllreduceOptimizer(
            o, model=m)),
        "win put": dict(make=lambda o, m: bf.DistributedWinPutOptimizer(o, model=m)),
        "win put dynamic": dict(make=lambda o, m: bf.DistributedWinPutOptimizer(o, model=m),
                                dynamic=_dynamic_put),
        "pull get": dict(make=lambda o, m: bf.DistributedPullGetOptimizer(o, model=m)),
        "push sum": dict(make=lambda o, m: bf.DistributedPushSumOptimizer(o, model=m)),
    }
    if bf.size() == 1:
        del runs["awc dynamic"], runs["win put dynamic"]
    failures = []
    for label, kwargs in runs.items():
        mse = train_regression(**kwargs)
        bound = 2 * 1e-10 if "empty" in label else 1.5 * 1e-10
        if not np.mean(mse[-3:]) < bound:
            failures.append((label, mse[-3:]))
    assert not failures, failures


@timeout(120)
def case_duplicated_layer_trains_without_unexpected_warnings():
    awc = bf.DistributedAdaptWithCombineOptimizer
    atc = bf.DistributedAdaptThenCombineOptimizer
    for make in (lambda o, m: awc(o, model=m), lambda o, m: atc(o, model=m),
                 lambda o, m: bf.DistributedGradientAllreduceOptimizer(o, model=m)):
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="Unexpected behavior")
            mse = train_regression(make, net=DuplicatedLinearNet, epochs=15)
        assert mse[-1] < mse[0], mse


# -- utilities (spec §6) -------------------------------------------------------------------------

def case_broadcast_and_allreduce_parameters():
    n, r = bf.size(), bf.rank()
    model = make_model(r)
    model.register_buffer("count", torch.tensor(r, dtype=torch.int64))
    bf.broadcast_parameters(model.state_dict(), root_rank=0)
    check_params(model, [p.detach() for p in make_model(0).parameters()], atol=0)
    assert model.count.item() == 0
    model = make_model(r)
    bf.broadcast_parameters(list(model.named_parameters()), root_rank=n - 1)
    check_params(model, [p.detach() for p in make_model(n - 1).parameters()], atol=0)
    model = make_model(r)
    bf.allreduce_parameters(model.state_dict())
    check_params(model, [sum(list(make_model(k).parameters())[i].detach() for k in range(n)) / n
                         for i in range(2)])
    tensors = [torch.full((2,), float(r))]
    bf.broadcast_parameters(tensors, root_rank=0)
    assert tensors[0].tolist() == [0.0, 0.0]
    expect_error(ValueError, "invalid params of type", bf.broadcast_parameters, "nope", 0)


def case_broadcast_optimizer_state_modern_adam_and_nested_options():
    n, r = bf.size(), bf.rank()
    model = make_model(r)
    bf.broadcast_parameters(model.state_dict(), root_rank=0)
    before = [p.detach().clone() for p in model.parameters()]
    adam = torch.optim.Adam(model.parameters(), lr=0.01 * (r + 1), betas=(0.8 + 0.01 * r, 0.99),
                            amsgrad=bool(r % 2), weight_decay=0.1)
    bf.broadcast_optimizer_state(adam, root_rank=0)
    group = adam.param_groups[0]
    assert group["lr"] == 0.01 and group["betas"] == (0.8, 0.99)
    assert isinstance(group["betas"], tuple) and all(type(b) is float for b in group["betas"])
    assert group["amsgrad"] is False and group["foreach"] is None and group["fused"] is None
    state = adam.state[next(iter(model.parameters()))]
    assert state["step"].dim() == 0 and state["step"].dtype == torch.float32
    check_params(model, before, atol=0)      # creating the state left the parameters alone
    # a trained state from rank 0 reaches everyone
    for p in model.parameters():
        p.grad = torch.full_like(p, float(r + 1))
    adam.step()
    bf.broadcast_optimizer_state(adam, root_rank=0)
    assert float(state["step"]) == 2.0
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.allclose(bf.allreduce(state[key], name=key), state[key])
    assert "max_exp_avg_sq" not in state          # rank 0's amsgrad=False decided the layout

    class Nested(torch.optim.Optimizer):
        def __init__(self, params):
            super().__init__(params, dict(lr=0.1 * (r + 1), schedule=((1, 2.5 * r), (r, True)),
                                          note="rank%d" % r, nothing=None))

        def step(self, closure=None):
            for group in self.param_groups:
                for p in group["params"]:
                    st = self.state[p]
                    st["count"] = st.get("count", 0) + 1 + r
                    st["scale"] = 0.5 * (r + 1)

    nested = Nested(model.parameters())
    bf.broadcast_optimizer_state(nested, root_rank=0)
    group = nested.param_groups[0]
    assert group["lr"] == 0.1 and group["schedule"] == ((1, 0.0), (0, True)), group["schedule"]
    assert type(group["schedule"][1][1]) is bool and type(group["schedule"][0][0]) is int
    assert group["note"] == "rank%d" % r and group["nothing"] is None
    st = nested.state[next(iter(model.parameters()))]
    assert st["count"] == 1 and type(st["count"]) is int and st["scale"] == 0.5
    # wrappers and stateless optimizers
    opt = bf.DistributedAdaptWithCombineOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1 * (r + 1)), model=model)
    bf.broadcast_optimizer_state(opt, root_rank=0)
    assert opt.param_groups[0]["lr"] == 0.1
    opt.remove_hooks()
    expect_error(ValueError, "LBFGS", bf.broadcast_optimizer_state,
                 torch.optim.LBFGS(model.parameters()), 0)


# -- timeline (last: it leaves the tracer stopped) ------------------------------------------------

@sizes(2, 4)
def case_optimizers_record_communication_in_the_timeline():
    from bluefog.common.util import env
    from bluefog.timeline import load, tracer
    directory = os.path.join("/tmp", f"bf-optim-timeline-{os.getppid()}")
    os.makedirs(directory, exist_ok=True)
    prefix = os.path.join(directory, "tl")
    try:
        with env(BLUEFOG_TIMELINE=prefix):
            bf.init()
            one_step(lambda o, m: bf.DistributedAdaptWithCombineOptimizer(o, model=m))  # auto on

        def explicit(o, m):
            opt = bf.DistributedGradientAllreduceOptimizer(o, model=m)
            opt.turn_on_timeline()
            return opt

        one_step(explicit)
        bf.barrier()
        events = load(f"{prefix}{bf.rank()}.json")
        rows = {e["pid"]: e["args"]["name"] for e in events if e.get("name") == "process_name"}
        spans = {(rows.get(e["pid"]), e["name"]) for e in events if e["ph"] == "B"}
        for row in ("neighbor.allreduce.weight", "neighbor.allreduce.bias", "allreduce.weight"):
            assert (row, "COMMUNICATE") in spans, (row, sorted(spans))
    finally:
        tracer.stop()


def case_packed_launch_matches_one_op_per_parameter():
    """AWC sends a model's parameters as one op per dtype run (the per-parameter path is what the
    timeline-recording optimizer uses): same numbers, bitwise, over steps that pack by copying
    (first step) and in place (later steps, once the parameters share one buffer)."""
    from bluefog.optim.adapt_with_combine import ForwardTriggeredOptimizer
    import types

    def train(per_parameter):
        torch.manual_seed(11)
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
        opt = bf.DistributedAdaptWithCombineOptimizer(torch.optim.SGD(model.parameters(), lr=LR),
                                                      model=model)
        if per_parameter:
            opt._launch_due = types.MethodType(ForwardTriggeredOptimizer._launch_due, opt)
        for step in range(3):
            x, y = batch(bf.rank(), step)
            loss = F.mse_loss(model(x.to(model[0].weight.dtype)), y.to(model[0].weight.dtype))
            opt.zero_grad()
            loss.backward()
            opt.step()
        opt.remove_hooks()
        return model

    from bluefog import context
    stats = context.current().engine.stats
    before = dict(stats)
    packed = train(False)
    packed_stats = {k: stats[k] - before[k] for k in ("kernels", "fused_requests")}
    before = dict(stats)
    reference = train(True)
    reference_stats = {k: stats[k] - before[k] for k in ("kernels", "fused_requests")}
    for p, q in zip(packed.parameters(), reference.parameters()):
        assert torch.equal(p.detach(), q.detach()), (p, q)
    if bf.size() > 1:   # 3 steps: one packed op each, against 4 per-parameter ops fused by the engine
        assert packed_stats == {"kernels": 3, "fused_requests": 0}, packed_stats
        assert reference_stats == {"kernels": 3, "fused_requests": 12}, reference_stats
        ptrs = [p.data_ptr() for p in packed.parameters()]
        sizes = [p.numel() * p.element_size() for p in packed.parameters()]
        assert all(ptrs[k] + sizes[k] == ptrs[k + 1] for k in range(len(ptrs) - 1)), ptrs
