"""The timeline (spec §8): the file format in-process, then real 2- and 4-rank jobs."""

import json
import logging
import os
import re
import tempfile
import threading

import pytest

from bluefog.timeline import tracer
from bluefog.timeline.writer import TimelineWriter
from harness import case_params, case_result

CASES = "timeline_cases.py"
TL_DIR = tempfile.mkdtemp(prefix="bf-timeline-")
SPAN = re.compile(r'^\{"ph": "B", "name": "[^"]+", "ts": \d+, "pid": \d+, "tid": \d+\},$')


@pytest.fixture
def fresh_tracer():
    tracer.stop()
    tracer._closed.clear()
    yield tracer
    tracer.stop()
    tracer.set_paused(False)


# ---- the file, in this process (no MPI) -----------------------------------------------------------

def test_file_format_and_closing_bracket(tmp_path):
    path = tmp_path / "tl0.json"
    tl = TimelineWriter(str(path))
    token = tl.begin("allreduce.x", "ENQUEUE_ALLREDUCE")
    tl.end("allreduce.x", token)
    lines = path.read_text().splitlines()
    assert lines[0] == "["
    assert lines[1] == ('{"name": "process_name", "ph": "M", "pid": 1, "tid": 1, "args": '
                        '{"name": "allreduce.x"}},')
    assert lines[2] == ('{"name": "process_sort_index", "ph": "M", "pid": 1, "tid": 1, "args": '
                        '{"sort_index": 1}},')
    assert SPAN.match(lines[4]), lines[4]
    assert re.match(r'^\{"ph": "E", "ts": \d+, "pid": 1, "tid": 1\},$', lines[5])
    assert tracer.load(str(path))[-1]["ph"] == "E"        # readable while still open
    tl.close()
    events = json.loads(path.read_text())                  # plain JSON once closed
    assert [e["ph"] for e in events] == ["M", "M", "M", "B", "E"]
    assert events[3]["ts"] <= events[4]["ts"]
    tl.close()                                             # idempotent
    assert tl.begin("x", "LATE") is None                   # closed: nothing happens


def test_empty_file_is_valid_json(tmp_path):
    tl = TimelineWriter(str(tmp_path / "sub" / "tl0.json"))   # missing directories are made
    tl.close()
    assert json.loads((tmp_path / "sub" / "tl0.json").read_text()) == []


def test_names_are_rows_threads_are_tids_and_overlaps_are_kept(tmp_path):
    path = str(tmp_path / "tl.json")
    tl = TimelineWriter(path)
    barrier = threading.Barrier(2)

    def worker():
        barrier.wait()
        tl.begin("shared", "WORK")      # the same name from two threads at once
        barrier.wait()
        tl.end("shared")

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    tl.begin('odd "name"', "A")         # quoting
    tl.end('odd "name"')
    tl.close()
    text = open(path).read()
    assert '"tid": 1' in text and '"tid": 2' in text
    events = json.loads(text)
    spans = [e for e in events if e["ph"] in "BE"]
    assert sorted(e["tid"] for e in spans if e.get("name") == "WORK") == [1, 2]
    rows = {e["args"]["name"]: e["pid"] for e in events if e.get("name") == "process_name"}
    assert rows == {"shared": 1, 'odd "name"': 2}


def test_cross_thread_end_uses_the_begin_token(tmp_path):
    path = str(tmp_path / "tl.json")
    tl = TimelineWriter(path)
    token = tl.begin("grad", "GRADIENT COMPT.")
    ender = threading.Thread(target=tl.end, args=("grad", token))
    ender.start()
    ender.join()
    tl.close()
    spans = [e for e in json.load(open(path)) if e["ph"] in "BE"]
    assert [(e["ph"], e["tid"]) for e in spans] == [("B", 1), ("E", 1)]


def test_engine_hooks_pair_up(tmp_path):
    class Req:
        def __init__(self, name):
            self.name, self.activity = name, "NEIGHBOR_ALLREDUCE"

    def kernel():
        yield []
        return "out"

    path = str(tmp_path / "tl.json")
    tl = TimelineWriter(path)
    a, b = Req("neighbor.allreduce.a"), Req("neighbor.allreduce.b")
    tl.enqueued(a)
    tl.enqueued(b)
    wrapped = tl.processing([a, b], kernel())    # fused: one kernel, a span on each row
    next(wrapped)
    with pytest.raises(StopIteration):
        wrapped.send(None)
    tl.finished(a)
    tl.finished(b)
    tl.finished(b)                               # a second finish writes nothing
    tl.close()
    spans = [(e["ph"], e["pid"], e.get("name")) for e in json.load(open(path)) if e["ph"] in "BE"]
    assert spans == [("B", 1, "ENQUEUE_NEIGHBOR_ALLREDUCE"), ("B", 2, "ENQUEUE_NEIGHBOR_ALLREDUCE"),
                     ("B", 1, "MPI_NEIGHBOR_ALLREDUCE"), ("B", 2, "MPI_NEIGHBOR_ALLREDUCE"),
                     ("E", 1, None), ("E", 2, None), ("E", 1, None), ("E", 2, None)]


class _Collect(logging.Handler):
    """Keeps the records it sees (a handler of our own: no dependence on pytest's capture)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_user_api_when_off_logs_once_and_is_not_sticky(fresh_tracer, tmp_path):
    log = logging.getLogger("bluefog")
    collect, level = _Collect(), log.level
    log.addHandler(collect)
    log.setLevel(logging.ERROR)
    try:
        fresh_tracer._warned = False
        assert fresh_tracer.timeline_start_activity("x", "A") is False
        assert fresh_tracer.timeline_end_activity("x") is False
        with fresh_tracer.timeline_context("x", "B"):
            pass
        assert len([r for r in collect.records if "Cannot start activity" in r.getMessage()]) == 1
        assert fresh_tracer.span("x", "A") is fresh_tracer.span("y", "B")  # the shared no-op
        assert fresh_tracer.begin("x", "A") is None
        fresh_tracer.end("x")
        # [BUG] fixed: refused calls before the start do not disable the API afterwards.
        fresh_tracer.start(str(tmp_path / "tl0.json"))
        assert fresh_tracer.timeline_start_activity("x", "FAKE_ACTIVITY") is True
        assert fresh_tracer.timeline_end_activity("x") is True
        fresh_tracer.set_paused(True)               # bf.suspend(): refused, silently, not sticky
        assert fresh_tracer.timeline_start_activity("x", "PAUSED") is False
        fresh_tracer.set_paused(False)
        with fresh_tracer.timeline_context("x", "CTX"):
            with fresh_tracer.span("x", "INNER"):
                pass
        with pytest.raises(TypeError, match="tensor_name"):
            fresh_tracer.timeline_start_activity(3, "A")
    finally:
        log.removeHandler(collect)
        log.setLevel(level)
    fresh_tracer.stop()
    names = [e.get("name") for e in json.load(open(tmp_path / "tl0.json")) if e["ph"] == "B"]
    assert names == ["FAKE_ACTIVITY", "CTX", "INNER"]


def test_restart_continues_the_same_file(fresh_tracer, tmp_path):
    path = str(tmp_path / "tl0.json")
    fresh_tracer.start(path)
    assert fresh_tracer.start(str(tmp_path / "other")) is fresh_tracer.TIMELINE  # one at a time
    fresh_tracer.begin("a", "FIRST")
    fresh_tracer.end("a")
    fresh_tracer.stop()                     # bf.shutdown()
    fresh_tracer.start(path)                # a later bf.init()
    fresh_tracer.begin("b", "SECOND")
    fresh_tracer.end("b")
    fresh_tracer.stop()
    events = json.load(open(path))
    assert [e["name"] for e in events if e["ph"] == "B"] == ["FIRST", "SECOND"]
    assert not os.path.exists(tmp_path / "other")


# ---- real jobs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("case,size", case_params(CASES, sizes=(2, 4)))
def test_timeline_cases(case, size):
    case_result(CASES, case, size, env={"TIMELINE_TEST_DIR": os.path.join(TL_DIR, str(size))})


@pytest.mark.parametrize("size", [2, 4])
def test_each_rank_leaves_one_valid_json_file(size):
    directory = os.path.join(TL_DIR, str(size))
    case_result(CASES, "case_timeline_records_ops_and_user_spans", size,
                env={"TIMELINE_TEST_DIR": directory})
    assert sorted(os.listdir(directory)) == sorted(f"tl{r}.json" for r in range(size))
    for r in range(size):
        with open(os.path.join(directory, f"tl{r}.json")) as handle:
            text = handle.read()
        events = json.loads(text)       # the closing ']' was written at exit
        begins = {e["name"] for e in events if e["ph"] == "B"}
        for op in ("NEIGHBOR_ALLREDUCE", "NEIGHBOR_ALLGATHER", "ALLREDUCE", "BROADCAST",
                   "ALLGATHER"):
            assert {f"ENQUEUE_{op}", f"MPI_{op}"} <= begins, (r, op, begins)
        assert {"FAKE_ACTIVITY", "CONTEXT_ACTIVITY", "THREAD_WORK"} <= begins
        assert '"tid": 1' in text and '"tid": 2' in text
        opened = {}
        for e in events:                # every span that opens also closes, on its own row
            if e["ph"] == "B":
                opened[(e["pid"], e["tid"])] = opened.get((e["pid"], e["tid"]), 0) + 1
            elif e["ph"] == "E":
                opened[(e["pid"], e["tid"])] -= 1
                assert opened[(e["pid"], e["tid"])] >= 0, e
        assert not any(opened.values()), opened


def test_traced_job_spans(fresh_tracer, tmp_path):
    job = lambda: 42  # noqa: E731
    assert fresh_tracer.traced(job, "w", "WIN_PUT") is job          # off: the job itself
    path = str(tmp_path / "tl0.json")
    fresh_tracer.start(path)
    wrapped = fresh_tracer.traced(job, "w", "WIN_PUT")               # ENQUEUE opens here
    runner = threading.Thread(target=lambda: wrapped())              # runs on a worker thread
    runner.start()
    runner.join()
    fresh_tracer.stop()
    spans = [(e["ph"], e["tid"], e.get("name")) for e in json.load(open(path)) if e["ph"] in "BE"]
    assert spans == [("B", 1, "ENQUEUE_WIN_PUT"), ("B", 2, "MPI_WIN_PUT"), ("E", 2, None),
                     ("E", 1, None)]
