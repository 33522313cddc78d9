"""Asynchronous decentralized training with ranks of different speeds: each rank stops on its own
(its own step count or time budget), then all finish together without losing the fast ranks' work.

    bfrun -np 4 python examples/pytorch_async_straggler.py --optimizer push_sum
    bfrun -np 4 python examples/pytorch_async_straggler.py --optimizer win_put --slowdown 4
    bfrun -np 4 python examples/pytorch_async_straggler.py --time-budget 2.0

The last rank plays a straggler (it sleeps after each step, ``--slowdown`` times the step time of
the others).  The window optimizers never wait for a neighbour inside ``step()``: the fast ranks
keep their pace.  The pattern:

1. train with ``DistributedPushSumOptimizer`` (or win-put / pull-get), each rank for as many
   steps as it has time for;
2. ``opt.unregister_window()``: collective, so it is where the ranks meet; push-sum first adds the
   weight still in flight, so every rank holds its final de-biased model;
3. a final consensus, ``bf.allreduce_parameters(model.state_dict())``: every rank then holds the
   average model.

Needs scikit-learn (the digits data set).
"""

import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import bluefog.torch as bf

OPTIMIZERS = {"push_sum": "DistributedPushSumOptimizer", "win_put": "DistributedWinPutOptimizer",
              "pull_get": "DistributedPullGetOptimizer"}


def digits(rank, size):
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    test, train = order[:400], order[400:]
    return x[train[rank::size]], y[train[rank::size]], x[test], y[test]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="push_sum")
    parser.add_argument("--steps", type=int, default=400, help="steps of a fast rank")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds of training per rank (instead of a step count)")
    parser.add_argument("--slowdown", type=float, default=4.0,
                        help="the last rank is this many times slower (1: no straggler)")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    if args.slowdown < 1:
        parser.error("--slowdown must be >= 1")

    bf.init()
    rank, size = bf.rank(), bf.size()
    x, y, x_test, y_test = digits(rank, size)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    bf.broadcast_parameters(model.state_dict(), root_rank=0)
    base = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    opt = getattr(bf, OPTIMIZERS[args.optimizer])(base, model=model)

    straggler = size > 1 and rank == size - 1 and args.slowdown > 1
    budget_steps = args.steps if not straggler else max(1, int(args.steps / args.slowdown))
    generator = torch.Generator().manual_seed(rank)
    steps, step_time = 0, None
    start = time.perf_counter()
    while True:
        if args.time_budget is not None:
            if time.perf_counter() - start >= args.time_budget:
                break
        elif steps >= budget_steps:
            break
        began = time.perf_counter()
        idx = torch.randint(len(x), (args.batch,), generator=generator)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()                       # never waits for a neighbour
        took = time.perf_counter() - began
        step_time = took if step_time is None else 0.9 * step_time + 0.1 * took
        if straggler:
            time.sleep((args.slowdown - 1) * step_time)
        steps += 1
    elapsed = time.perf_counter() - start

    opt.unregister_window()              # the ranks meet here (collective)
    with torch.no_grad():
        own = (model(x_test).argmax(1) == y_test).float().mean().item()
    bf.allreduce_parameters(model.state_dict())   # the final consensus
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    row = torch.tensor([[steps, steps / elapsed, own]], dtype=torch.float64)
    table = bf.allgather(row, name="report")     # one row per rank
    if rank == 0:
        for r, (n_steps, rate, acc) in enumerate(table.tolist()):
            role = "straggler" if size > 1 and r == size - 1 and args.slowdown > 1 else "fast"
            print(f"rank {r} ({role}): {int(n_steps)} steps, {rate:.0f} steps/s, own model "
                  f"accuracy {acc:.3f}")
        print(f"{args.optimizer}: averaged model accuracy {accuracy:.3f}")
    opt.remove_hooks()


if __name__ == "__main__":
    main()
