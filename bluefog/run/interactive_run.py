"""``ibfrun``: an ipyparallel cluster whose engines are Bluefog ranks, for Jupyter and IPython.

``ibfrun start -np 4`` starts an ipyparallel controller and 4 engines under the same MPI launcher
as ``bfrun`` (it runs ``bfrun -np 4 ... python -m bluefog.run.ipengine``), so the engines form one
MPI job and engine ``i`` is rank ``i``.  It stays in the foreground until ``ibfrun stop`` (from
another shell), Ctrl-C, or the death of the controller or the job, and then stops all it started.

Files, under the IPython profile directory (``$IPYTHONDIR/profile_<profile>``, default profile
``bluefog``): ``pid/ibfrun.json`` records the pids of this supervisor, the controller, the launcher
and the engines, which is how ``ibfrun stop`` finds them; ``log/ibfrun-*.log`` hold the controller's
and the engines' output unless ``--verbose``.

Example::

    $ ibfrun start -np 4            # terminal 1, stays in the foreground
    >>> import ipyparallel as ipp   # notebook
    >>> rc = ipp.Client(profile="bluefog")
    >>> %%px
    ... import bluefog.torch as bf
    ... bf.init()
    $ ibfrun stop                   # terminal 2
"""

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from typing import List, Optional

from bluefog import __version__
from bluefog.run.config import _port, _positive_int, parse_hostfile, parse_hosts

STATE_FILE = os.path.join("pid", "ibfrun.json")
_CONTROLLER_MARK = "ipyparallel.controller"
_LAUNCHER_MARK = "bluefog.run.run"
_ENGINE_MARK = "bluefog.run.ipengine"


class _Stop(Exception):
    """A signal asked the supervisor to shut the cluster down."""


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ibfrun", allow_abbrev=False,
        description="Start or stop an ipyparallel cluster whose engines are Bluefog ranks.",
        epilog="Example: ibfrun start -np 4   then, in Jupyter: "
               "rc = ipyparallel.Client(profile='bluefog')")
    parser.add_argument("-v", "--version", action="version", version=__version__,
                        help="print the bluefog version and exit")
    commands = parser.add_subparsers(dest="action", metavar="{start,stop}")
    commands.required = True
    start = commands.add_parser("start", help="start a controller and N engines (foreground)")
    start.add_argument("-np", "--num-proc", dest="num_proc", type=_positive_int, required=True,
                       metavar="N", help="number of engines (ranks)")
    start.add_argument("-p", "--ssh-port", dest="ssh_port", type=_port, metavar="PORT",
                       help="ssh port used to reach remote hosts")
    start.add_argument("--network-interface", dest="network_interface", metavar="NIC",
                       help="network interface for MPI TCP traffic (e.g. eth0)")
    start.add_argument("--use-infiniband", dest="use_infiniband", action="store_true",
                       help="let MPI use InfiniBand")
    start.add_argument("--ipython-profile", dest="profile", default="bluefog", metavar="NAME",
                       help="IPython profile of the cluster (default: bluefog)")
    start.add_argument("--enable-heartbeat", dest="enable_heartbeat", action="store_true",
                       help="let engines shut down when they stop hearing from the controller")
    hosts = start.add_mutually_exclusive_group()
    hosts.add_argument("-H", "--hosts", dest="hosts", metavar="H1:S1,H2:S2",
                       help="hosts and their slots (default localhost:N)")
    hosts.add_argument("-hostfile", "--hostfile", dest="hostfile", metavar="FILE",
                       help="file with lines '<host> slots=<n>'")
    start.add_argument("--verbose", action="store_true",
                       help="show the controller's and engines' output and the launch command")
    start.add_argument("--extra-mpi-flags", dest="extra_mpi_flags", default="", metavar="FLAGS",
                       help="flags passed to mpirun as they are")
    stop = commands.add_parser("stop", help="stop the cluster of a profile")
    stop.add_argument("--ipython-profile", dest="profile", default="bluefog", metavar="NAME",
                      help="IPython profile of the cluster (default: bluefog)")
    return parser


def profile_dir(profile: str) -> str:
    """``$IPYTHONDIR/profile_<profile>`` (IPython's own rule for where a profile lives)."""
    try:
        from IPython.paths import get_ipython_dir
        base = get_ipython_dir()
    except ImportError:
        base = os.environ.get("IPYTHONDIR") or os.path.join(os.path.expanduser("~"), ".ipython")
    return os.path.join(base, f"profile_{profile}")


# ---- processes ------------------------------------------------------------------------------------

def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: Optional[int], mark: str) -> bool:
    """True if ``pid`` runs and its command line holds ``mark`` (not a reused pid)."""
    return bool(pid) and mark in _cmdline(pid)


def _supervisor_alive(pid: Optional[int]) -> bool:
    return pid != os.getpid() and (_alive(pid, "interactive_run") or _alive(pid, "ibfrun"))


def _terminate(pid: Optional[int], mark: str, first=signal.SIGTERM, grace: float = 10.0):
    """Send ``first``, wait up to ``grace`` seconds, then SIGKILL; only if ``pid`` is still ours."""
    if not _alive(pid, mark):
        return
    try:
        os.kill(pid, first)
    except OSError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _alive(pid, mark):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def _read_state(directory: str) -> dict:
    try:
        with open(os.path.join(directory, STATE_FILE)) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return {}


def _write_state(directory: str, state: dict):
    path = os.path.join(directory, STATE_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as handle:
        json.dump(state, handle)
    os.replace(path + ".tmp", path)


def _stop_processes(state: dict):
    """The launcher first (it takes the engines down with it), then the controller, then strays."""
    _terminate(state.get("launcher"), _LAUNCHER_MARK, grace=15.0)
    _terminate(state.get("controller"), _CONTROLLER_MARK, first=signal.SIGINT)
    for pid in state.get("engines", []):
        _terminate(pid, _ENGINE_MARK, grace=3.0)


# ---- start ---------------------------------------------------------------------------------------

def _log(directory: str, name: str, verbose: bool):
    if verbose:
        return None
    os.makedirs(os.path.join(directory, "log"), exist_ok=True)
    return open(os.path.join(directory, "log", f"ibfrun-{name}.log"), "w")


def _wait_for_files(paths: List[str], controller: subprocess.Popen, timeout: float):
    deadline = time.monotonic() + timeout
    while not all(os.path.exists(p) for p in paths):
        if controller.poll() is not None:
            raise RuntimeError(f"the ipyparallel controller exited with code {controller.returncode}"
                               " before it was ready (see its log, or run with --verbose)")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the ipyparallel controller did not write {paths[0]} within "
                               f"{timeout:.0f} s")
        time.sleep(0.2)


def _copy_to_remote_hosts(hosts, files: List[str], ssh_port: Optional[int]):
    """Give remote engines the controller's connection files (same path as here).

    Each file goes through ``ssh host 'cat > tmp && mv tmp file'``: no scp needed, and a host that
    shares this file system (the same file) is left intact.
    """
    from bluefog.run.run import is_local_host, ssh_argv
    for host in sorted({h for h, _ in hosts if not is_local_host(h)}):
        for path in files:
            target = shlex.quote(path)
            temp = shlex.quote(f"{path}.{os.getpid()}.tmp")
            script = (f"mkdir -p {shlex.quote(os.path.dirname(path))} && cat > {temp} && "
                      f"mv -f {temp} {target}")
            with open(path, "rb") as handle:
                subprocess.run(ssh_argv(host, ssh_port) + [script], stdin=handle, check=True,
                               capture_output=True, timeout=60)


def _launcher_argv(args, hosts) -> List[str]:
    """``bfrun`` flags for the engines' job, then the engine command."""
    argv = [sys.executable, "-m", "bluefog.run.run", "-np", str(args.num_proc)]
    if args.hosts:
        argv += ["-H", args.hosts]
    elif args.hostfile:
        argv += ["-H", ",".join(f"{h}:{s}" for h, s in hosts)]
    if args.ssh_port:
        argv += ["-p", str(args.ssh_port)]
    if args.network_interface:
        argv += ["--network-interface", args.network_interface]
    if args.use_infiniband:
        argv.append("--use-infiniband")
    if args.extra_mpi_flags:
        argv.append(f"--extra-mpi-flags={args.extra_mpi_flags}")
    if args.verbose:
        argv.append("--verbose")
    argv += [sys.executable, "-m", "bluefog.run.ipengine", f"--profile={args.profile}"]
    if not args.enable_heartbeat:
        argv.append("--IPEngine.max_heartbeat_misses=0")
    return argv


def _wait_for_engines(args, launcher: subprocess.Popen, timeout: float) -> List[int]:
    """Wait until ``-np`` engines registered; return their pids (engine id order = rank order)."""
    import ipyparallel
    client = ipyparallel.Client(profile=args.profile)
    try:
        deadline = time.monotonic() + timeout
        while len(client.ids) < args.num_proc:
            if launcher.poll() is not None:
                raise RuntimeError(f"the engines' job ended with code {launcher.returncode} before "
                                   "all engines registered (see its log, or run with --verbose)")
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(client.ids)} of {args.num_proc} engines registered "
                                   f"within {timeout:.0f} s (BLUEFOG_START_TIMEOUT)")
            time.sleep(0.5)
        return [int(pid) for pid in client[:].apply_sync(os.getpid)]
    finally:
        client.close()


def start(args) -> int:
    """Run the cluster in the foreground; returns the exit code."""
    try:
        import ipyparallel  # noqa: F401
    except ImportError:
        print("ibfrun: ipyparallel is not installed; pip install 'bluefog-gossip[interactive]' "
              "(or pip install ipyparallel)", file=sys.stderr)
        return 1
    from bluefog.config import start_timeout
    from bluefog.run.run import is_local_host
    try:
        hosts = (parse_hosts(args.hosts) if args.hosts else
                 parse_hostfile(args.hostfile) if args.hostfile else [("localhost", args.num_proc)])
        timeout = start_timeout()
    except (OSError, ValueError) as exc:
        print(f"ibfrun: {exc}", file=sys.stderr)
        return 2
    directory = profile_dir(args.profile)
    stale = _read_state(directory)
    if _supervisor_alive(stale.get("supervisor")):
        print(f"ibfrun: a cluster of profile {args.profile!r} is already running (pid "
              f"{stale['supervisor']}); run 'ibfrun stop --ipython-profile {args.profile}' first",
              file=sys.stderr)
        return 1
    if stale:
        _stop_processes(stale)           # a cluster left over from an ibfrun that was killed
    security = os.path.join(directory, "security")
    files = [os.path.join(security, f"ipcontroller-{kind}.json") for kind in ("engine", "client")]
    for path in files:
        if os.path.exists(path):
            os.unlink(path)
    remote = any(not is_local_host(h) for h, _ in hosts)
    state = {"supervisor": os.getpid(), "profile": args.profile}
    _write_state(directory, state)

    def on_signal(signum, _frame):
        raise _Stop(signum)

    handled = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
    previous = {sig: signal.signal(sig, on_signal) for sig in handled}
    controller = launcher = None
    code = 0
    try:
        controller_argv = [sys.executable, "-m", _CONTROLLER_MARK, f"--profile={args.profile}",
                           "--ip=*" if remote else "--ip=127.0.0.1"]
        controller = subprocess.Popen(controller_argv, stdin=subprocess.DEVNULL,
                                      stdout=_log(directory, "controller", args.verbose),
                                      stderr=subprocess.STDOUT if not args.verbose else None,
                                      start_new_session=True)
        state["controller"] = controller.pid
        _write_state(directory, state)
        _wait_for_files(files, controller, timeout=min(timeout, 120.0))
        if remote:
            _copy_to_remote_hosts(hosts, files, args.ssh_port)
        argv = _launcher_argv(args, hosts)
        if args.verbose:
            print("ibfrun: " + shlex.join(argv), file=sys.stderr, flush=True)
        launcher = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                    stdout=_log(directory, "engines", args.verbose),
                                    stderr=subprocess.STDOUT if not args.verbose else None,
                                    start_new_session=True)
        state["launcher"] = launcher.pid
        _write_state(directory, state)
        state["engines"] = _wait_for_engines(args, launcher, timeout)
        _write_state(directory, state)
        print(f"ibfrun: {args.num_proc} engines are ready. Connect with "
              f"ipyparallel.Client(profile={args.profile!r}); stop with "
              f"'ibfrun stop --ipython-profile {args.profile}'.", flush=True)
        while controller.poll() is None and launcher.poll() is None:
            time.sleep(1.0)
        which = "controller" if controller.poll() is not None else "engines' job"
        print(f"ibfrun: the {which} ended; stopping the cluster.", file=sys.stderr, flush=True)
        code = 1
    except _Stop as stop:
        code = 130 if stop.args[0] == signal.SIGINT else 0
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"ibfrun: {exc}", file=sys.stderr, flush=True)
        code = 1
    finally:
        for sig in handled:
            signal.signal(sig, signal.SIG_IGN)        # finish the clean-up undisturbed
        _stop_processes(state)
        for child in (launcher, controller):
            if child is not None:
                try:
                    child.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        if _read_state(directory).get("supervisor") == os.getpid():
            try:
                os.unlink(os.path.join(directory, STATE_FILE))
            except OSError:
                pass
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if code == 130:
        raise KeyboardInterrupt
    return code


# ---- stop ----------------------------------------------------------------------------------------

def stop(args) -> int:
    """Stop the cluster of ``--ipython-profile`` and everything it started; exit 0 if none ran."""
    directory = profile_dir(args.profile)
    state = _read_state(directory)
    if not state:
        print(f"ibfrun: no cluster is running for profile {args.profile!r}", file=sys.stderr)
        return 0
    supervisor = state.get("supervisor")
    if _supervisor_alive(supervisor):
        os.kill(supervisor, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _supervisor_alive(supervisor):
            time.sleep(0.1)
    _stop_processes(state)               # whatever the supervisor did not (or could not) stop
    try:
        os.unlink(os.path.join(directory, STATE_FILE))
    except OSError:
        pass
    print(f"ibfrun: stopped the cluster of profile {args.profile!r}", file=sys.stderr)
    return 0


def interrupt_hanged_processes(profile: str = "bluefog", timeout: float = 0.2) -> List[int]:
    """SIGINT every engine of ``profile`` that does not answer a trivial task within ``timeout``
    seconds (this machine's engines only); returns their engine ids (= ranks).

    For a notebook cell stuck in one engine, e.g. a collective that not every engine called.

    Example::

        from bluefog.run.interactive_run import interrupt_hanged_processes
        interrupt_hanged_processes()     # then rc[:].execute(...) again
    """
    import ipyparallel
    pids = _read_state(profile_dir(profile)).get("engines", [])
    client = ipyparallel.Client(profile=profile)
    try:
        probes = {eid: client[eid].apply_async(os.getpid) for eid in client.ids}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(p.ready() for p in probes.values()):
            time.sleep(0.01)
        hung = sorted(eid for eid, probe in probes.items() if not probe.ready())
        for eid in hung:
            if eid < len(pids) and _alive(pids[eid], _ENGINE_MARK):
                os.kill(pids[eid], signal.SIGINT)
        return hung
    finally:
        client.close()


def main(argv=None) -> int:
    """Entry point of the ``ibfrun`` console script."""
    args = make_parser().parse_args(argv)
    if args.action == "start":
        try:
            return start(args)
        except KeyboardInterrupt:
            return 130
    return stop(args)


if __name__ == "__main__":
    sys.exit(main())
