"""The SGD-based decentralized methods (gradient tracking, exact diffusion, push-DIGing,
quasi-global momentum) and periodic global averaging, on a float64 least-squares problem.

Every rank holds different data ``(A_k, b_k)`` (its own local minimizer), known on every rank, so
each case can compare the wrappers with the recursions written out over all ranks in plain torch,
and with the exact minimizer of the average loss.
"""

import networkx as nx
import torch

import bluefog.torch as bf
from casetools import expect_error, sizes, timeout

D, M = 5, 20


def data(k):
    """Rank ``k``'s least-squares data; its local minimizer grows with ``k``."""
    g = torch.Generator().manual_seed(100 + k)
    A = torch.randn(M, D, generator=g, dtype=torch.float64)
    truth = torch.linspace(-1, 1, D, dtype=torch.float64).reshape(D, 1) * (1 + k)
    return A, A @ truth + 0.3 * torch.randn(M, 1, generator=g, dtype=torch.float64)


def grad_of(k, x):
    """Gradient of rank k's loss 0.5 * mean((A x - b)^2) at the row vector x."""
    A, b = data(k)
    return (A.T @ (A @ x.reshape(D, 1) - b) / M).reshape(1, D)


def minimizer(n):
    H = sum(data(k)[0].T @ data(k)[0] for k in range(n))
    r = sum(data(k)[0].T @ data(k)[1] for k in range(n))
    return torch.linalg.solve(H, r).reshape(1, D)


def smoothness(n):
    return max(torch.linalg.eigvalsh(data(k)[0].T @ data(k)[0] / M).max().item() for k in range(n))


def mixing(topo):
    """W[i, j]: weight rank i gives rank j's value (uniform over in-neighbors and self)."""
    n = topo.number_of_nodes()
    W = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        peers = [j for j in topo.predecessors(i) if j != i] + [i]
        W[i, peers] = 1.0 / len(peers)
    return W


def push_mixing(topo):
    """C[i, j]: the share of rank j's value that rank i receives (column stochastic)."""
    n = topo.number_of_nodes()
    C = torch.zeros(n, n, dtype=torch.float64)
    for j in range(n):
        outs = [i for i in topo.successors(j) if i != j] + [j]
        C[outs, j] = 1.0 / len(outs)
    return C


def start(k):
    return torch.full((1, D), 0.1 * k, dtype=torch.float64)


def train(make, steps, lr, momentum=0.0, x0=None, before_step=None):
    """Run the wrapper ``make(sgd, model)`` for ``steps`` full-gradient steps; (x, optimizer).
    ``before_step(opt, k)`` runs before step k's forward pass (to set dynamic weights)."""
    model = torch.nn.Linear(D, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(start(bf.rank()) if x0 is None else x0)
    opt = make(torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum), model)
    A, b = data(bf.rank())
    for k in range(steps):
        if before_step is not None:
            before_step(opt, k)
        loss = 0.5 * ((model(A) - b) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    if hasattr(opt, "remove_hooks"):
        opt.remove_hooks()
    return model.weight.detach().clone(), opt


def all_grads(X):
    return torch.cat([grad_of(k, X[k]) for k in range(X.shape[0])])


def all_starts(n):
    return torch.cat([start(k) for k in range(n)])


# -- references: the recursions over all ranks at once -------------------------------------------

def per_step(W):
    """Mixing matrix of step k: ``W(k)`` if ``W`` is callable, else the fixed ``W``."""
    return W if callable(W) else (lambda k: W)


def ref_gradient_tracking(W, steps, lr):
    """W_k mixes x_k and y_{k-1} (both are sent in step k's forward pass)."""
    W = per_step(W)
    X = all_starts(W(0).shape[0])
    Y = G_old = None
    for k in range(steps):
        G = all_grads(X)
        Y = G.clone() if Y is None else W(k) @ Y + G - G_old
        X = W(k) @ X - lr * Y
        G_old = G
    return X


def ref_exact_diffusion(W, steps, lr):
    W_bar = (torch.eye(W.shape[0], dtype=torch.float64) + W) / 2
    X = all_starts(W.shape[0])
    psi_old = X.clone()
    for _ in range(steps):
        psi = X - lr * all_grads(X)
        X = W_bar @ (psi + X - psi_old)
        psi_old = psi
    return X


def ref_push_diging(C, steps, lr):
    C = per_step(C)
    n = C(0).shape[0]
    U = all_starts(n)
    v = torch.ones(n, 1, dtype=torch.float64)
    G = all_grads(U)
    Y = G.clone()
    for k in range(steps):
        U = C(k) @ (U - lr * Y)
        v = C(k) @ v
        G_new = all_grads(U / v)
        Y = C(k) @ Y + G_new - G
        G = G_new
    return U / v


def ref_quasi_global_momentum(W, steps, lr, beta):
    W = per_step(W)
    X = all_starts(W(0).shape[0])
    m_hat = torch.zeros_like(X)
    for k in range(steps):
        X_new = W(k) @ (X - lr * (all_grads(X) + beta * m_hat))
        m_hat = beta * m_hat + (1 - beta) * (X - X_new) / lr
        X = X_new
    return X


def ref_periodic(W, steps, lr, period, then_combine):
    n = W.shape[0]
    J = torch.full((n, n), 1.0 / n, dtype=torch.float64)
    X = all_starts(n)
    for k in range(1, steps + 1):
        mix = J if k % period == 0 else W
        X = mix @ (X - lr * all_grads(X)) if then_combine else mix @ X - lr * all_grads(X)
    return X


def close_to(x, expected, atol=1e-10):
    assert torch.allclose(x, expected, atol=atol, rtol=0), (x, expected)


def relative_error(x, n):
    optimum = minimizer(n)
    mine = torch.tensor([((x - optimum).norm() / optimum.norm()).item()], dtype=torch.float64)
    return bf.allgather(mine, name="relative_error").max().item()


def directed_irregular(n):
    """A strongly connected directed graph with unequal in- and out-degrees (n == 4)."""
    G = nx.DiGraph()
    G.add_nodes_from(range(n))
    for i in range(n):
        G.add_edge(i, i, weight=1.0)
    for i, j in [(0, 1), (1, 2), (2, 3), (3, 0), (0, 2), (1, 3), (0, 3)]:
        G.add_edge(i, j)
    return G


# -- a few steps against the references (1, 2 and 4 ranks) ---------------------------------------

def case_gradient_tracking_matches_reference():
    lr = 0.05
    x, opt = train(bf.DistributedGradientTrackingOptimizer, 4, lr)
    close_to(x, ref_gradient_tracking(mixing(bf.load_topology()), 4, lr)[bf.rank()])
    assert isinstance(opt, torch.optim.SGD)
    state = opt.state_dict()["state"][0]
    assert set(state) >= {"tracker", "previous_grad"}, state.keys()


def case_exact_diffusion_matches_reference():
    bf.set_topology(bf.RingGraph(bf.size()))
    lr = 0.05
    x, opt = train(bf.DistributedExactDiffusionOptimizer, 4, lr)
    close_to(x, ref_exact_diffusion(mixing(bf.load_topology()), 4, lr)[bf.rank()])
    assert isinstance(opt, torch.optim.SGD)
    assert "psi" in opt.state_dict()["state"][0]


def case_push_diging_matches_reference():
    lr = 0.05
    x, opt = train(bf.DistributedPushDIGingOptimizer, 4, lr)
    close_to(x, ref_push_diging(push_mixing(bf.load_topology()), 4, lr)[bf.rank()])
    assert isinstance(opt, torch.optim.SGD)


def case_quasi_global_momentum_matches_reference():
    lr, beta = 0.05, 0.8
    x, opt = train(bf.DistributedQuasiGlobalMomentumOptimizer, 4, lr, momentum=beta)
    close_to(x, ref_quasi_global_momentum(mixing(bf.load_topology()), 4, lr, beta)[bf.rank()])
    assert isinstance(opt, torch.optim.SGD)
    assert "quasi_global_momentum" in opt.state_dict()["state"][0]


def case_quasi_global_momentum_differs_from_heavy_ball():
    """The momentum is built from model differences, not gradients: the result is not AWC/ATC
    with the same momentum (guards against falling back to the base optimizer's update)."""
    lr, beta = 0.05, 0.8
    x, _ = train(bf.DistributedQuasiGlobalMomentumOptimizer, 3, lr, momentum=beta)
    y, _ = train(bf.DistributedAdaptThenCombineOptimizer, 3, lr, momentum=beta)
    assert (x - y).abs().max() > 1e-6


def case_periodic_global_average_matches_reference():
    lr = 0.05
    W = mixing(bf.load_topology())
    for wrapper, then_combine in [(bf.DistributedAdaptWithCombineOptimizer, False),
                                  (bf.DistributedAdaptThenCombineOptimizer, True)]:
        x, opt = train(lambda o, m: wrapper(o, m, global_average_period=3), 5, lr)
        close_to(x, ref_periodic(W, 5, lr, 3, then_combine)[bf.rank()])
        assert opt.global_average_period == 3


def case_periodic_global_average_every_step_agrees_everywhere():
    """ATC with global_average_period=1 is exact averaging: every rank holds the same model."""
    x, _ = train(lambda o, m: bf.DistributedAdaptThenCombineOptimizer(
        o, m, global_average_period=1), 3, 0.05)
    everyone = bf.allgather(x, name="pga.everyone")
    assert torch.allclose(everyone, everyone[:1].expand_as(everyone), atol=1e-14, rtol=0)


def one_peer_shift(k):
    return 1 if k % 2 == 0 else 2


def one_peer_matrix(k):
    """Step k's one-peer pattern at 4 ranks: keep half, send half to rank + shift."""
    W = 0.5 * torch.eye(4, dtype=torch.float64)
    for i in range(4):
        W[i, (i - one_peer_shift(k)) % 4] = 0.5
    return W


@sizes(4)
def case_dynamic_one_peer_patterns_match_reference():
    r, lr = bf.rank(), 0.05

    def pull(opt, k):            # gradient tracking, quasi-global momentum
        shift = one_peer_shift(k)
        opt.dst_weights = [(r + shift) % 4]
        opt.src_weights = {(r - shift) % 4: 0.5}
        opt.self_weight = 0.5

    def push(opt, k):            # push-DIGing: the sender scales, receivers add
        shift = one_peer_shift(k)
        opt.dst_weights = {(r + shift) % 4: 0.5}
        opt.src_weights = [(r - shift) % 4]
        opt.self_weight = None

    x, _ = train(bf.DistributedGradientTrackingOptimizer, 4, lr, before_step=pull)
    close_to(x, ref_gradient_tracking(one_peer_matrix, 4, lr)[r])
    x, _ = train(bf.DistributedPushDIGingOptimizer, 4, lr, before_step=push)
    close_to(x, ref_push_diging(one_peer_matrix, 4, lr)[r])
    x, _ = train(bf.DistributedQuasiGlobalMomentumOptimizer, 4, lr, momentum=0.8,
                 before_step=pull)
    close_to(x, ref_quasi_global_momentum(one_peer_matrix, 4, lr, 0.8)[r])


def case_state_dict_resumes_the_same_trajectory():
    lr = 0.05
    for make in (bf.DistributedGradientTrackingOptimizer, bf.DistributedPushDIGingOptimizer):
        straight, _ = train(make, 5, lr)
        x3, opt = train(make, 3, lr)
        saved = opt.state_dict()
        model = torch.nn.Linear(D, 1, bias=False).double()
        with torch.no_grad():
            model.weight.copy_(x3)
        resumed = make(torch.optim.SGD(model.parameters(), lr=lr), model)
        resumed.load_state_dict(saved)
        A, b = data(bf.rank())
        for _ in range(2):
            loss = 0.5 * ((model(A) - b) ** 2).mean()
            resumed.zero_grad()
            loss.backward()
            resumed.step()
        resumed.remove_hooks()
        close_to(model.weight.detach(), straight, atol=1e-12)


def case_closure_steps_match_manual_steps():
    """``step(closure)`` (closure does forward and backward) follows the same trajectory."""
    bf.set_topology(bf.RingGraph(bf.size()))
    A, b = data(bf.rank())
    for make in METHODS[:3]:
        manual, _ = train(make, 3, 0.05)
        model = torch.nn.Linear(D, 1, bias=False).double()
        with torch.no_grad():
            model.weight.copy_(start(bf.rank()))
        opt = make(torch.optim.SGD(model.parameters(), lr=0.05), model)

        def closure():
            opt.zero_grad()
            loss = 0.5 * ((model(A) - b) ** 2).mean()
            loss.backward()
            return loss
        for _ in range(3):
            assert opt.step(closure) is not None
        opt.remove_hooks()
        close_to(model.weight.detach(), manual, atol=1e-12)


# -- convergence to the exact minimizer, 4 ranks -------------------------------------------------
# Same step size 0.25 / L for every method and 300 full-gradient steps.

STEPS, SCALE = 300, 0.25


@sizes(4)
@timeout(120)
def case_awc_with_the_same_step_stays_biased():
    bf.set_topology(bf.RingGraph(4))
    x, _ = train(lambda o, m: bf.DistributedAdaptWithCombineOptimizer(o, m), STEPS,
                 SCALE / smoothness(4))
    assert relative_error(x, 4) > 1e-4


@sizes(4)
@timeout(120)
def case_gradient_tracking_reaches_the_minimizer():
    bf.set_topology(bf.RingGraph(4))
    x, _ = train(bf.DistributedGradientTrackingOptimizer, STEPS, SCALE / smoothness(4))
    assert relative_error(x, 4) < 1e-8


@sizes(4)
@timeout(120)
def case_exact_diffusion_reaches_the_minimizer():
    bf.set_topology(bf.RingGraph(4))
    x, _ = train(bf.DistributedExactDiffusionOptimizer, STEPS, SCALE / smoothness(4))
    assert relative_error(x, 4) < 1e-8


@sizes(4)
@timeout(120)
def case_push_diging_reaches_the_minimizer():
    bf.set_topology(bf.RingGraph(4))
    x, _ = train(bf.DistributedPushDIGingOptimizer, STEPS, SCALE / smoothness(4))
    assert relative_error(x, 4) < 1e-8


@sizes(4)
@timeout(120)
def case_push_diging_on_a_directed_irregular_graph():
    G = directed_irregular(4)
    assert not bf.IsRegularGraph(G) and nx.is_strongly_connected(G)
    assert any(not G.has_edge(j, i) for i, j in G.edges() if i != j)       # directed
    bf.set_topology(G)
    lr = SCALE / smoothness(4)
    x, _ = train(bf.DistributedPushDIGingOptimizer, STEPS, lr)
    assert relative_error(x, 4) < 1e-8
    y, _ = train(lambda o, m: bf.DistributedAdaptWithCombineOptimizer(o, m), STEPS, lr)
    assert relative_error(y, 4) > 1e-4      # row-stochastic averaging: biased here


# -- bad input ----------------------------------------------------------------------------------

def make_model():
    return torch.nn.Linear(D, 1, bias=False).double()


METHODS = [bf.DistributedGradientTrackingOptimizer, bf.DistributedExactDiffusionOptimizer,
           bf.DistributedPushDIGingOptimizer, bf.DistributedQuasiGlobalMomentumOptimizer]


def case_base_optimizer_must_be_sgd():
    for method in METHODS:
        model = make_model()
        expect_error(TypeError, "must be a torch.optim.SGD", method,
                     torch.optim.Adam(model.parameters()), model)


def case_unsupported_sgd_settings():
    for method in METHODS[:3]:
        model = make_model()
        expect_error(ValueError, "momentum=0", method,
                     torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), model)
    model = make_model()
    expect_error(ValueError, "momentum in (0, 1)", bf.DistributedQuasiGlobalMomentumOptimizer,
                 torch.optim.SGD(model.parameters(), lr=0.1), model)
    expect_error(ValueError, "nesterov", bf.DistributedQuasiGlobalMomentumOptimizer,
                 torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True), model)
    expect_error(ValueError, "dampening", bf.DistributedQuasiGlobalMomentumOptimizer,
                 torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, dampening=0.5), model)


def case_bad_global_average_period():
    for wrapper in (bf.DistributedAdaptWithCombineOptimizer,
                    bf.DistributedAdaptThenCombineOptimizer):
        for bad in (0, -2, 1.5, True, "3"):
            model = make_model()
            expect_error(ValueError, "global_average_period", wrapper,
                         torch.optim.SGD(model.parameters(), lr=0.1), model,
                         global_average_period=bad)


def one_step(opt, model):
    A, b = data(bf.rank())
    loss = 0.5 * ((model(A) - b) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


@sizes(4)
def case_exact_methods_refuse_weights_that_are_not_doubly_stochastic():
    bf.set_topology(bf.StarGraph(4))
    for method in METHODS[:2]:
        model = make_model()
        opt = method(torch.optim.SGD(model.parameters(), lr=0.1), model)
        expect_error(ValueError, "doubly stochastic", one_step, opt, model)
        opt.remove_hooks()


@sizes(4)
def case_exact_diffusion_refuses_directed_and_dynamic_topologies():
    model = make_model()                        # default: ExponentialGraph(4), directed
    opt = bf.DistributedExactDiffusionOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model)
    expect_error(ValueError, "symmetric", one_step, opt, model)
    opt.remove_hooks()
    bf.set_topology(bf.RingGraph(4))
    model = make_model()
    opt = bf.DistributedExactDiffusionOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model)
    r = bf.rank()
    opt.dst_weights = {(r + 1) % 4: 1.0}
    opt.src_weights = {(r - 1) % 4: 0.5}
    opt.self_weight = 0.5
    expect_error(ValueError, "static topologies only", one_step, opt, model)
    opt.remove_hooks()


@sizes(2, 4)
def case_push_diging_refuses_weights_that_are_not_column_stochastic():
    n, r = bf.size(), bf.rank()
    model = make_model()
    opt = bf.DistributedPushDIGingOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model)
    opt.dst_weights = {(r + 1) % n: 0.7}
    opt.src_weights = [(r - 1) % n]
    opt.self_weight = 0.7
    expect_error(ValueError, "column", one_step, opt, model)
    opt.remove_hooks()


@sizes(1)
def case_one_rank_is_gradient_descent():
    lr = 0.05
    plain, _ = train(lambda o, m: o, 4, lr)
    for method in METHODS[:3]:
        x, _ = train(method, 4, lr)
        close_to(x, plain, atol=1e-12)
