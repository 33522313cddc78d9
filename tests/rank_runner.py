"""Run every ``case_*`` function of a case module on this rank and record the outcomes as JSON.

Used by ``tests/harness.py``: ``bfrun -np N python tests/rank_runner.py CASE_FILE OUT_DIR``.
Every rank runs the same cases in file order (cases are collective).  A case that takes longer than
its timeout raises ``TimeoutError`` on that rank, so one hang cannot eat the whole run.
"""

import importlib.util
import json
import os
import signal
import sys
import time
import traceback


def _load(path):
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _alarm(signum, frame):
    raise TimeoutError("case timed out on this rank")


def main(case_file, out_dir, only=None):
    module = _load(case_file)
    import bluefog.torch as bf
    bf.init()
    size, rank = bf.size(), bf.rank()
    results = {}
    out = os.path.join(out_dir, f"rank{rank}.json")
    signal.signal(signal.SIGALRM, _alarm)
    for name, func in list(vars(module).items()):
        if not name.startswith("case_") or not callable(func):
            continue
        if size not in getattr(func, "sizes", (1, 2, 4)) or (only and name not in only):
            continue
        bf.init()
        start = time.time()
        signal.alarm(getattr(func, "timeout", 60))
        try:
            func()
            results[name] = {"status": "ok"}
        except BaseException as error:  # record, then go on with the next case
            results[name] = {"status": "fail",
                             "error": "".join(traceback.format_exception(error))[-3000:]}
        finally:
            signal.alarm(0)
        results[name]["seconds"] = round(time.time() - start, 3)
        with open(out + ".tmp", "w") as f:
            json.dump(results, f)
        os.replace(out + ".tmp", out)
    bf.barrier()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:] or None)
