"""Run every ``case_*`` function of a case module on this rank and record the outcomes as JSON.

Used by ``tests/harness.py``: ``bfrun -np N python tests/rank_runner.py CASE_FILE OUT_DIR``.
Every rank runs the same cases in file order (cases are collective).  A case that takes longer than
its timeout raises ``TimeoutError`` on that rank, so one hang cannot eat the whole run.  A rank
blocked inside an MPI call never runs that Python signal handler; for it a watchdog thread, a
little later, records the case as hung with every thread's stack and ends the rank (and so the
job: the file's later cases report that they did not run).
"""

import importlib.util
import json
import os
import signal
import sys
import threading
import time
import traceback

WATCHDOG_GRACE = 15     # seconds past a case's timeout before the watchdog ends the rank


def _load(path):
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _alarm(signum, frame):
    raise TimeoutError("case timed out on this rank")


def _record(results, out):
    with open(out + ".tmp", "w") as f:
        json.dump(results, f)
    os.replace(out + ".tmp", out)


class Watchdog:
    """Ends the rank when the case armed for has run ``grace`` seconds past its timeout."""

    def __init__(self, results, out, grace=WATCHDOG_GRACE):
        self.results, self.out, self.grace = results, out, grace
        self.case, self.deadline = None, None
        threading.Thread(target=self._watch, name="case-watchdog", daemon=True).start()

    def arm(self, case, seconds):
        self.case, self.deadline = case, time.monotonic() + seconds + self.grace

    def disarm(self):
        self.deadline = None

    def _watch(self):
        while True:
            time.sleep(0.5)
            deadline = self.deadline
            if deadline is None or time.monotonic() < deadline:
                continue
            stacks = "".join(f"--- thread {ident}\n" + "".join(traceback.format_stack(frame))
                             for ident, frame in sys._current_frames().items())
            self.results[self.case] = {"status": "fail", "error": (
                "case hung inside a call that Python signals cannot interrupt (an MPI wait?); "
                f"stacks:\n{stacks[-6000:]}")}
            _record(self.results, self.out)
            os._exit(3)


def main(case_file, out_dir, only=None):
    module = _load(case_file)
    import bluefog.torch as bf
    bf.init()
    size, rank = bf.size(), bf.rank()
    results = {}
    out = os.path.join(out_dir, f"rank{rank}.json")
    signal.signal(signal.SIGALRM, _alarm)
    watchdog = Watchdog(results, out)
    for name, func in list(vars(module).items()):
        if not name.startswith("case_") or not callable(func):
            continue
        if size not in getattr(func, "sizes", (1, 2, 4)) or (only and name not in only):
            continue
        bf.init()
        start = time.time()
        seconds = getattr(func, "timeout", 60)
        watchdog.arm(name, seconds)
        signal.alarm(seconds)
        try:
            func()
            results[name] = {"status": "ok"}
        except BaseException as error:  # record, then go on with the next case
            results[name] = {"status": "fail",
                             "error": "".join(traceback.format_exception(error))[-3000:]}
        finally:
            signal.alarm(0)
            watchdog.disarm()
        results[name]["seconds"] = round(time.time() - start, 3)
        _record(results, out)
    bf.barrier()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:] or None)
