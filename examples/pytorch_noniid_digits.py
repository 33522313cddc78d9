"""Decentralized training on non-IID data: at 8 ranks each rank sees about two of the ten digits.

The scikit-learn 8x8 digits (1797 images, shipped with scikit-learn; nothing is downloaded) are
split 80/20 into train and test; the training set is sorted by label and cut into one contiguous
block per rank, so at 8 ranks every rank holds two or three classes.  Every rank trains the same
small MLP from the same start on a ring, and the script compares, at the same learning rate and
momentum:

* ``awc-momentum``: decentralized momentum SGD (adapt-with-combine around SGD with momentum);
* ``atc-momentum``: the same with adapt-then-combine (QG-DSGDm's communication pattern);
* ``quasi-global``: quasi-global momentum (QG-DSGDm, Lin et al. 2021);
* ``gossip-pga``: AWC momentum SGD plus an exact global average every ``--period`` steps
  (Gossip-PGA, Chen et al. 2021);
* ``allreduce``: momentum SGD on gradients averaged over all ranks every step (Horovod style,
  ``DistributedGradientAllreduceOptimizer``): the centralized reference.

It prints, per method and seed, the test accuracy of each rank's own model (mean and worst rank)
and of the average of the ranks' models, and then the means over seeds.

Run::

    bfrun -np 8 python examples/pytorch_noniid_digits.py
    bfrun -np 8 python examples/pytorch_noniid_digits.py --seeds 0 1 2 --steps 600
"""

import argparse
import statistics
import sys

import torch
import torch.nn.functional as F

import bluefog.torch as bf

METHODS = ("awc-momentum", "atc-momentum", "quasi-global", "gossip-pga", "allreduce")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--period", type=int, default=10,
                        help="Gossip-PGA's global averaging period")
    parser.add_argument("--hidden", type=int, default=32)
    return parser.parse_args(argv)


def load_data():
    """(train_x, train_y, test_x, test_y) as float32 / int64 tensors; the same on every rank."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(1234))
    cut = int(0.8 * len(y))
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


def my_shard(train_x, train_y):
    """This rank's contiguous block of the label-sorted training set."""
    order = torch.argsort(train_y * len(train_y) + torch.arange(len(train_y)))
    blocks = torch.tensor_split(order, bf.size())
    mine = blocks[bf.rank()]
    return train_x[mine], train_y[mine]


def make_model(seed, hidden):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, 10))


def make_optimizer(method, model, args):
    sgd = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    if method == "awc-momentum":
        return bf.DistributedAdaptWithCombineOptimizer(sgd, model)
    if method == "atc-momentum":
        return bf.DistributedAdaptThenCombineOptimizer(sgd, model)
    if method == "quasi-global":
        return bf.DistributedQuasiGlobalMomentumOptimizer(sgd, model)
    if method == "gossip-pga":
        return bf.DistributedAdaptWithCombineOptimizer(sgd, model,
                                                       global_average_period=args.period)
    return bf.DistributedGradientAllreduceOptimizer(sgd, model)


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(dim=1) == y).double().mean().item()


def run(method, seed, data, args):
    """Train one method from one seed; (mean rank accuracy, worst rank accuracy, averaged model)."""
    train_x, train_y, test_x, test_y = data
    x, y = my_shard(train_x, train_y)
    model = make_model(seed, args.hidden)
    opt = make_optimizer(method, model, args)
    batches = torch.Generator().manual_seed(seed * 1000 + bf.rank())
    for _ in range(args.steps):
        index = torch.randint(len(y), (args.batch_size,), generator=batches)
        loss = F.cross_entropy(model(x[index]), y[index])
        opt.zero_grad()
        loss.backward()
        opt.step()
    opt.remove_hooks()
    mine = torch.tensor([accuracy(model, test_x, test_y)], dtype=torch.float64)
    everyone = bf.allgather(mine, name=f"accuracy.{method}.{seed}")
    bf.allreduce_parameters(model.state_dict())
    return everyone.mean().item(), everyone.min().item(), accuracy(model, test_x, test_y)


def main(argv=None):
    args = parse_args(argv)
    bf.init()
    bf.set_topology(bf.RingGraph(bf.size()))
    data = load_data()
    classes = torch.unique(my_shard(data[0], data[1])[1]).numel()
    counts = bf.allgather(torch.tensor([classes]), name="classes").tolist()
    if bf.rank() == 0:
        print(f"{bf.size()} ranks on a ring; classes per rank: {counts}; {args.steps} steps of "
              f"batch {args.batch_size}, lr {args.lr}, momentum {args.momentum}", flush=True)
    results = {}
    for seed in args.seeds:
        for method in args.methods:
            results.setdefault(method, []).append(run(method, seed, data, args))
            if bf.rank() == 0:
                mean, worst, averaged = results[method][-1]
                print(f"seed {seed} {method:13s} rank accuracy mean {mean:.4f} worst {worst:.4f}"
                      f" | averaged model {averaged:.4f}", flush=True)
    if bf.rank() == 0:
        print(f"\nmeans over {len(args.seeds)} seed(s) (min-max over seeds):")
        print("| method | test accuracy, mean over ranks | worst rank | averaged model |")
        print("|---|---|---|---|")
        for method, rows in results.items():
            cells = []
            for column in zip(*rows):
                cells.append(f"{statistics.mean(column):.3f} ({min(column):.3f}-{max(column):.3f})")
            print(f"| {method} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
