"""Exact decentralized optimization with the optimizer wrappers: every rank holds different data,
and the ranks minimize the average loss by talking only to their neighbors.

    minimize_x  (1/n) * sum_i f_i(x)      f_i: rank i's least-squares (or logistic) loss

Each method wraps ``torch.optim.SGD`` around the same ``nn.Linear`` model, at the same step size,
with full local gradients; the script prints the relative distance ``max_i ||x_i - x*|| / ||x*||``
to the global minimizer ``x*`` (computed centrally from everyone's data, for reference):

* ``diffusion``: ``DistributedAdaptThenCombineOptimizer``, plain decentralized gradient descent;
  stops in a neighborhood of ``x*`` because the local gradients disagree there;
* ``exact_diffusion``: ``DistributedExactDiffusionOptimizer``, exact (symmetric topologies);
* ``gradient_tracking``: ``DistributedGradientTrackingOptimizer`` (DIGing), exact;
* ``push_diging``: ``DistributedPushDIGingOptimizer``, exact, run on a directed graph whose ranks
  have different in- and out-degrees (a one-way ring plus edges from rank 0 to everyone).

Run::

    bfrun -np 4 python examples/pytorch_optimization.py
    bfrun -np 4 python examples/pytorch_optimization.py --problem logistic \
        --method gradient_tracking

The data is generated (``torch.randn`` with a per-rank seed); nothing is downloaded.
"""

import argparse
import sys

import networkx as nx
import torch

import bluefog.torch as bf

METHODS = ("diffusion", "exact_diffusion", "gradient_tracking", "push_diging")
OPTIMIZERS = {"diffusion": bf.DistributedAdaptThenCombineOptimizer,
              "exact_diffusion": bf.DistributedExactDiffusionOptimizer,
              "gradient_tracking": bf.DistributedGradientTrackingOptimizer,
              "push_diging": bf.DistributedPushDIGingOptimizer}
EXACT = {"exact_diffusion", "gradient_tracking", "push_diging"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problem", default="least_squares", choices=("least_squares", "logistic"))
    parser.add_argument("--method", default="all", choices=("all",) + METHODS)
    parser.add_argument("--samples", type=int, default=50, help="data points per rank")
    parser.add_argument("--dim", type=int, default=10)
    parser.add_argument("--max-iters", type=int, default=2000)
    parser.add_argument("--tolerance", type=float, default=1e-7,
                        help="exact methods stop once the relative error is below this")
    parser.add_argument("--step-scale", type=float, default=0.25,
                        help="step size as a fraction of 1/L (L: the largest local smoothness)")
    parser.add_argument("--rho", type=float, default=0.1, help="L2 weight of the logistic loss")
    parser.add_argument("--print-every", type=int, default=200)
    parser.add_argument("--seed", type=int, default=123)
    return parser.parse_args(argv)


def directed_irregular(n):
    """A one-way ring i -> i+1 plus edges 0 -> j: strongly connected, degrees differ."""
    graph = nx.DiGraph()
    graph.add_nodes_from(range(n))
    graph.add_edges_from((i, (i + 1) % n) for i in range(n))
    graph.add_edges_from((0, j) for j in range(1, n))
    return graph


class Problem:
    """Rank-local data ``(A, b)`` in float64 and the local loss of a bias-free ``nn.Linear``."""

    def __init__(self, args):
        g = torch.Generator().manual_seed(args.seed + bf.rank())
        truth = torch.randn(args.dim, 1, generator=torch.Generator().manual_seed(args.seed),
                            dtype=torch.float64)
        self.A = torch.randn(args.samples, args.dim, generator=g, dtype=torch.float64)
        self.kind, self.rho = args.problem, args.rho
        local_truth = truth * (1 + 0.5 * bf.rank())      # ranks disagree on the answer
        if self.kind == "least_squares":
            self.b = self.A @ local_truth + 0.3 * torch.randn(args.samples, 1, generator=g,
                                                              dtype=torch.float64)
            smooth = torch.linalg.eigvalsh(self.A.T @ self.A / args.samples).max().item()
        else:
            chance = torch.sigmoid(self.A @ local_truth)
            self.b = torch.where(torch.rand(args.samples, 1, generator=g, dtype=torch.float64)
                                 < chance, 1.0, -1.0).double()
            smooth = torch.linalg.eigvalsh(self.A.T @ self.A / args.samples).max().item() / 4
            smooth += self.rho
        self.smoothness = bf.allgather(torch.tensor([smooth]), name="smoothness").max().item()

    def loss(self, model, A=None, b=None):
        A = self.A if A is None else A
        b = self.b if b is None else b
        out = model(A)
        if self.kind == "least_squares":
            return 0.5 * ((out - b) ** 2).mean()
        weight = next(model.parameters())
        return (torch.nn.functional.softplus(-b * out).mean()
                + 0.5 * self.rho * (weight ** 2).sum())

    def global_optimum(self):
        """x* from everyone's data (gathered; solved centrally on every rank)."""
        A = bf.allgather(self.A, name="all_A")
        b = bf.allgather(self.b, name="all_b")
        if self.kind == "least_squares":
            return torch.linalg.solve(A.T @ A, A.T @ b).reshape(1, -1)
        x = torch.zeros(A.shape[1], 1, dtype=torch.float64)
        for _ in range(50):                                   # Newton's method
            s = torch.sigmoid(-b * (A @ x))
            grad = -A.T @ (b * s) / A.shape[0] + self.rho * x
            hessian = ((A.T * (s * (1 - s)).reshape(-1)) @ A / A.shape[0]
                       + self.rho * torch.eye(A.shape[1], dtype=torch.float64))
            x = x - torch.linalg.solve(hessian, grad)
            if grad.norm() < 1e-14:
                break
        return x.reshape(1, -1)


def relative_error(x, optimum):
    mine = torch.tensor([(x - optimum).norm().item() / optimum.norm().item()], dtype=torch.float64)
    return bf.allgather(mine, name="relative_error").max().item()


def solve(method, problem, optimum, args):
    """Train with ``method``'s optimizer; (final relative error, iterations)."""
    bf.set_topology(directed_irregular(bf.size()) if method == "push_diging"
                    else bf.RingGraph(bf.size()))
    model = torch.nn.Linear(args.dim, 1, bias=False).double()
    with torch.no_grad():
        model.weight.zero_()
    opt = OPTIMIZERS[method](torch.optim.SGD(model.parameters(),
                                             lr=args.step_scale / problem.smoothness), model)
    previous, error = float("inf"), float("inf")
    for it in range(1, args.max_iters + 1):
        loss = problem.loss(model)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it % 50 == 0 or it % args.print_every == 0:
            error = relative_error(model.weight.detach(), optimum)
            if bf.rank() == 0 and it % args.print_every == 0:
                print(f"  {method:18s} iteration {it:5d}: relative error {error:.3e}", flush=True)
            if method in EXACT and error < args.tolerance:
                break
            if method not in EXACT and abs(previous - error) < 1e-3 * error:   # settled
                break
            previous = error
    opt.remove_hooks()
    return relative_error(model.weight.detach(), optimum), it


def main(argv=None):
    args = parse_args(argv)
    bf.init()
    problem = Problem(args)
    optimum = problem.global_optimum()
    methods = METHODS if args.method == "all" else (args.method,)
    if bf.rank() == 0:
        print(f"{bf.size()} ranks, {args.problem} with {args.samples} samples x {args.dim} "
              f"features per rank, step {args.step_scale}/L; ring (push-DIGing: directed, irregular)",
              flush=True)
    results = {method: solve(method, problem, optimum, args) for method in methods}
    ok = True
    if bf.rank() == 0:
        for method, (error, iterations) in results.items():
            goal = (f"exact (< {args.tolerance:g})" if method in EXACT
                    else "a neighborhood of the optimum")
            reached = error < args.tolerance if method in EXACT else error < 1e-1
            ok &= reached
            print(f"Final: {method:18s} relative error {error:.3e} after {iterations} iterations "
                  f"({'reached' if reached else 'did NOT reach'} {goal})", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
