"""Run a case module under N real ranks (through ``bfrun``) once, and hand out per-case results.

Example (in a test module)::

    from harness import case_names, case_result
    @pytest.mark.parametrize("size", [1, 2, 4])
    @pytest.mark.parametrize("case", case_names("ops_cases.py"))
    def test_ops(case, size):
        case_result("ops_cases.py", case, size)   # raises AssertionError with the ranks' tracebacks
"""

import ast
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = os.path.join(HERE, "cases")
_runs = {}


def _declared_sizes(node):
    for deco in node.decorator_list:
        if isinstance(deco, ast.Call) and getattr(deco.func, "id", "") == "sizes":
            return tuple(ast.literal_eval(a) for a in deco.args)
    return (1, 2, 4)


def case_names(case_file, size=None):
    """The ``case_*`` functions of a case file (optionally only those that run at ``size``)."""
    with open(os.path.join(CASES, case_file)) as f:
        tree = ast.parse(f.read())
    return [n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("case_")
            and (size is None or size in _declared_sizes(n))]


def launch(case_file, size, env=None, timeout=600):
    """Run every case of ``case_file`` at ``size`` ranks; return ({rank: results}, output)."""
    out_dir = tempfile.mkdtemp(prefix="bf-cases-")
    runner = [sys.executable, os.path.join(HERE, "rank_runner.py"), os.path.join(CASES, case_file),
              out_dir]
    cmd = runner if size == 1 else [sys.executable, "-m", "bluefog.run.run", "-np", str(size)] + runner
    return run_and_collect(cmd, size, out_dir, dict(os.environ, **(env or {})), timeout)


def run_and_collect(cmd, size, out_dir, env, timeout):
    """Run the job ``cmd``; return ({rank: the JSON each rank wrote to out_dir/rank<R>.json},
    the tail of its output)."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        output = proc.stdout[-4000:] + proc.stderr[-8000:]
    except subprocess.TimeoutExpired as expired:
        output = f"job timed out after {timeout} s\n{expired.stderr!s:.4000}"
    results = {}
    for r in range(size):
        path = os.path.join(out_dir, f"rank{r}.json")
        if os.path.exists(path):
            with open(path) as f:
                results[r] = json.load(f)
    return results, output


def case_result(case_file, case, size, env=None):
    """Assert that ``case`` passed on every one of ``size`` ranks."""
    key = (case_file, size, tuple(sorted((env or {}).items())))
    if key not in _runs:
        _runs[key] = launch(case_file, size, env)
    results, output = _runs[key]
    problems = []
    for r in range(size):
        outcome = results.get(r, {}).get(case)
        if outcome is None:
            problems.append(f"rank {r}: case did not run (the job ended early)")
        elif outcome["status"] != "ok":
            problems.append(f"rank {r}:\n{outcome['error']}")
    if problems:
        raise AssertionError(f"{case} at {size} ranks failed\n" + "\n".join(problems)
                             + f"\n--- job output ---\n{output}")


def case_params(case_file, sizes=(1, 2, 4)):
    """(case, size) pairs for ``pytest.mark.parametrize``: each case at the sizes it declares."""
    return [(case, size) for size in sizes for case in case_names(case_file, size)]
