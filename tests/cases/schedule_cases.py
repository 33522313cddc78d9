"""Exact averaging schedules run through real ``neighbor_allreduce`` calls on every rank."""

import itertools

import torch

import bluefog.torch as bf
from bluefog.topology import exact_average_rounds, exact_average_schedule, schedule_rounds
from casetools import sizes


def _start(rank):
    """Distinct, irregular float64 values per rank (so a wrong weight cannot cancel out)."""
    return torch.tensor([rank ** 2 + 0.5, -3.0 * rank + 1.25, (rank + 1) ** 0.5], dtype=torch.float64)


def _mean(n):
    return torch.stack([_start(r) for r in range(n)]).mean(dim=0)


def _run(rounds, name):
    x = _start(bf.rank())
    for t, rnd in enumerate(rounds):
        x = bf.neighbor_allreduce(x, self_weight=rnd.self_weight, src_weights=rnd.src_weights,
                                  dst_weights=rnd.send_ranks, name=f"{name}.{t}")
    return x


@sizes(3, 4, 5, 6)
def case_exact_average_rounds_give_every_rank_the_mean():
    n, r = bf.size(), bf.rank()
    for k in (1, 2, 3):
        rounds = exact_average_rounds(n, r, k=k)
        x = _run(rounds, f"exact.k{k}")
        err = (x - _mean(n)).abs().max().item()
        assert err < 1e-12, (k, err, x, _mean(n))


@sizes(3, 4, 5, 6)
def case_one_round_short_is_not_the_mean_and_cycling_stays_there():
    """Control: stopping before the last round leaves some rank off the mean (the test above can
    fail); a second period started from the mean keeps it (doubly stochastic rounds)."""
    n, r = bf.size(), bf.rank()
    rounds = exact_average_rounds(n, r, k=1)
    x = _run(rounds[:-1], "short")
    errs = bf.allgather((x - _mean(n)).abs().max().reshape(1), name="short.err")
    assert errs.max().item() > 1e-3, errs
    x = _run(itertools.islice(itertools.cycle(rounds), 2 * len(rounds)), "twice")
    assert (x - _mean(n)).abs().max().item() < 1e-12


@sizes(4)
def case_matrix_rounds_match_rank_rounds():
    n, r = bf.size(), bf.rank()
    rounds = schedule_rounds(exact_average_schedule(n, k=1), r)
    assert rounds == exact_average_rounds(n, r, k=1)
    x = _run(rounds, "matrix")
    assert (x - _mean(n)).abs().max().item() < 1e-12
