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
from bluefog.run.failure import FAILURE_DIR_ENV
from bluefog.run.fates import (death_line, fault_tolerant_summary, load_directory, parse_records,
                               rank_hosts, read_fates, root_cause_line)
from bluefog.run.mpi_command import (LauncherError, build_command, check_fault_tolerance,
                                     child_env, find_launcher, identify_launcher)
from bluefog.run.nics import NicError, check_interfaces, common_interfaces

_FORWARDED_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                           if hasattr(signal, name))


def main(argv=None) -> int:
    """Entry point of the ``bfrun`` console script; returns the exit code."""
    cfg = parse_args(argv)
    try:
        launcher = identify_launcher(find_launcher(cfg.prefix))
        if cfg.fault_tolerant:
            check_fault_tolerance(launcher)
    except LauncherError as exc:
        return _fail(str(exc))
    unreachable = _unreachable_hosts(cfg)
    if unreachable:
        lines = "; ".join(f"{host} ({why})" for host, why in unreachable)
        return _fail(f"cannot reach {lines} over ssh; bfrun needs passwordless ssh to every "
                     "remote host (check -p/--ssh-port)")
    if _remote_hosts(cfg):
        try:
            chosen = any("btl_tcp_if_" in flag for flag in cfg.extra_mpi_flags)
            if cfg.network_interface is None and not chosen:
                cfg.network_interface = common_interfaces(cfg.hosts, cfg.ssh_port)
                if cfg.verbose:
                    print(f"bfrun: using network interface(s) {cfg.network_interface}",
                          file=sys.stderr)
            elif cfg.network_interface is not None:
                check_interfaces(cfg.hosts, cfg.network_interface, cfg.ssh_port)
        except NicError as exc:
            return _fail(str(exc))
    failure_dir = tempfile.mkdtemp(prefix="bfrun-")
    try:
        env = child_env(cfg, os.environ, failure_dir, launcher)
        argv_ = build_command(cfg, launcher, env)
        if cfg.verbose:
            print(shlex.join(argv_), file=sys.stderr, flush=True)
        job_start = time.time()
        reporter = _LiveDeaths(failure_dir, job_start) if cfg.fault_tolerant else None
        try:
            code, signals = _supervise(argv_, env)
        finally:
            if reporter is not None:
                reporter.stop()
        stopped = _stop_leftovers(failure_dir)
        if stopped:
            print(f"bfrun: stopped {stopped} process(es) of the job that outlived mpirun",
                  file=sys.stderr)
        records = load_directory(failure_dir)       # before the remote clean-up: the file system
        records.update(_remote_records(cfg, failure_dir))   # may be shared
        placed = rank_hosts(cfg.hosts, cfg.num_proc)
        ranks_of = {}
        for rank, host in enumerate(placed):
            ranks_of.setdefault(host, []).append(rank)
        fates = read_fates(records, cfg.num_proc, placed)
        if cfg.fault_tolerant and not signals:
            lines, ft_code = fault_tolerant_summary(fates, job_start, ranks_of)
            for line in lines:
                print(f"bfrun: {line}", file=sys.stderr)
            code = ft_code if any(f.finished for f in fates) else (code or ft_code)
        else:
            if code == 0 and records and not all(f.finished for f in fates):
                code = 1    # e.g. mpirun ended "successfully" after losing a host's daemon
            if code != 0:
                print(_failure_line(fates, job_start, ranks_of, code, signals), file=sys.stderr)
        sys.stderr.flush()
        return code
    finally:
        shutil.rmtree(failure_dir, ignore_errors=True)


def _fail(message: str) -> int:
    print(f"bfrun: {message}", file=sys.stderr, flush=True)
    return 1


def _failure_line(fates, job_start, ranks_of, code: int, signals) -> str:
    if signals:
        return (f"bfrun: stopped by {signal.Signals(signals[0]).name}; "
                f"the job ended with exit code {code}")
    line = root_cause_line(fates, job_start, ranks_of)
    if line is not None:
        return f"bfrun: {line}"
    return (f"bfrun: the job failed with exit code {code}, and no rank left an exit status "
            "(see the MPI launcher's message above)")


class _LiveDeaths:
    """While a fault-tolerant job runs, print a line for each local rank that dies."""

    def __init__(self, directory: str, job_start: float, period: float = 0.25):
        self._directory, self._start, self._period = directory, job_start, period
        self._seen = set()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bfrun-deaths", daemon=True)
        self._thread.start()

    def _run(self):
        while not self._done.wait(self._period):
            self._scan()

    def _scan(self):
        try:
            names = [n for n in os.listdir(self._directory)
                     if n.startswith("end") and n not in self._seen]
        except OSError:
            return
        for name in names:
            record = load_directory(self._directory).get(name)
            if record is None:
                continue
            self._seen.add(name)
            fate = read_fates({name: record}, int(record.get("rank", 0)) + 1)[-1]
            if fate.signal is not None or (fate.code or 0) != 0:
                print(f"bfrun: {death_line(fate, self._start)}; the others go on",
                      file=sys.stderr, flush=True)

    def stop(self):
        self._done.set()
        self._thread.join(timeout=5)


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
    argv = ssh_argv(host, port) + ["true"]
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


def _remote_hosts(cfg: LaunchConfig):
    return sorted({host for host, _ in cfg.hosts if not is_local_host(host)})


def ssh_argv(host: str, port=None):
    """``ssh`` with the options bfrun uses: no prompts, a connect timeout, ``-p`` if given."""
    argv = ["ssh", "-o", "StrictHostKeyChecking=no", "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=10"]
    if port is not None:
        argv += ["-p", str(port)]
    return argv + [host]


def _remote_records(cfg: LaunchConfig, directory: str):
    """Fetch (and delete) the rank records that remote hosts wrote into their copy of ``directory``."""
    remote = _remote_hosts(cfg)
    if not remote:
        return {}
    script = (f"cd {shlex.quote(directory)} 2>/dev/null && for f in *.json; do "
              "[ -f \"$f\" ] && printf '%s\\n' \"$f\" && cat \"$f\" && printf '\\n'; done; "
              f"rm -rf {shlex.quote(directory)}")

    def fetch(host):
        try:
            done = subprocess.run(ssh_argv(host, cfg.ssh_port) + [script], capture_output=True,
                                  text=True, stdin=subprocess.DEVNULL, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return []
        lines = done.stdout.splitlines()
        return list(zip(lines[0::2], lines[1::2]))

    records = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, len(remote))) as pool:
        for pairs in pool.map(fetch, remote):
            records.update(parse_records(pairs))
    return records


def _unreachable_hosts(cfg: LaunchConfig):
    remote = _remote_hosts(cfg)
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
