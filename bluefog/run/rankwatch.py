"""The per-rank watcher ``bfrun`` puts in front of every rank: it runs the rank's command as its only
child and records how it ended, so that ``bfrun`` can name each dead rank and its cause whatever the
MPI launcher prints.

``bfrun`` starts ``python -m bluefog.run.rankwatch COMMAND...`` on every slot. The watcher

- writes ``<dir>/start<R>.json`` (rank, host, pid, start time) into ``$BLUEFOG_FAILURE_DIR``
  (creating it on a remote host), then runs COMMAND with the environment it was given (the MPI
  launcher's variables included, so the child is the MPI process);
- passes the child's stderr through unchanged, keeping its last few kilobytes, so that a Python
  traceback printed before ``bf.init()`` (an ``ImportError``, say) can be named;
- forwards SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 and SIGCONT to the child, and asks
  Linux to SIGKILL the child should the watcher itself die;
- when the child ends, writes ``<dir>/end<R>.json`` (exit code or signal name, end time, the last
  traceback line if any) and ends the same way: the same exit code, or the same signal (without a
  core dump), so the MPI launcher sees what it would have seen without the watcher.

Example::

    BLUEFOG_FAILURE_DIR=/tmp/job python -m bluefog.run.rankwatch python train.py
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

FAILURE_DIR_ENV = "BLUEFOG_FAILURE_DIR"
RANK_ENVS = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK")
FORWARDED = tuple(getattr(signal, name) for name in
                  ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGCONT")
                  if hasattr(signal, name))
TAIL_BYTES = 8192

__all__ = ["write_record", "last_error_line", "main"]


def write_record(directory: str, name: str, record: dict) -> None:
    """Write ``record`` as ``<directory>/<name>`` atomically; never raises."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=directory)
        with os.fdopen(fd, "w") as handle:
            json.dump(record, handle)
        os.replace(tmp, os.path.join(directory, name))
    except (OSError, TypeError, ValueError):
        pass


def last_error_line(tail: bytes):
    """The ``Type: message`` line ending the last Python traceback in ``tail``, or None."""
    lines = tail.decode(errors="replace").splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call")]
    if not starts:
        return None
    for line in lines[starts[-1] + 1:]:
        if line and not line[0].isspace() and ("Error" in line or "Exception" in line
                                               or ":" in line):
            return " ".join(line.split())[:300]
    return None


def _die_with_parent():
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _copy_stderr(source: int, tail: bytearray):
    """Copy the child's stderr to ours until it closes, keeping the last TAIL_BYTES."""
    while True:
        try:
            chunk = os.read(source, 65536)
        except OSError:
            return
        if not chunk:
            return
        try:
            os.write(2, chunk)
        except OSError:
            pass
        tail += chunk
        if len(tail) > TAIL_BYTES:
            del tail[:len(tail) - TAIL_BYTES]


def _end_like(returncode: int):
    """Exit with the child's exit code, or die of the child's signal without dumping core."""
    sys.stdout.flush()
    if returncode >= 0:
        os._exit(returncode)
    signum = -returncode
    try:
        import resource
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, ValueError, OSError):
        pass
    try:
        if signum not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signum])
        os.kill(os.getpid(), signum)
    except (OSError, ValueError):
        pass
    os._exit(128 + signum)


def main(argv=None) -> int:
    command = list(sys.argv[1:] if argv is None else argv)
    if not command:
        print("usage: python -m bluefog.run.rankwatch COMMAND [ARGS...]", file=sys.stderr)
        return 2
    rank = next((int(os.environ[name]) for name in RANK_ENVS if os.environ.get(name, "").isdigit()),
                None)
    directory = os.environ.get(FAILURE_DIR_ENV)
    if directory:
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError:
            directory = None
    record = {"rank": rank, "host": socket.gethostname(), "pid": os.getpid(), "start": time.time()}
    if directory and rank is not None:
        write_record(directory, f"start{rank}.json", record)
    child = []

    def forward(signum, _frame):
        if child and child[0].returncode is None:
            try:
                child[0].send_signal(signum)
            except OSError:
                pass

    for signum in FORWARDED:
        signal.signal(signum, forward)
    read_end, write_end = os.pipe()
    try:
        child.append(subprocess.Popen(command, stderr=write_end, close_fds=False,
                                      preexec_fn=_die_with_parent))
    except OSError as exc:
        os.close(read_end)
        os.close(write_end)
        print(f"bfrun: rank {rank}: cannot run {command[0]!r}: {exc}", file=sys.stderr, flush=True)
        record.update(end=time.time(), code=127, signal=None, error=f"cannot run {command[0]!r}: {exc}")
        if directory and rank is not None:
            write_record(directory, f"end{rank}.json", record)
        return 127
    os.close(write_end)
    tail = bytearray()
    copier = threading.Thread(target=_copy_stderr, args=(read_end, tail), daemon=True)
    copier.start()
    returncode = child[0].wait()
    end = time.time()
    copier.join(timeout=1.0)  # a grandchild may hold the pipe open: do not wait for it
    signame = None
    if returncode < 0:
        try:
            signame = signal.Signals(-returncode).name
        except ValueError:
            signame = f"signal {-returncode}"
    record.update(end=end, code=returncode if returncode >= 0 else None, signal=signame,
                  error=last_error_line(bytes(tail)) if returncode != 0 else None)
    if directory and rank is not None:
        write_record(directory, f"end{rank}.json", record)
    _end_like(returncode)
    return returncode  # not reached


if __name__ == "__main__":
    sys.exit(main())
