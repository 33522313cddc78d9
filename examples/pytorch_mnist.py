"""Handwritten-digit classification with a decentralized optimizer (the MNIST example, offline).

The data is scikit-learn's bundled ``digits`` set (1797 8x8 images, shipped with the package, so
nothing is downloaded): a fixed 80/20 train/test split, the training part sharded across ranks.
Every rank trains a small MLP on its shard; the chosen distributed optimizer keeps the models close.

Run::

    bfrun -np 4 python examples/pytorch_mnist.py --dist-optimizer neighbor_allreduce
    bfrun -np 4 python examples/pytorch_mnist.py --dist-optimizer neighbor_allreduce --atc-style
    bfrun -np 4 python examples/pytorch_mnist.py --dist-optimizer win_put --dynamic-topology
    bfrun -np 4 python examples/pytorch_mnist.py --dist-optimizer hierarchical_neighbor_allreduce \\
        --ranks-per-machine 2          # on one host: pretend every 2 ranks are a machine

Needs scikit-learn (``pip install scikit-learn`` or ``pip install -e '.[examples]'`` in a checkout).
"""

import argparse
import os
import sys

import torch
import torch.nn.functional as F

import bluefog.torch as bf

COLLECTIVE = {"allreduce": bf.CommunicationType.allreduce,
              "neighbor_allreduce": bf.CommunicationType.neighbor_allreduce,
              "hierarchical_neighbor_allreduce": bf.CommunicationType.hierarchical_neighbor_allreduce,
              "empty": bf.CommunicationType.empty}
OPTIMIZERS = ("allreduce", "neighbor_allreduce", "hierarchical_neighbor_allreduce",
              "gradient_allreduce", "win_put", "pull_get", "push_sum", "empty")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dist-optimizer", default="neighbor_allreduce", choices=OPTIMIZERS)
    parser.add_argument("--atc-style", action="store_true",
                        help="adapt-then-combine instead of adapt-with-combine (allreduce, "
                             "neighbor_allreduce, hierarchical_neighbor_allreduce, empty)")
    parser.add_argument("--dynamic-topology", action="store_true",
                        help="one-peer dynamic communication (neighbor, hierarchical, win_put)")
    parser.add_argument("--allreduce-every", type=int, default=0,
                        help="with --dynamic-topology: every N-th batch averages globally (0: never)")
    parser.add_argument("--ranks-per-machine", type=int, default=0,
                        help="treat every N consecutive ranks as one machine "
                             "(sets BLUEFOG_NODES_PER_MACHINE; 0 keeps the real layout)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=32, help="per rank")
    parser.add_argument("--lr", type=float, default=0.02, help="scaled by the number of ranks")
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--no-cuda", action="store_true",
                        help="train on the CPU even where CUDA is available (default: GPU "
                             "local_rank %% device_count when there is one)")
    return parser.parse_args(argv)


def load_digits_split(seed):
    """(x_train, y_train, x_test, y_test) as tensors; the same split on every rank."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        print("This example needs scikit-learn for its bundled digits data set: "
              "pip install scikit-learn  (or pip install -e '.[examples]' in a checkout)",
              file=sys.stderr)
        raise SystemExit(2)
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    cut = int(0.8 * len(y))
    mean, std = x[:cut].mean(0), x[:cut].std(0) + 0.1
    x = (x - mean) / std
    return x[:cut], y[:cut], x[cut:], y[cut:]


class MLP(torch.nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.fc1 = torch.nn.Linear(64, hidden)
        self.fc2 = torch.nn.Linear(hidden, hidden)
        self.fc3 = torch.nn.Linear(hidden, 10)

    def forward(self, x):
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def make_optimizer(args, model, base):
    kind = args.dist_optimizer
    if kind in COLLECTIVE:
        factory = (bf.DistributedAdaptThenCombineOptimizer if args.atc_style
                   else bf.DistributedAdaptWithCombineOptimizer)
        return factory(base, model=model, communication_type=COLLECTIVE[kind])
    if kind == "gradient_allreduce":
        return bf.DistributedGradientAllreduceOptimizer(base, model=model)
    if kind == "win_put":
        return bf.DistributedWinPutOptimizer(base, model=model)
    if kind == "pull_get":
        return bf.DistributedPullGetOptimizer(base, model=model)
    return bf.DistributedPushSumOptimizer(base, model=model)


def dynamic_schedule(args):
    """A function that sets the optimizer's weights for the next batch, or None (static)."""
    if not args.dynamic_topology or bf.size() == 1:
        return None
    kind = args.dist_optimizer
    if kind in ("neighbor_allreduce", "allreduce"):
        if bf.is_homogeneous() and bf.size() > bf.local_size() > 2:
            ranks = bf.GetInnerOuterExpo2DynamicSendRecvRanks(bf.size(), bf.local_size(), bf.rank())
        else:
            ranks = bf.GetDynamicOnePeerSendRecvRanks(bf.load_topology(), bf.rank())

        def neighbor(opt, batch_idx):
            send, recv = next(ranks)
            if args.allreduce_every and batch_idx % args.allreduce_every == 0:
                opt.communication_type = bf.CommunicationType.allreduce
                return
            opt.communication_type = COLLECTIVE[kind]
            opt.dst_weights = send
            opt.src_weights = {r: 1.0 / (len(recv) + 1) for r in recv}
            opt.self_weight = 1.0 / (len(recv) + 1)
            opt.enable_topo_check = False
        return neighbor
    if kind == "hierarchical_neighbor_allreduce":
        machines = bf.GetExp2DynamicSendRecvMachineRanks(bf.size(), bf.local_size(), bf.rank(),
                                                         bf.local_rank())

        def hierarchical(opt, batch_idx):
            send, recv = next(machines)
            opt.dst_machine_weights = send
            opt.src_machine_weights = {m: 1.0 / (len(recv) + 1) for m in recv}
            opt.self_weight = 1.0 / (len(recv) + 1)
            opt.enable_topo_check = False
        return hierarchical
    if kind == "win_put":
        outs = bf.out_neighbor_ranks()

        def one_peer_put(opt, batch_idx):
            opt.dst_weights = {outs[batch_idx % len(outs)]: 1.0}
        return one_peer_put
    return None


def evaluate(model, x, y):
    """(mean loss, accuracy %) of this rank's model on the whole test set, averaged over ranks."""
    model.eval()
    with torch.no_grad():
        out = model(x)
        loss = F.cross_entropy(out, y)
        accuracy = (out.argmax(1) == y).double().mean() * 100
    model.train()
    stats = torch.stack([loss.double(), accuracy])
    everyone = bf.allgather(stats.unsqueeze(0), name="evaluation")
    return everyone[:, 0].mean().item(), everyone[:, 1].mean().item(), everyone[:, 1].min().item()


def main(argv=None):
    args = parse_args(argv)
    if args.ranks_per_machine > 0:
        os.environ["BLUEFOG_NODES_PER_MACHINE"] = str(args.ranks_per_machine)
    bf.init()
    if args.dist_optimizer == "hierarchical_neighbor_allreduce":
        if bf.local_size() < 2 or bf.machine_size() < 2:
            if bf.rank() == 0:
                print("hierarchical_neighbor_allreduce needs several machines with several ranks "
                      "each; on one host pass --ranks-per-machine 2", file=sys.stderr)
            return 2
        bf.set_machine_topology(bf.ExponentialGraph(bf.machine_size()))
    torch.manual_seed(args.seed + bf.rank())
    device = torch.device("cpu")
    if not args.no_cuda and torch.cuda.is_available():
        device = torch.device("cuda", bf.local_rank() % torch.cuda.device_count())
    x_train, y_train, x_test, y_test = (t.to(device) for t in load_digits_split(args.seed))
    x_train, y_train = x_train[bf.rank()::bf.size()], y_train[bf.rank()::bf.size()]

    model = MLP(args.hidden).to(device)
    bf.broadcast_parameters(model.state_dict(), root_rank=0)
    base = torch.optim.SGD(model.parameters(), lr=args.lr * bf.size(), momentum=args.momentum)
    optimizer = make_optimizer(args, model, base)
    bf.broadcast_optimizer_state(optimizer, root_rank=0)
    schedule = dynamic_schedule(args)
    if bf.rank() == 0:
        style = "ATC" if args.atc_style else "AWC"
        print(f"{bf.size()} ranks, {args.dist_optimizer} ({style}"
              f"{', dynamic topology' if schedule else ''}), {len(y_train)} training images per "
              f"rank, {len(y_test)} test images, on {device}", flush=True)

    shuffle = torch.Generator().manual_seed(args.seed + 1000 * bf.rank())
    batches = (len(y_train) + args.batch_size - 1) // args.batch_size
    for epoch in range(1, args.epochs + 1):
        order = torch.randperm(len(y_train), generator=shuffle).to(device)
        total = 0.0
        for b in range(batches):
            if schedule is not None:
                schedule(optimizer, (epoch - 1) * batches + b)
            idx = order[b * args.batch_size:(b + 1) * args.batch_size]
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        test_loss, accuracy, worst = evaluate(model, x_test, y_test)
        if bf.rank() == 0:
            print(f"epoch {epoch:3d}: train loss {total / batches:.4f}  test loss {test_loss:.4f}  "
                  f"test accuracy {accuracy:.2f}%", flush=True)
    if hasattr(optimizer, "unregister_window"):
        optimizer.unregister_window()
    if bf.rank() == 0:
        print(f"Final: {args.dist_optimizer}{' atc' if args.atc_style else ''} test accuracy "
              f"{accuracy:.2f}% (mean over {bf.size()} ranks, worst {worst:.2f}%), test loss "
              f"{test_loss:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
