"""``bfrun``: start a Bluefog job under MPI and report which rank failed first.

The flow is command line -> :class:`~bluefog.run.config.LaunchConfig` -> launcher argv -> one child
``mpirun`` process, supervised here: SIGINT/SIGTERM/SIGHUP are forwarded to it, any rank process
still alive after it returns is stopped, and on failure one line names the root-cause rank (from the
records of :mod:`bluefog.run.failure`). The exit code is mpirun's.

Example::

    bfrun -np 4 python train.py
    bfrun -np 8 -H server1:4,server2:4 --network-interface eth0 python train.py
"""

import concurrent.futures
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from bluefog.run.config import LaunchConfig, parse_args
from bluefog.run.failure import FAILURE_DIR_ENV, first_failure
from bluefog.run.mpi_command import (LauncherError, build_command, child_env, find_launcher,
                                     identify_launcher)

_FORWARDED_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                           if hasattr(signal, name))


def main(argv=None) -> int:
    """Entry point of the ``bfrun`` console script; returns the exit code."""
    cfg = parse_args(argv)
    try:
        launcher = identify_launcher(find_launcher(cfg.prefix))
    except LauncherError as exc:
        return _fail(str(exc))
    unreachable = _unreachable_hosts(cfg)
    if unreachable:
        lines = "; ".join(f"{host} ({why})" for host, why in unreachable)
        return _fail(f"cannot reach {lines} over ssh; bfrun needs passwordless ssh to every "
                     "remote host (check -p/--ssh-port)")
    failure_dir = tempfile.mkdtemp(prefix="bfrun-")
    try:
        env = child_env(cfg, os.environ, failure_dir, launcher)
        argv_ = build_command(cfg, launcher, env)
        if cfg.verbose:
            print(shlex.join(argv_), file=sys.stderr, flush=True)
        code, signals = _supervise(argv_, env)
        stopped = _stop_leftovers(failure_dir)
        if stopped:
            print(f"bfrun: stopped {stopped} process(es) of the job that outlived mpirun",
                  file=sys.stderr)
        if code != 0:
            print(_failure_line(failure_dir, code, signals), file=sys.stderr, flush=True)
        return code
    finally:
        shutil.rmtree(failure_dir, ignore_errors=True)


def _fail(message: str) -> int:
    print(f"bfrun: {message}", file=sys.stderr, flush=True)
    return 1


def _failure_line(failure_dir: str, code: int, signals) -> str:
    record = first_failure(failure_dir)
    if record is not None:
        return f"bfrun: rank {record['rank']} failed first: {record['error']}"
    if signals:
        return (f"bfrun: stopped by {signal.Signals(signals[0]).name}; "
                f"the job ended with exit code {code}")
    return (f"bfrun: the job failed with exit code {code} (no rank reported a Python exception; "
            "see the MPI launcher's message above)")


# ---- remote hosts -------------------------------------------------------------------------------

def is_local_host(name: str) -> bool:
    """True when ``name`` resolves to an address of this machine (loopback or an own interface)."""
    if name == "localhost":
        return True
    try:
        infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        return False
    for family, _, _, _, address in infos:
        if address[0].startswith("127.") or address[0] == "::1":
            return True
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.bind((address[0], 0))  # succeeds only for an address this machine owns
            return True
        except OSError:
            continue
    return False


def ssh_reachable(host: str, port=None, tries: int = 3):
    """Run ``ssh host true`` up to ``tries`` times; return None on success, else the last error."""
    argv = ["ssh", "-o", "StrictHostKeyChecking=no", "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=10"]
    if port is not None:
        argv += ["-p", str(port)]
    argv += [host, "true"]
    error = "unknown error"
    for attempt in range(tries):
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=30)
        except FileNotFoundError:
            return "no ssh client installed"
        except subprocess.TimeoutExpired:
            error = "timed out"
        else:
            if done.returncode == 0:
                return None
            lines = done.stderr.strip().splitlines()
            error = lines[-1] if lines else f"ssh exit code {done.returncode}"
        if attempt + 1 < tries:
            time.sleep(1)
    return error


def _unreachable_hosts(cfg: LaunchConfig):
    remote = [host for host, _ in cfg.hosts if not is_local_host(host)]
    if not remote:
        return []
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, len(remote))) as pool:
        errors = list(pool.map(lambda host: ssh_reachable(host, cfg.ssh_port), remote))
    return [(host, error) for host, error in zip(remote, errors) if error is not None]


# ---- the child process --------------------------------------------------------------------------

def _die_with_parent():
    """Runs in the child before exec: ask Linux to SIGTERM mpirun if bfrun itself is killed."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG
    except Exception:
        pass


def _supervise(argv, env):
    """Run ``argv``, forwarding signals to it; return (exit code, signals received)."""
    received = []
    child = []

    def forward(signum, _frame):
        received.append(signum)
        if child and child[0].returncode is None:
            try:
                child[0].send_signal(signum)
            except ProcessLookupError:
                pass

    in_main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, forward) for sig in _FORWARDED_SIGNALS} if in_main else {}
    try:
        preexec = _die_with_parent if sys.platform.startswith("linux") else None
        try:
            child.append(subprocess.Popen(argv, env=env, preexec_fn=preexec))
        except OSError as exc:
            print(f"bfrun: cannot start {argv[0]}: {exc}", file=sys.stderr)
            return 1, received
        for signum in received:  # arrived between installing the handler and the start
            child[0].send_signal(signum)
        code = child[0].wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return (128 - code if code < 0 else code), received


def _job_processes(failure_dir: str):
    """Pids whose environment carries this job's ``BLUEFOG_FAILURE_DIR`` (Linux /proc only)."""
    marker = b"\0" + f"{FAILURE_DIR_ENV}={failure_dir}".encode() + b"\0"
    me = os.getpid()
    pids = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return pids
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                if marker in b"\0" + handle.read() + b"\0":
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def _stop_leftovers(failure_dir: str, grace: float = 2.0) -> int:
    """SIGTERM, then SIGKILL, every local process of the job still alive; return how many."""
    pids = _job_processes(failure_dir)
    found = len(pids)
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        time.sleep(0.05)
        pids = [pid for pid in pids if pid in _job_processes(failure_dir)]
    for pid in pids:
        _signal(pid, signal.SIGKILL)
    return found


def _signal(pid: int, signum) -> None:
    try:
        os.kill(pid, signum)
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main())
