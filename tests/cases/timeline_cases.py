"""Timeline (spec §8) and suspend / resume (spec §1) on every rank; run by tests/test_timeline.py.

The job starts with the timeline off; the first case checks that, then switches it on the way the
original's test did: ``BLUEFOG_TIMELINE`` set only around one ``bf.init()``.
"""

import os
import threading
import time

import torch

import bluefog.torch as bf
from bluefog.common.util import env
from bluefog.timeline import load, tracer
from casetools import expect_error, sizes

SUSPENDED = "Bluefog background thread is suspended. use bf.resume() first."


def _my_file():
    return os.path.join(os.environ["TIMELINE_TEST_DIR"], f"tl{bf.rank()}.json")


def case_timeline_off_records_nothing():
    assert tracer.TIMELINE is None and not tracer.running()
    bf.allreduce(torch.ones(3), name="off")
    assert bf.timeline_start_activity("x", "FAKE_ACTIVITY") is False
    assert bf.timeline_end_activity("x") is False
    directory = os.environ["TIMELINE_TEST_DIR"]
    assert not os.path.exists(directory) or not os.listdir(directory)


def case_timeline_records_ops_and_user_spans():
    prefix = os.path.join(os.environ["TIMELINE_TEST_DIR"], "tl")
    with env(BLUEFOG_TIMELINE=prefix):
        bf.init()                       # latched here; the variable is gone afterwards
    assert "BLUEFOG_TIMELINE" not in os.environ and tracer.running()
    x = torch.full((4,), float(bf.rank()))
    bf.neighbor_allreduce(x, name="x")
    bf.neighbor_allgather(x, name="x")
    bf.allreduce(x, name="x")
    bf.synchronize(bf.broadcast_nonblocking(x, 0, name="x"))
    bf.allgather(x, name="x")
    assert bf.timeline_start_activity("x", "FAKE_ACTIVITY")       # positional, as 0.3.0's test
    assert bf.timeline_end_activity("x")
    with bf.timeline_context(tensor_name="x", activity_name="CONTEXT_ACTIVITY"):
        time.sleep(0.001)
    start = threading.Barrier(2)

    def work():
        start.wait()                    # both threads hold the same row open at once
        assert bf.timeline_start_activity("thread.row", "THREAD_WORK")
        time.sleep(0.01)
        assert bf.timeline_end_activity("thread.row")

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bf.barrier()
    events = load(_my_file())          # readable while running, right after a barrier
    begins = {e["name"] for e in events if e["ph"] == "B"}
    assert {"ENQUEUE_NEIGHBOR_ALLREDUCE", "MPI_NEIGHBOR_ALLREDUCE", "ENQUEUE_NEIGHBOR_ALLGATHER",
            "MPI_NEIGHBOR_ALLGATHER", "ENQUEUE_ALLREDUCE", "MPI_ALLREDUCE", "FAKE_ACTIVITY",
            "CONTEXT_ACTIVITY", "THREAD_WORK"} <= begins, begins
    rows = {e["args"]["name"] for e in events if e.get("name") == "process_name"}
    assert {"neighbor.allreduce.x", "neighbor.allgather.x", "allreduce.x", "x",
            "thread.row"} <= rows, rows
    worker_tids = {e["tid"] for e in events if e.get("name") == "THREAD_WORK"}
    assert len(worker_tids) == 2, worker_tids


def case_timeline_records_window_ops():
    if not hasattr(bf, "win_accumulate"):       # window ops not in this build yet
        return
    assert tracer.running()
    x = torch.full((3,), float(bf.rank()))
    assert bf.win_create(x, name="win.x")
    try:
        for _ in range(10):                     # as Bluefog 0.3.0's timeline test does
            bf.win_accumulate(x, name="win.x", require_mutex=True)
        bf.win_wait(bf.win_put_nonblocking(x, name="win.x"))
        bf.win_get(name="win.x")
        bf.win_update(name="win.x")
        bf.barrier()
    finally:
        bf.win_free("win.x")
    events = load(_my_file())
    begins = {e["name"] for e in events if e["ph"] == "B" and "WIN" in e["name"]}
    for op in ("WIN_ACCUMULATE", "WIN_PUT", "WIN_GET", "WIN_CREATE"):
        assert {f"ENQUEUE_{op}", f"MPI_{op}"} <= begins, (op, begins)
    assert "WIN_SYNC_COMPUTE_AVERAGE" in begins, begins


def case_suspend_refuses_ops_and_parks_the_engine():
    x = torch.ones(2)
    late = None
    if bf.rank() == 0:
        late = bf.allreduce_nonblocking(x, name="late")   # peers submit it only later
    bf.suspend()
    try:
        assert bf.get_skip_negotiate_stage() is False
        expect_error(ValueError, SUSPENDED, bf.allreduce, x)
        expect_error(ValueError, SUSPENDED, bf.neighbor_allreduce_nonblocking, x)
        expect_error(ValueError, SUSPENDED, bf.barrier)
        assert bf.timeline_start_activity("x", "WHILE_SUSPENDED") is False
        if bf.rank() == 0:
            time.sleep(0.6)             # the others are waiting for "late" meanwhile
            assert not bf.poll(late), "the background thread kept working while suspended"
    finally:
        bf.resume()
    if bf.rank() != 0:
        time.sleep(0.1)
        late = bf.allreduce_nonblocking(x, name="late")
    assert bf.synchronize(late).tolist() == [1.0, 1.0]
    assert bf.timeline_start_activity("x", "AFTER_RESUME")          # not sticky
    assert bf.timeline_end_activity("x")
    assert bf.allreduce(x, average=False).tolist() == [float(bf.size())] * 2


@sizes(2)
def case_resume_is_idempotent():
    bf.resume()
    bf.resume()
    assert bf.allreduce(torch.ones(1)).item() == 1.0


def case_optimizer_records_forward_and_gradient_phases():
    assert tracer.running()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    opt = bf.DistributedAdaptWithCombineOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                                  model=model)
    opt.turn_on_timeline()
    for _ in range(2):
        loss = model(torch.randn(8, 4)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    bf.barrier()
    events = load(_my_file())
    spans = {(e["name"], row) for row_pid, row in
             {e["pid"]: e["args"]["name"] for e in events if e.get("name") == "process_name"}.items()
             for e in events if e["ph"] == "B" and e["pid"] == row_pid}
    for name in ("0.weight", "0.bias", "2.weight", "2.bias"):
        row = f"neighbor.allreduce.{name}"
        assert ("FORWARD", row) in spans and ("GRADIENT COMPT.", row) in spans, (row, spans)
    opens = {}
    for e in events:
        key = (e["pid"], e["tid"])
        opens[key] = opens.get(key, 0) + (1 if e["ph"] == "B" else -1 if e["ph"] == "E" else 0)
    assert all(v == 0 for v in opens.values()), "every span is closed"
