"""Heterogeneous ranks: does one slow rank hold the others back?  Six optimizers, with and without
a straggler, on an MLP trained on sklearn's digits.

Run (it launches the ranks itself, through bfrun)::

    python benchmarks/bench_straggler.py                  # 4 and 8 ranks, slowdowns 2 and 4
    python benchmarks/bench_straggler.py --np 4 --repeats 5

The last rank is the straggler: after each step it sleeps until k times the median fast step (this
optimizer's, measured without a straggler in the same run) has passed since the step began, so it
steps k times slower than the fast ranks did.
Synchronous optimizers (gradient allreduce, AWC, AWC with the one-peer dynamic schedule) need every
rank to take the same steps, so every rank takes ``--steps``; the asynchronous ones (win-put,
push-sum, pull-get) stop independently: the fast ranks after ``--steps``, the straggler after
``--steps / k`` (about the same wall time), and then they finish together
(``unregister_window()`` and a final average of the parameters).

Reported per optimizer and slowdown, each as a ratio to the same optimizer without a straggler
(median over ``--repeats`` runs, interleaved: none, k=2, k=4, none, ...):

* fast steps/s: steps of the fast ranks (median rank) over their loop time;
* straggler steps/s;
* time to target: when the average of every rank's latest snapshot of its model (taken every few
  of its own steps, timed from a common start) first reaches ``--target`` test accuracy;
* final accuracy of the averaged model after the fast ranks' ``--steps`` (at equal fast-rank
  steps), and its difference to the no-straggler run in points.

A meaningful run needs the machine to itself (``cpuslot bench python benchmarks/...``).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

OPTIMIZERS = ("gradient allreduce", "AWC", "AWC one-peer dynamic", "win-put", "push-sum",
              "pull-get")
ASYNC = ("win-put", "push-sum", "pull-get")


def parse():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--np", type=int, nargs="+", default=[4, 8], help="rank counts")
    parser.add_argument("--slowdowns", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--steps", type=int, default=300, help="steps of the fast ranks")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--target", type=float, default=0.9, help="test accuracy")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=OPTIMIZERS)
    parser.add_argument("--json", help=argparse.SUPPRESS)      # set on the ranks by the driver
    return parser.parse_args()


# ---------------------------------------------------------------------------------- rank side
def digits(rank, size):
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    test, train = order[:400], order[400:]
    return x[train[rank::size]], y[train[rank::size]], x[test], y[test]


def make_model(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


def build(bf, kind, model, lr):
    base = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    if kind == "gradient allreduce":
        return bf.DistributedGradientAllreduceOptimizer(base, model=model), None
    if kind in ("AWC", "AWC one-peer dynamic"):
        opt = bf.DistributedAdaptWithCombineOptimizer(base, model=model)
        if kind == "AWC":
            return opt, None
        from bluefog.common import topology_util
        schedule = topology_util.GetDynamicOnePeerSendRecvRanks(bf.load_topology(), bf.rank())

        def before_step():
            send, recv = next(schedule)
            opt.dst_weights = send
            opt.src_weights = {r: 1.0 / (len(recv) + 1) for r in recv}
            opt.self_weight = 1.0 / (len(recv) + 1)
            opt.enable_topo_check = False
        return opt, before_step
    make = {"win-put": bf.DistributedWinPutOptimizer, "push-sum": bf.DistributedPushSumOptimizer,
            "pull-get": bf.DistributedPullGetOptimizer}[kind]
    return make(base, model=model), None


def one_run(bf, comm, kind, slowdown, unit, seed, data, args):
    """Train once; returns this rank's record (times, snapshots, final flat parameters)."""
    rank, size = bf.rank(), bf.size()
    straggler = rank == size - 1 and slowdown > 1
    xs, ys = data
    model = make_model(seed)
    opt, before_step = build(bf, kind, model, args.lr)
    steps = args.steps
    if straggler and kind in ASYNC:
        steps = max(1, round(args.steps / slowdown))
    stride = max(1, round(5 * steps / args.steps))      # a snapshot every 5 fast-rank steps' time
    g = torch.Generator().manual_seed(1000 * seed + rank)
    batches = [torch.randint(len(xs), (args.batch,), generator=g) for _ in range(steps)]
    snaps = [(0.0, flat(model))]
    step_times = []
    comm.Barrier()
    t0 = time.perf_counter()
    for k in range(steps):
        start = time.perf_counter()
        if before_step is not None:
            before_step()
        idx = batches[k]
        loss = F.cross_entropy(model(xs[idx]), ys[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        step_times.append(time.perf_counter() - start)
        if straggler:
            time.sleep(max(0.0, slowdown * unit - step_times[-1]))
        if (k + 1) % stride == 0 or k + 1 == steps:
            snaps.append((time.perf_counter() - t0, flat(model)))
    loop = time.perf_counter() - t0
    if hasattr(opt, "unregister_window"):
        opt.unregister_window()
    opt.remove_hooks()
    bf.allreduce_parameters(model.state_dict())
    return {"rate": steps / loop, "step": statistics.median(step_times), "snaps": snaps,
            "final": flat(model), "straggler": straggler}


def evaluate(vector, xt, yt, model):
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(vector, model.parameters())
        return (model(xt).argmax(1) == yt).float().mean().item()


def summarize(records, xt, yt, target):
    """Rank 0: rates, time to target and final accuracy from every rank's record."""
    model = make_model(0)
    fast = [r for r in records if not r["straggler"]]
    slow = [r for r in records if r["straggler"]] or [records[-1]]
    # the averaged model over time: every rank's latest snapshot at each fast-rank snapshot time
    grid = sorted({t for r in records for t, _ in r["snaps"]})
    reached = None
    for t in grid:
        latest = [max((s for s in r["snaps"] if s[0] <= t), key=lambda s: s[0])[1]
                  for r in records]
        if evaluate(torch.stack(latest).mean(0), xt, yt, model) >= target:
            reached = t
            break
    return {"fast_rate": statistics.median(r["rate"] for r in fast),
            "slow_rate": statistics.median(r["rate"] for r in slow),
            "fast_step": statistics.median(r["step"] for r in fast),
            "to_target": reached,
            "final_acc": evaluate(records[0]["final"], xt, yt, model)}


def rank_main(args):
    import bluefog.torch as bf
    from mpi4py import MPI
    torch.set_num_threads(1)
    bf.init()
    comm = MPI.COMM_WORLD.Dup()
    rank, size = bf.rank(), bf.size()
    xs, ys, xt, yt = digits(rank, size)
    results = {}            # kind -> slowdown -> [summary per repeat]
    for kind in args.optimizers:
        step = None
        for rep in range(args.repeats):
            for slowdown in [1] + list(args.slowdowns):
                record = one_run(bf, comm, kind, slowdown, step or 0.0, rep, (xs, ys), args)
                records = comm.gather(record, root=0)
                summary = summarize(records, xt, yt, args.target) if rank == 0 else None
                summary = comm.bcast(summary, root=0)
                if slowdown == 1 and step is None:
                    step = summary["fast_step"]      # the sleep unit for this optimizer
                results.setdefault(kind, {}).setdefault(str(slowdown), []).append(summary)
        if rank == 0:
            print(f"{size} ranks: {kind} done", file=sys.stderr, flush=True)
    if rank == 0:
        with open(args.json, "w") as f:
            json.dump(results, f)


# ---------------------------------------------------------------------------------- driver side
def ratio_cell(values, base):
    ratios = [v / b for v, b in zip(values, base) if v is not None and b]
    if not ratios:
        return "n/a"
    if len(ratios) == 1:
        return f"{ratios[0]:.2f}"
    return f"{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f})"


def table(size, results, args):
    lines = [f"\n{size} ranks, last rank k times slower; {args.steps} fast-rank steps, batch "
             f"{args.batch}; ratio to the same optimizer without a straggler, median (min–max) "
             f"over {args.repeats} runs; target accuracy {args.target}\n",
             "| optimizer | k | fast steps/s | straggler steps/s | time to target | final accuracy "
             "| vs none (points) |",
             "|---|---|---|---|---|---|---|"]
    for kind, per in results.items():
        base = per["1"]
        none_acc = statistics.median(s["final_acc"] for s in base)
        rate = statistics.median(s["fast_rate"] for s in base)
        lines.append(f"| {kind} | 1 | 1 ({rate:.0f}/s) | 1 | 1 ({_seconds(base)}) | "
                     f"{none_acc:.3f} | 0 |")
        for k in map(str, args.slowdowns):
            runs = per[k]
            acc = statistics.median(s["final_acc"] for s in runs)
            lines.append(
                f"| {kind} | {k} | {ratio_cell([s['fast_rate'] for s in runs], [s['fast_rate'] for s in base])} "
                f"| {ratio_cell([s['slow_rate'] for s in runs], [s['slow_rate'] for s in base])} "
                f"| {ratio_cell([s['to_target'] for s in runs], [s['to_target'] for s in base])} "
                f"| {acc:.3f} | {100 * (acc - none_acc):+.1f} |")
    return "\n".join(lines)


def _seconds(base):
    times = [s["to_target"] for s in base if s["to_target"] is not None]
    return f"{statistics.median(times):.2f} s" if times else "not reached"


def main():
    args = parse()
    if args.json:
        rank_main(args)
        return
    here = os.path.abspath(__file__)
    forwarded = [a for a in sys.argv[1:]]
    for size in args.np:
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
            path = handle.name
        started = time.perf_counter()
        cmd = [sys.executable, "-m", "bluefog.run.run", "-np", str(size), sys.executable, here,
               "--json", path] + forwarded
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        with open(path) as f:
            results = json.load(f)
        os.remove(path)
        print(table(size, results, args), flush=True)
        print(f"({size} ranks: {time.perf_counter() - started:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
