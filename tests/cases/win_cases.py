"""Window ops (spec §4) on every rank: memory model, every name, §4.3 semantics, passive progress,
the mutex, asynchronous push-sum and the error paths.  Expected values come from plain arithmetic on
the known inputs of every rank (default topology: ExponentialGraph, as ``bf.init()`` sets it)."""

import time

import networkx as nx
import numpy as np
import torch

import bluefog.torch as bf
from bluefog.common import topology_util
from bluefog.ops.window import UnknownWindowError
from casetools import close, expect_error, sizes, timeout

FLOATS = [torch.float32, torch.float64]


def _start(topology=None, skip=True, weighted=False):
    bf.set_skip_negotiate_stage(skip)
    if topology is not None:
        assert bf.set_topology(topology, is_weighted=weighted)
    return bf.size(), bf.rank(), bf.in_neighbor_ranks(), bf.out_neighbor_ranks()


def _end():
    assert bf.win_free()
    bf.turn_off_win_ops_with_associated_p()
    bf.set_skip_negotiate_stage(False)


def _edgeless(n):
    graph = nx.DiGraph()
    graph.add_nodes_from(range(n))
    return graph


def _first_out(rank):
    return min(j for j in bf.load_topology().successors(rank) if j != rank)


def _full(value, dtype=torch.float32, shape=(3, 2)):
    return torch.full(shape, float(value), dtype=torch.float64).to(dtype)


# ---------------------------------------------------------------------- create / update / free
def case_create_update_returns_the_registered_tensor():
    n, r, ins, outs = _start()
    try:
        for dtype in FLOATS + [torch.int32, torch.int64]:
            name = f"w {dtype}"
            x = _full(r, dtype)
            ptr = x.data_ptr()
            assert bf.win_create(x, name) is True
            assert bf.win_create(x, name) is False                  # duplicate: refused, no raise
            assert bf.get_win_version(name) == {j: 0 for j in ins}
            assert bf.win_associated_p(name) == 1.0
            y = bf.win_update(name)                                  # buffers are copies of self
            assert y is x and x.data_ptr() == ptr and x.dtype == dtype
            assert torch.equal(x, _full(r, dtype))
        bf.barrier()
        assert bf.get_current_created_window_names() == sorted(f"w {d}" for d in
                                                                FLOATS + [torch.int32, torch.int64])
        assert bf.win_free(name="w torch.int32") and "w torch.int32" not in \
            bf.get_current_created_window_names()
        expect_error(KeyError, "w torch.int32", bf.win_free, "w torch.int32")
    finally:
        _end()
    assert bf.get_current_created_window_names() == []
    assert bf.win_free() and bf.win_free()                           # nothing left: still truthy


def case_update_starts_from_the_callers_tensor_weighted_star():
    n, r, ins, _ = _start(topology_util.StarGraph(bf.size()), weighted=True)
    try:
        x = _full(r, torch.float64)
        bf.win_create(x, "star")
        x.mul_(2)                                      # buffers keep the creation-time copies of r
        bf.barrier()
        own, weights = bf.GetRecvWeights(bf.load_topology(), r)
        expected = own * 2 * r + sum(w * r for w in weights.values())
        y = bf.win_update("star")
        assert y is x
        close(x, _full(expected, torch.float64))
        if n > 1 and r != 0:
            close(x, _full(r / n + (1 - 1 / n) * 2 * r, torch.float64))
    finally:
        _end()


def case_update_then_collect_twice_and_zero_init():
    n, r, ins, _ = _start()
    try:
        x = _full(r)
        bf.win_create(x, "c")
        bf.barrier()
        for _ in range(2):
            y = bf.win_update_then_collect("c")
            assert y is x
            close(x, _full(r * (len(ins) + 1)))
        z = _full(r + 1, torch.float64)
        bf.win_create(z, "z", zero_init=True)
        bf.barrier()
        close(bf.win_update("z"), _full((r + 1) / (len(ins) + 1), torch.float64))
    finally:
        _end()


def case_memory_model_registered_storage_and_self_mirror():
    """The registered tensor keeps its storage (aliases see updates); win_get reads the owner's
    value as of its last win_create / win_update."""
    n, r, ins, outs = _start()
    try:
        flat = _full(r, torch.float64, (6,))
        alias = flat.view(3, 2)                      # a view made before win_create
        bf.win_create(flat, "m")
        bf.barrier()
        flat.mul_(2)                                 # not yet published: getters still see r
        bf.barrier()
        bf.win_get("m")
        out = bf.win_update("m", 0.0, {j: 1.0 for j in ins}, clone=True)
        close(out, _full(sum(ins), torch.float64, (6,)))
        bf.barrier()
        bf.win_update("m", 1.0, {})                  # publishes 2r, in place
        assert torch.equal(alias, _full(2 * r, torch.float64))
        bf.barrier()
        bf.win_get("m")
        out = bf.win_update("m", 0.0, {j: 1.0 for j in ins}, clone=True)
        close(out, _full(2 * sum(ins), torch.float64, (6,)))
        assert torch.equal(flat, _full(2 * r, torch.float64, (6,)))
    finally:
        _end()


# ---------------------------------------------------------------------- put
@sizes(2, 4)
def case_put_default_and_given_dst_weights_and_versions():
    n, r, ins, outs = _start()
    try:
        for dtype in FLOATS:
            x = _full(r, dtype)
            bf.win_create(x, "p")
            assert bf.win_put(x, "p") is True
            bf.barrier()
            assert bf.get_win_version("p") == {j: 1 for j in ins}
            close(bf.win_update("p"), _full((r + sum(ins)) / (len(ins) + 1), dtype))
            assert bf.get_win_version("p") == {j: 0 for j in ins}
            bf.win_free("p")

            x = _full(r, dtype)
            bf.win_create(x, "q")
            bf.win_put(x, name="q", dst_weights={(r + 1) % n: 1.23})
            bf.barrier()
            left = (r - 1) % n
            assert bf.get_win_version("q") == {j: int(j == left) for j in ins}
            expected = (r * len(ins) - r + 1.23 * left + r) / (len(ins) + 1)
            close(bf.win_update("q"), _full(expected, dtype))
            bf.win_free("q")
    finally:
        _end()


@sizes(2, 4)
def case_many_source_tensors_and_reused_addresses_put_the_right_data():
    """Puts and accumulates from many different tensors (more than the prepared messages kept per
    window), and from new tensors that reuse a freed tensor's address: the targets always get the
    values of the tensor passed, and every put counts one version (until win_update clears them)."""
    n, r, ins, outs = _start()
    try:
        bf.win_create(_full(0.0), "many", zero_init=True)
        puts = 0
        for k in range(150):
            source = _full(1000 * r + k)                    # a fresh tensor (addresses recycle)
            assert bf.win_put(source, "many")
            puts += 1
            if k % 50 == 49:
                bf.barrier()
                assert bf.get_win_version("many") == {j: puts for j in ins}
                slots = {j: bf.win_update("many", self_weight=0.0,
                                          neighbor_weights={q: float(q == j) for q in ins},
                                          clone=True) for j in ins}
                for j in ins:
                    close(slots[j], _full(1000 * j + k))
                puts = 0                                   # win_update clears the versions
                bf.barrier()
        bf.win_update("many", self_weight=0.0, neighbor_weights={q: 0.0 for q in ins}, reset=True)
        bf.barrier()
        total = 0.0
        for k in range(70):
            total += k
            assert bf.win_accumulate(_full(k + 0.0), "many")
        bf.barrier()
        for j in ins:
            got = bf.win_update("many", self_weight=0.0,
                                neighbor_weights={q: float(q == j) for q in ins}, clone=True)
            close(got, _full(total))
        bf.barrier()
    finally:
        _end()


@sizes(1, 2, 4)
def case_put_and_accumulate_scale_the_callers_tensor_and_p():
    n, r, ins, outs = _start()
    try:
        bf.turn_on_win_ops_with_associated_p()
        x = _full(r + 1, torch.float64)
        bf.win_create(x, "s", zero_init=True)
        other = _full(4.0, torch.float64)
        bf.win_put(other, "s", self_weight=0.5, dst_weights={o: 0.25 for o in outs})
        assert torch.equal(other, _full(2.0, torch.float64))         # the passed tensor is scaled
        assert torch.equal(x, _full(r + 1, torch.float64))
        assert bf.win_associated_p("s") == 0.5
        bf.win_accumulate(other, "s", self_weight=np.float64(0.5))
        assert torch.equal(other, _full(1.0, torch.float64)) and bf.win_associated_p("s") == 0.25
        bf.barrier()
        # buffers: 4 * 0.25 put, then + 2.0 accumulated; p entries 1 * 0.25 put, then + 0.5 * 1.0
        got = bf.win_update("s", 1.0, {j: 1.0 for j in ins}, clone=True)
        close(got, _full(r + 1 + 3.0 * len(ins), torch.float64))
        bf.win_update_then_collect("s")
        assert abs(bf.win_associated_p("s") - (0.25 + len(ins) * 0.75)) < 1e-12
    finally:
        _end()


# ---------------------------------------------------------------------- accumulate
@sizes(2, 4)
def case_accumulate_default_and_given_weights():
    n, r, ins, outs = _start()
    try:
        for dtype in FLOATS:
            x = _full(r, dtype)
            bf.win_create(x, "a")
            bf.win_accumulate(x, "a")
            bf.barrier()
            assert bf.get_win_version("a") == {j: 0 for j in ins}   # accumulate counts no version
            close(bf.win_update("a"), _full(r + sum(ins) / (len(ins) + 1), dtype))
            bf.win_free("a")

            x = _full(r, dtype)
            bf.win_create(x, "b")
            bf.win_accumulate(x, name="b", dst_weights={(r + 1) % n: 1.23})
            bf.barrier()
            left = (r - 1) % n
            close(bf.win_update(name="b", self_weight=0.5, neighbor_weights={left: 0.5}),
                  _full(r + 1.23 * left / 2, dtype))
            bf.win_free("b")
    finally:
        _end()


# ---------------------------------------------------------------------- get
@sizes(2, 4)
def case_get_default_and_given_src_weights_with_clone():
    n, r, ins, outs = _start()
    try:
        for dtype in FLOATS:
            x = _full(r, dtype)
            bf.win_create(x, "g")
            bf.barrier()
            assert bf.win_get("g") is True
            assert bf.get_win_version("g") == {j: 1 for j in ins}
            bf.barrier()
            avg = bf.win_update("g", clone=True)
            assert avg is not x and torch.equal(x, _full(r, dtype))     # clone: window unchanged
            close(avg, _full((r + sum(ins)) / (len(ins) + 1), dtype))
            assert bf.get_win_version("g") == {j: 0 for j in ins}      # cleared also by clone
            left = (r - 1) % n
            bf.win_get("g", src_weights={left: 1.23})
            got = bf.win_update("g", 0.5, {left: 0.5}, clone=True)
            close(got, _full((r + 1.23 * left) / 2, dtype))
            bf.barrier()
            bf.win_free("g")
    finally:
        _end()


@sizes(2, 4)
def case_nonblocking_forms_aliases_wait_and_poll():
    n, r, ins, outs = _start()
    try:
        x = _full(r, torch.float64)
        bf.win_create(x, "nb")
        h = bf.neighbor_win_put_nonblocking(x, "nb")
        assert isinstance(bf.win_poll(h), bool)
        assert bf.win_wait(h) is True
        assert bf.win_wait(h) is False                               # cleared: warns, False
        bf.barrier()
        close(bf.win_update("nb"), _full((r + sum(ins)) / (len(ins) + 1), torch.float64))
        bf.barrier()
        y = _full(r, torch.float64)
        handles = [bf.neighbor_win_accumulate_nonblocking(y, "nb") for _ in range(3)]
        handles.append(bf.win_accumulate_nonblocking(y, "nb", dst_weights={outs[0]: 2.0}))
        assert all(bf.win_wait(h) for h in handles)
        assert bf.neighbor_win_accumulate(y, "nb", dst_weights={outs[0]: 1.0}) is True
        bf.barrier()
        got = bf.win_update_then_collect("nb")
        base = (r + sum(ins)) / (len(ins) + 1)
        # buffer j: j (the put) + 3j (three accumulates) + 3j more if this rank is j's first out
        expected = base + sum(4 * j + 3 * j * (_first_out(j) == r) for j in ins)
        close(got, _full(expected, torch.float64))
        bf.barrier()
        h = bf.neighbor_win_get_nonblocking("nb", src_weights={ins[0]: 1.0})
        assert bf.win_wait(h) and bf.neighbor_win_get("nb") is True
        assert bf.get_win_version("nb") == {j: 1 + int(j == ins[0]) for j in ins}
        expect_error(ValueError, "not created", bf.win_poll, object())
        assert bf.win_wait(12345) is False
        assert int(h) >= 1
    finally:
        _end()


# ---------------------------------------------------------------------- associated p
@sizes(4)
def case_associated_p_follows_accumulate_on_a_ring():
    n, r, ins, outs = _start(topology_util.RingGraph(bf.size()))
    try:
        bf.turn_on_win_ops_with_associated_p()
        x = _full(1.0, torch.float64)
        bf.win_create(x, "ring", zero_init=True)
        sender = 1
        if r == sender:
            bf.win_accumulate(x, "ring", self_weight=0.5, dst_weights={o: 0.5 for o in outs})
        bf.barrier()
        bf.win_update_then_collect("ring")
        expected = 0.5 if r == sender else 1.5 if sender in ins else 1.0
        assert bf.win_associated_p("ring") == expected, (r, bf.win_associated_p("ring"))
        close(x, _full(expected, torch.float64))
    finally:
        _end()


@timeout(90)
def case_associated_p_tracks_tensor_under_random_weights():
    n, r, ins, outs = _start()
    try:
        bf.turn_on_win_ops_with_associated_p()
        rng = np.random.default_rng(1234 + r)
        for dtype in FLOATS:
            name = f"rand {dtype}"
            t = torch.ones(4, dtype=dtype)
            t[1:] = torch.rand(3, dtype=torch.float64).to(dtype)
            bf.win_create(t, name=name, zero_init=True)
            for _ in range(10):
                raw = rng.random(len(outs) + 1)
                raw /= raw.sum()
                s, d = raw[0], {o: raw[k + 1] for k, o in enumerate(outs)}
                bf.win_put(t, name=name, self_weight=s, dst_weights=d, require_mutex=True)
                bf.win_update(name=name, require_mutex=True)
                bf.win_accumulate(t, name=name, self_weight=s, dst_weights=d, require_mutex=True)
                bf.win_update_then_collect(name=name)
            bf.barrier()
            bf.win_update_then_collect(name=name)
            p = bf.win_associated_p(name=name)
            assert isinstance(p, float)
            assert abs(p - t[0].item()) < 1e-5, (dtype, p, t[0].item())
    finally:
        _end()


# ---------------------------------------------------------------------- passive progress
@sizes(2, 4)
@timeout(60)
def case_ops_complete_while_the_target_sleeps():
    """The target sleeps 2 s in Python; a peer's put, accumulate, mutex and get finish meanwhile."""
    n, r, ins, outs = _start()
    target, origin = 1, 0                            # 0 -> 1 is an edge of every Exp-2 graph
    numel = 1 << 20
    try:
        x = torch.full((numel,), float(r))
        bf.win_create(x, "sleepy")
        bf.barrier()
        if r == target:
            time.sleep(2.0)                          # no bluefog call while the peer works
            assert bf.get_win_version("sleepy")[origin] == 1
            got = bf.win_update("sleepy", 0.0, {origin: 1.0}, clone=True)
            assert bool((got == 3.0 * 7).all()), got[:4]
        elif r == origin:
            data = torch.full((numel,), 7.0)
            start = time.perf_counter()
            bf.win_put(data, "sleepy", dst_weights={target: 1.0})
            put_s = time.perf_counter() - start
            bf.win_accumulate(data, "sleepy", dst_weights={target: 2.0}, require_mutex=True)
            with bf.win_mutex("sleepy", ranks=[target]):
                pass
            source = ins[0]
            bf.win_get("sleepy", src_weights={source: 1.0})
            elapsed = time.perf_counter() - start
            assert put_s < 0.2, f"blocking put took {put_s:.3f} s while the target slept"
            assert elapsed < 0.5, f"put+accumulate+mutex+get took {elapsed:.3f} s"
            got = bf.win_update("sleepy", 0.0, {source: 1.0}, clone=True)
            assert bool((got == float(source)).all())
        bf.barrier()
    finally:
        _end()


# ---------------------------------------------------------------------- mutex
@sizes(2, 4)
@timeout(60)
def case_mutex_blocks_waiters_while_held_and_barrier_inside():
    n, r, ins, outs = _start(topology_util.FullyConnectedGraph(bf.size()))
    try:
        bf.win_create(torch.zeros(2), "mutex")
        if r == 0:
            with bf.win_mutex("mutex", for_self=True) as lock:
                assert lock.locked()
                bf.barrier()                                 # barrier needs no window mutex
                time.sleep(1.05)
        else:
            bf.barrier()
            start = time.time()
            with bf.win_mutex("mutex"):
                waited = time.time() - start
            assert 1.0 < waited < 2.0, waited
        bf.barrier()
        lock = bf.win_mutex("mutex", ranks=[(r + 1) % n])
        assert lock.acquire() and lock.locked()
        expect_error(RuntimeError, "re-entrant", lock.acquire)
        lock.release()
        assert not lock.locked()
        bf.barrier()
        if r == 0:
            held = bf.win_mutex("mutex", for_self=True, ranks=[1])
            held.acquire()
            bf.barrier()
            bf.barrier()
            held.release()
        else:
            bf.barrier()
            if r == 1:
                assert bf.win_mutex("mutex", ranks=[0]).acquire(blocking=False) is False
            bf.barrier()
        bf.barrier()
        with bf.win_lock("mutex"):
            pass
    finally:
        _end()


@sizes(2, 4)
@timeout(120)
def case_mutex_guarded_accumulates_from_everyone_sum_exactly():
    n, r, ins, outs = _start(topology_util.FullyConnectedGraph(bf.size()))
    rounds = 300
    try:
        for dtype in (torch.int64, torch.float64):
            name = f"sum {dtype}"
            x = torch.zeros(64, dtype=dtype)
            bf.win_create(x, name, zero_init=True)
            mine = torch.full((64,), r + 1, dtype=dtype)
            for k in range(rounds):
                if k % 3 == 2:
                    bf.win_wait(bf.win_accumulate_nonblocking(mine, name, require_mutex=True))
                else:
                    bf.win_accumulate(mine, name, require_mutex=True)
                if k % 7 == 0:                       # the owner collects concurrently
                    bf.win_update_then_collect(name)
            bf.barrier()
            bf.win_update_then_collect(name)
            expected = rounds * sum(j + 1 for j in ins)
            assert bool((x == expected).all()), (dtype, x[:4], expected)
            bf.win_free(name)
    finally:
        _end()


# ---------------------------------------------------------------------- push-sum
@sizes(2, 4)
@timeout(120)
def case_async_push_sum_conserves_mass_and_reaches_the_mean():
    n, r, ins, outs = _start()
    try:
        bf.turn_on_win_ops_with_associated_p()
        torch.manual_seed(7 + r)
        x = torch.randn(16, dtype=torch.float64)
        total = bf.allreduce(x, average=False, name="push-sum total")
        bf.win_create(x, name="ps", zero_init=True)
        w = 1.0 / (len(outs) + 1)
        deadline = time.time() + 1.0
        iterations = 0
        while time.time() < deadline or iterations < 50:
            bf.win_accumulate(x, name="ps", self_weight=w, dst_weights={o: w for o in outs},
                              require_mutex=True)
            bf.win_update_then_collect(name="ps")
            iterations += 1
            if r % 2 == 1:
                time.sleep(0.002)                    # ranks run at different speeds
        bf.barrier()
        bf.win_update_then_collect(name="ps")
        p = bf.win_associated_p(name="ps")
        mass = bf.allreduce(x, average=False, name="push-sum mass")
        weight = bf.allreduce(torch.tensor([p], dtype=torch.float64), average=False, name="p mass")
        assert torch.allclose(mass, total, rtol=1e-12, atol=1e-12), (mass - total).abs().max()
        assert abs(weight.item() - n) < 1e-12, weight.item()
        close(x / p, total / n, atol=1e-8)
    finally:
        _end()


# ---------------------------------------------------------------------- errors and negotiation
@sizes(2, 4)
def case_win_create_negotiated_and_mismatched_shapes_raise_everywhere():
    n, r, ins, outs = _start(skip=False)
    try:
        x = _full(r)
        assert bf.win_create(x, name="neg")
        assert bf.win_create(x, name="neg") is False
        bf.win_put(x, "neg")
        bf.barrier()
        close(bf.win_update("neg"), _full((r + sum(ins)) / (len(ins) + 1)))
        for skip in (False, True):
            bf.set_skip_negotiate_stage(skip)
            odd = torch.zeros(3 + (r == n - 1))
            expect_error(ValueError, "", bf.win_create, odd, f"odd {skip}")
            dtype = torch.float64 if r == 0 else torch.float32
            expect_error(ValueError, "", bf.win_create, torch.zeros(3, dtype=dtype), f"dt {skip}")
            names = bf.get_current_created_window_names()
            assert f"odd {skip}" not in names and f"dt {skip}" not in names
            assert bf.win_create(torch.zeros(3), f"odd {skip}")   # the name is free afterwards
    finally:
        _end()


@sizes(2, 4)
def case_bad_input_raises_on_the_caller():
    n, r, ins, outs = _start()
    try:
        x = _full(r)
        bf.win_create(x, "e")
        not_out = [k for k in range(n) if k not in outs]          # self at least
        not_in = [k for k in range(n) if k not in ins]
        for call in (lambda: bf.win_put(x, "nope"), lambda: bf.win_get("nope"),
                     lambda: bf.win_accumulate(x, "nope"), lambda: bf.get_win_version("nope"),
                     lambda: bf.win_associated_p("nope"), lambda: bf.win_mutex("nope"),
                     lambda: bf.win_put_nonblocking(x, "nope")):
            err = expect_error(KeyError, "nope", call)
            assert isinstance(err, ValueError) and isinstance(err, UnknownWindowError)
        expect_error(KeyError, "nope", bf.win_update, "nope")
        expect_error(KeyError, "nope", bf.win_update_then_collect, name="nope")
        expect_error(KeyError, "nope", bf.win_free, "nope")
        expect_error(ValueError, "nope", bf.win_lock, "nope")
        expect_error(ValueError, "out-neighbors", bf.win_put, x, "e", dst_weights={not_out[0]: 1.0})
        expect_error(ValueError, "out-neighbors", bf.win_accumulate, x, "e",
                     dst_weights={not_out[-1]: 0.5})
        expect_error(ValueError, "in-neighbors", bf.win_get, "e", src_weights={not_in[0]: 1.0})
        expect_error(ValueError, "in-neighbors", bf.win_update, "e", 0.5, {not_in[0]: 0.5})
        expect_error(ValueError, "same time", bf.win_update, "e", self_weight=0.5)
        expect_error(ValueError, "same time", bf.win_update, "e", neighbor_weights={ins[0]: 0.5})
        expect_error(ValueError, "dict", bf.win_update, "e", 0.5, [ins[0]])
        expect_error(ValueError, "float", bf.win_update, "e", 1, {ins[0]: 0.5})
        expect_error(ValueError, "dict", bf.win_put, x, "e", dst_weights=[outs[0]])
        expect_error(ValueError, "elements", bf.win_put, torch.zeros(7), "e")
        expect_error(ValueError, "elements", bf.win_accumulate, x.double(), "e")
        expect_error(ValueError, "not supported", bf.win_create, torch.zeros(3).half(), "h")
        expect_error(ValueError, "contiguous", bf.win_create, torch.zeros(4, 4).t(), "t")
        expect_error(TypeError, "name", bf.win_create, torch.zeros(3), 5)
        # no window changed, no handle leaked, and the topology is frozen while windows exist
        before = bf.load_topology()
        assert bf.set_topology(_edgeless(n)) is False
        assert bf.load_topology() is before
        bf.barrier()
        close(bf.win_update("e"), _full(r))
        bf.suspend()
        try:
            expect_error(ValueError, "suspended", bf.win_put, x, "e")
            expect_error(ValueError, "suspended", bf.win_update, "e")
            expect_error(ValueError, "suspended", bf.get_win_version, "e")
        finally:
            bf.resume()
    finally:
        _end()
    assert bf.set_topology(_edgeless(n)) is True


@sizes(1)
def case_single_rank_windows_have_no_neighbors():
    n, r, ins, outs = _start()
    try:
        bf.turn_on_win_ops_with_associated_p()
        x = torch.tensor([3.0, 5.0])
        assert bf.win_create(x, "one", zero_init=True)
        assert bf.win_put(x, "one", self_weight=0.5) is True
        assert torch.equal(x, torch.tensor([1.5, 2.5])) and bf.win_associated_p("one") == 0.5
        assert bf.win_accumulate(x, "one") and bf.win_get("one")
        assert bf.win_update_then_collect("one") is x and bf.get_win_version("one") == {}
        assert bf.win_update("one") is x and torch.equal(x, torch.tensor([1.5, 2.5]))
        with bf.win_mutex("one", for_self=True):
            pass
        bf.barrier()
    finally:
        _end()


@timeout(90)
def case_cuda_tensor_windows_stage_through_host():
    if not torch.cuda.is_available():
        return
    n, r, ins, outs = _start()
    device = torch.device("cuda", bf.local_rank() % torch.cuda.device_count())
    try:
        for dtype in FLOATS:
            x = torch.full((5,), float(r), dtype=dtype, device=device)
            assert bf.win_create(x, "gpu")
            bf.win_put(x, "gpu")
            bf.barrier()
            y = bf.win_update("gpu")
            assert y is x and y.device == device
            close(y.cpu(), torch.full((5,), (r + sum(ins)) / (len(ins) + 1), dtype=dtype))
            bf.barrier()
            bf.win_accumulate(x, "gpu", self_weight=0.5)
            bf.barrier()
            z = bf.win_update_then_collect("gpu")
            assert z is x and z.device == device
            bf.win_get("gpu")
            bf.barrier()
            bf.win_free("gpu")
    finally:
        _end()


@sizes(2, 4)
def case_large_tensors_move_in_chunks():
    """Transfers longer than BLUEFOG_MAX_WIN_SENT_LENGTH go in pieces (here 7 elements, set in
    the settings the windows are made with)."""
    import dataclasses

    from bluefog import context
    n, r, ins, outs = _start()
    ctx = context.current()
    settings = ctx.settings
    ctx.settings = dataclasses.replace(settings, max_win_sent_length=7)
    try:
        for dtype in FLOATS:
            x = torch.arange(23 * 3, dtype=dtype).reshape(23, 3) + r
            bf.win_create(x, "chunks")
            assert ctx.windows["chunks"].window.chunk == 7
            bf.win_put(x, "chunks", dst_weights={o: 2.0 for o in outs})
            bf.win_accumulate(x, "chunks")
            bf.barrier()
            got = bf.win_update("chunks", 0.0, {j: 1.0 for j in ins}, clone=True)
            base = torch.arange(23 * 3, dtype=torch.float64).reshape(23, 3)
            close(got, sum(3 * (base + j) for j in ins).to(dtype))
            bf.barrier()
            bf.win_get("chunks", src_weights={ins[0]: 0.5})
            got = bf.win_update("chunks", 0.0, {ins[0]: 1.0}, clone=True)
            close(got, (0.5 * (base + ins[0])).to(dtype))
            bf.barrier()
            bf.win_free("chunks")
    finally:
        ctx.settings = settings
        _end()
