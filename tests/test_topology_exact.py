"""Finite-time exact averaging schedules: matrix properties for every size 2..64 and k = 1..3, and
real ``neighbor_allreduce`` rounds at 3, 4, 5 and 6 ranks (tests/cases/schedule_cases.py)."""

import math

import numpy as np
import pytest

from harness import case_params, case_result
from bluefog.topology import (GetDynamicOnePeerSendRecvRanks, ExponentialGraph, ScheduleRound,
                              check_schedule, exact_average_rounds,
                              exact_average_schedule, one_peer_exponential_schedule, schedule_rounds)

CASES = "schedule_cases.py"


def _ceil_log(n, base):
    p = 0
    while base ** p < n:
        p += 1
    return p


@pytest.mark.parametrize("k", [1, 2, 3])
def test_every_size_averages_exactly_within_k_peers_and_the_length_bound(k):
    for n in range(2, 65):
        ws = exact_average_schedule(n, k=k)
        assert len(ws) <= 2 * _ceil_log(n, k + 1) + 2, (n, k, len(ws))
        product = np.linalg.multi_dot(ws) if len(ws) > 1 else ws[0]
        assert np.allclose(product, np.full((n, n), 1.0 / n), rtol=0, atol=1e-12), (n, k)
        for w in ws:
            assert w.shape == (n, n) and w.dtype == np.float64
            assert (w >= 0).all()
            off = (w - np.diag(np.diag(w))) != 0
            assert off.sum(axis=0).max() <= k and off.sum(axis=1).max() <= k, (n, k)
            assert np.allclose(w.sum(axis=0), 1) and np.allclose(w.sum(axis=1), 1)
            assert np.array_equal(w, w.T)
        # no shorter prefix already averages (the rounds are all needed)
        if len(ws) > 1:
            head = np.linalg.multi_dot(ws[:-1]) if len(ws) > 2 else ws[0]
            assert not np.allclose(head, 1.0 / n, atol=1e-9), (n, k)


@pytest.mark.parametrize("n,k,rounds", [(2, 1, 1), (4, 1, 2), (8, 1, 3), (64, 1, 6), (9, 2, 2),
                                        (27, 2, 3), (16, 3, 2), (64, 3, 3), (6, 2, 2), (12, 3, 2),
                                        (5, 4, 1), (3, 1, 3), (6, 1, 4), (12, 1, 5),
                                        (48, 1, 7), (24, 2, 4)])
def test_schedule_lengths_of_some_sizes(n, k, rounds):
    assert len(exact_average_schedule(n, k=k)) == rounds


def test_three_ranks_one_peer_by_hand():
    w1, w2, w3 = exact_average_schedule(3, k=1)
    half = np.array([[.5, .5, 0], [.5, .5, 0], [0, 0, 1]])
    assert np.allclose(w1, half) and np.allclose(w3, half)
    assert np.allclose(w2, [[1 / 3, 0, 2 / 3], [0, 1, 0], [2 / 3, 0, 1 / 3]])


def test_larger_sizes_still_meet_the_bound():
    for n, k in [(100, 1), (127, 1), (129, 2), (200, 3), (1000, 1)]:
        report = check_schedule(exact_average_schedule(n, k=k), k=k) if n <= 200 else None
        if report:
            assert report["exact"] and report["within_k"] and report["doubly_stochastic"]
        rounds = exact_average_rounds(n, n - 1, k=k)
        assert len(rounds) <= 2 * _ceil_log(n, k + 1) + 2


def test_rank_rounds_agree_with_the_matrices_and_with_each_other():
    for n in range(1, 20):
        for k in (1, 2, 3):
            ws = exact_average_schedule(n, k=k)
            per_rank = [exact_average_rounds(n, r, k=k) for r in range(n)]
            for r in range(n):
                assert per_rank[r] == schedule_rounds(ws, r)
                for t, rnd in enumerate(per_rank[r]):
                    assert isinstance(rnd, ScheduleRound)
                    assert abs(rnd.self_weight + sum(rnd.src_weights.values()) - 1) < 1e-15
                    assert sorted(rnd.src_weights) == rnd.recv_ranks
                    for dst in rnd.send_ranks:               # whom I send to hears from me
                        assert r in per_rank[dst][t].recv_ranks


def test_size_one_is_a_single_identity_round():
    assert [w.tolist() for w in exact_average_schedule(1, k=3)] == [[[1.0]]]
    assert exact_average_rounds(1, 0) == [ScheduleRound([], [], 1.0, {})]


def test_one_peer_exponential_schedule_matches_the_dynamic_generator():
    for n in (2, 4, 8, 16, 32):
        ws = one_peer_exponential_schedule(n)
        assert len(ws) == int(math.log2(n))
        assert check_schedule(ws, k=1)["exact"] and check_schedule(ws, k=1)["doubly_stochastic"]
    for n in (3, 6, 12):
        ws = one_peer_exponential_schedule(n)
        assert len(ws) == _ceil_log(n, 2) and not check_schedule(ws)["exact"]
    for n in (5, 8):
        ws = one_peer_exponential_schedule(n)
        for r in range(n):
            gen = GetDynamicOnePeerSendRecvRanks(ExponentialGraph(n), r)
            for rnd in schedule_rounds(ws, r):
                send, recv = next(gen)
                assert (rnd.send_ranks, rnd.recv_ranks) == (send, recv)
                assert rnd.self_weight == 0.5 and rnd.src_weights == {recv[0]: 0.5}


@pytest.mark.parametrize("call,fragment", [
    (lambda: exact_average_schedule(0), "size must be an integer >= 1"),
    (lambda: exact_average_schedule(4.0), "size must be an integer >= 1"),
    (lambda: exact_average_schedule(4, k=0), "k must be an integer >= 1"),
    (lambda: exact_average_rounds(4, 4), "rank must be an integer in [0, size)"),
    (lambda: one_peer_exponential_schedule(True), "size must be an integer >= 1"),
    (lambda: schedule_rounds([np.eye(3), np.eye(2)], 0), "schedule[1] must be a square matrix"),
    (lambda: schedule_rounds([np.eye(3)], -1), "rank must be an integer in [0, size)"),
])
def test_bad_arguments_raise_value_error_naming_them(call, fragment):
    with pytest.raises(ValueError) as info:
        call()
    assert fragment in str(info.value)


def test_schedule_must_be_a_list_of_matrices():
    with pytest.raises(TypeError, match="schedule must be a non-empty list"):
        schedule_rounds(np.eye(3), 0)
    with pytest.raises(TypeError, match="schedule must be a non-empty list"):
        check_schedule([])


@pytest.mark.parametrize("case,size", case_params(CASES, sizes=(3, 4, 5, 6)))
def test_schedule_cases(case, size):
    case_result(CASES, case, size)


def test_length_bound_beyond_64():
    """The bound for larger sizes (the per-rank form has the same length as the matrix form)."""
    for k in (1, 2, 3, 4):
        for n in list(range(65, 1100, 13)) + [(k + 1) ** 4 + 1, 2 * (k + 1) ** 4 - 1]:
            assert len(exact_average_rounds(n, n // 2, k=k)) <= 2 * _ceil_log(n, k + 1) + 2, (n, k)
