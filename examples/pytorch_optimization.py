"""Decentralized optimization: every rank holds part of a least-squares or logistic-regression
problem, and the ranks solve the global problem by talking only to their neighbors.

    minimize_x  (1/n) * sum_i f_i(x)      f_i: rank i's loss on its own data

Four algorithms, each printing the relative distance ``max_i ||x_i - x*|| / ||x*||`` to the global
optimum ``x*`` (which rank 0 also computes centrally, for reference):

* diffusion (adapt then combine): converges to a neighborhood of ``x*`` whose size grows with the
  step size, because the local gradients disagree at ``x*``;
* exact diffusion: diffusion with a correction term and the mixing matrix ``(I + W) / 2``;
  converges to ``x*`` exactly;
* gradient tracking: mixes the iterates and a running estimate of the average gradient, with two
  nonblocking neighbor averages in flight at once; exact;
* push-DIGing: gradient tracking over one-sided windows with column-stochastic (push-sum) weights,
  so it also works on directed graphs; exact.

Run::

    bfrun -np 4 python examples/pytorch_optimization.py
    bfrun -np 4 python examples/pytorch_optimization.py --problem logistic --method exact_diffusion

The data is generated (``torch.randn`` with a per-rank seed); nothing is downloaded.
"""

import argparse
import sys

import torch

import bluefog.torch as bf
from bluefog.common import topology_util

METHODS = ("diffusion", "exact_diffusion", "gradient_tracking", "push_diging")
TOPOLOGIES = {
    "expo2": lambda n: topology_util.ExponentialGraph(n),
    "ring": lambda n: topology_util.RingGraph(n),
    "mesh": lambda n: topology_util.MeshGrid2DGraph(n),
    "star": lambda n: topology_util.StarGraph(n),
    "full": lambda n: topology_util.FullyConnectedGraph(n),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problem", default="least_squares", choices=("least_squares", "logistic"))
    parser.add_argument("--method", default="all", choices=("all",) + METHODS)
    parser.add_argument("--virtual-topology", default="expo2", choices=sorted(TOPOLOGIES))
    parser.add_argument("--samples", type=int, default=200, help="data points per rank")
    parser.add_argument("--dim", type=int, default=20)
    parser.add_argument("--max-iters", type=int, default=3000)
    parser.add_argument("--tolerance", type=float, default=1e-7,
                        help="exact methods stop once the relative error is below this")
    parser.add_argument("--step-scale", type=float, default=0.5,
                        help="step size as a fraction of 1/L (L: the largest local smoothness)")
    parser.add_argument("--rho", type=float, default=0.1, help="L2 weight of the logistic loss")
    parser.add_argument("--print-every", type=int, default=200)
    parser.add_argument("--seed", type=int, default=123)
    return parser.parse_args(argv)


# -- the problem --------------------------------------------------------------------------------

class Problem:
    """Rank-local data ``(A, b)`` and the gradient of the local loss, in float64."""

    def __init__(self, args):
        g = torch.Generator().manual_seed(args.seed + bf.rank())
        truth = torch.randn(args.dim, 1, generator=torch.Generator().manual_seed(args.seed),
                            dtype=torch.float64)
        self.A = torch.randn(args.samples, args.dim, generator=g, dtype=torch.float64)
        self.A += 0.3 * bf.rank()                  # ranks see differently distributed data
        self.kind, self.rho = args.problem, args.rho
        if self.kind == "least_squares":
            self.b = self.A @ truth + 0.5 * torch.randn(args.samples, 1, generator=g,
                                                        dtype=torch.float64)
            smooth = torch.linalg.eigvalsh(self.A.T @ self.A / args.samples).max().item()
        else:
            logits = self.A @ truth
            self.b = torch.where(torch.rand(args.samples, 1, generator=g, dtype=torch.float64)
                                 < torch.sigmoid(logits), 1.0, -1.0).double()
            smooth = torch.linalg.eigvalsh(self.A.T @ self.A / args.samples).max().item() / 4
            smooth += self.rho
        # every rank uses the same step size: 1 / (largest local smoothness)
        self.smoothness = bf.allgather(torch.tensor([smooth]), name="smoothness").max().item()

    def grad(self, x, A=None, b=None):
        A = self.A if A is None else A
        b = self.b if b is None else b
        m = A.shape[0]
        if self.kind == "least_squares":
            return A.T @ (A @ x - b) / m
        return -A.T @ (b * torch.sigmoid(-b * (A @ x))) / m + self.rho * x

    def global_optimum(self):
        """x* from everyone's data (gathered; solved centrally on every rank)."""
        A = bf.allgather(self.A, name="all_A")
        b = bf.allgather(self.b, name="all_b")
        if self.kind == "least_squares":
            return torch.linalg.solve(A.T @ A, A.T @ b)
        x = torch.zeros(A.shape[1], 1, dtype=torch.float64)
        for _ in range(50):                                   # Newton's method
            s = torch.sigmoid(-b * (A @ x))
            grad = -A.T @ (b * s) / A.shape[0] + self.rho * x
            weights = (s * (1 - s)).reshape(-1)
            hessian = (A.T * weights) @ A / A.shape[0] + self.rho * torch.eye(A.shape[1],
                                                                             dtype=torch.float64)
            x = x - torch.linalg.solve(hessian, grad)
            if grad.norm() < 1e-14:
                break
        return x


def relative_error(x, optimum):
    mine = torch.tensor([(x - optimum).norm().item() / optimum.norm().item()], dtype=torch.float64)
    return bf.allgather(mine, name="relative_error").max().item()


def report(name, it, error, args):
    if bf.rank() == 0 and (it % args.print_every == 0):
        print(f"  {name:18s} iteration {it:5d}: relative error {error:.3e}", flush=True)


# -- the algorithms -------------------------------------------------------------------------------

def mixing_weights():
    """(self weight, {in-neighbor: weight}) of the current topology."""
    return topology_util.GetRecvWeights(bf.load_topology(), bf.rank())


def diffusion(problem, optimum, args):
    alpha = args.step_scale / problem.smoothness
    self_w, src = mixing_weights()
    x = torch.zeros(args.dim, 1, dtype=torch.float64)
    previous = float("inf")
    for it in range(1, args.max_iters + 1):
        psi = x - alpha * problem.grad(x)
        x = bf.neighbor_allreduce(psi, self_weight=self_w, src_weights=src, name="x")
        if it % args.print_every == 0 or it % 50 == 0:
            error = relative_error(x, optimum)
            report("diffusion", it, error, args)
            if abs(previous - error) < 1e-3 * error:       # settled in its neighborhood
                break
            previous = error
    return x, it


def exact_diffusion(problem, optimum, args):
    alpha = args.step_scale / problem.smoothness
    self_w, src = mixing_weights()
    self_w = (self_w + 1.0) / 2.0                         # A_bar = (I + W) / 2
    src = {r: w / 2.0 for r, w in src.items()}
    x = torch.zeros(args.dim, 1, dtype=torch.float64)
    psi_prev = x.clone()
    for it in range(1, args.max_iters + 1):
        psi = x - alpha * problem.grad(x)
        phi = psi + x - psi_prev
        psi_prev = psi
        x = bf.neighbor_allreduce(phi, self_weight=self_w, src_weights=src, name="x")
        if it % args.print_every == 0 or it % 50 == 0:
            error = relative_error(x, optimum)
            report("exact diffusion", it, error, args)
            if error < args.tolerance:
                break
    return x, it


def gradient_tracking(problem, optimum, args):
    alpha = args.step_scale / problem.smoothness
    self_w, src = mixing_weights()
    x = torch.zeros(args.dim, 1, dtype=torch.float64)
    grad = problem.grad(x)
    y = grad.clone()                                       # tracks the average gradient
    for it in range(1, args.max_iters + 1):
        hx = bf.neighbor_allreduce_nonblocking(x, self_weight=self_w, src_weights=src, name="x")
        hy = bf.neighbor_allreduce_nonblocking(y, self_weight=self_w, src_weights=src, name="y")
        x = bf.synchronize(hx) - alpha * y
        new_grad = problem.grad(x)
        y = bf.synchronize(hy) + new_grad - grad
        grad = new_grad
        if it % args.print_every == 0 or it % 50 == 0:
            error = relative_error(x, optimum)
            report("gradient tracking", it, error, args)
            if error < args.tolerance:
                break
    return x, it


def push_diging(problem, optimum, args):
    """One window holds [u, y, v]: u / v is the iterate, y tracks the gradient, v the push-sum
    weight.  Each round keeps half of it and pushes 1/(2*outdeg) to every out-neighbor."""
    alpha = args.step_scale / problem.smoothness
    n = args.dim
    outs = bf.out_neighbor_ranks()
    x = torch.zeros(n, 1, dtype=torch.float64)
    grad = problem.grad(x)
    w = torch.cat([x.reshape(-1), grad.reshape(-1), torch.ones(1, dtype=torch.float64)])
    bf.win_create(w, name="w_buff", zero_init=True)
    dst = {o: 1.0 / (2 * len(outs)) for o in outs}
    for it in range(1, args.max_iters + 1):
        bf.barrier()
        w[:n].sub_(alpha * w[n:2 * n])                    # u <- u - alpha * y, in the window tensor
        bf.win_accumulate(w, name="w_buff", self_weight=0.5, dst_weights=dst, require_mutex=True)
        bf.barrier()
        w = bf.win_update_then_collect(name="w_buff")
        x = (w[:n] / w[-1]).reshape(n, 1)
        new_grad = problem.grad(x)
        w[n:2 * n].add_((new_grad - grad).reshape(-1))     # y <- C y + grad(x_new) - grad(x_old)
        grad = new_grad
        if it % args.print_every == 0 or it % 50 == 0:
            error = relative_error(x, optimum)
            report("push-DIGing", it, error, args)
            if error < args.tolerance:
                break
    bf.barrier()
    bf.win_free("w_buff")
    return x, it


ALGORITHMS = {"diffusion": diffusion, "exact_diffusion": exact_diffusion,
              "gradient_tracking": gradient_tracking, "push_diging": push_diging}
EXACT = {"exact_diffusion", "gradient_tracking", "push_diging"}


def main(argv=None):
    args = parse_args(argv)
    bf.init()
    bf.set_topology(TOPOLOGIES[args.virtual_topology](bf.size()))
    problem = Problem(args)
    optimum = problem.global_optimum()
    methods = METHODS if args.method == "all" else (args.method,)
    if bf.rank() == 0:
        print(f"{bf.size()} ranks, {args.problem} with {args.samples} samples x {args.dim} features "
              f"per rank, {args.virtual_topology} topology, step {args.step_scale}/L", flush=True)
    results = {}
    for method in methods:
        if bf.rank() == 0:
            print(f"{method}:", flush=True)
        x, iterations = ALGORITHMS[method](problem, optimum, args)
        results[method] = (relative_error(x, optimum), iterations)
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
