"""``bluefog.run.env_util``: the Bluefog 0.3.0 import path of the launcher's environment helpers.

Kept so that old tooling importing it still runs; ``bfrun`` itself works through
:mod:`bluefog.run.mpi_command`, and the names here answer from it (the same variable names, the
same forwarding rule, the same launcher detection).

Example::

    from bluefog.run import env_util
    if env_util.is_open_mpi_installed():
        env = env_util.set_env_from_args(dict(os.environ), args)
"""

import importlib.util
import sys
from typing import MutableMapping

from bluefog.run.mpi_command import (LOG_LEVEL_ENV, OPEN_MPI, TIMELINE_ENV, LauncherError,
                                     find_launcher, forwarded_names, identify_launcher)

BLUEFOG_TIMELINE = TIMELINE_ENV
BLUEFOG_LOG_LEVEL = LOG_LEVEL_ENV
#: Patterns of the variable names that ``bfrun`` does not forward to the ranks.
IGNORE_REGEXES = {r"BASH_FUNC_.*\(\)", "OLDPWD"}

__all__ = ["BLUEFOG_TIMELINE", "BLUEFOG_LOG_LEVEL", "IGNORE_REGEXES", "is_exportable",
           "is_open_mpi_installed", "is_ipyparallel_installed", "set_env_from_args"]


def is_exportable(name: str) -> bool:
    """Whether ``bfrun`` forwards the environment variable ``name`` to every rank."""
    return bool(forwarded_names({name: ""}))


def is_open_mpi_installed() -> bool:
    """Whether the launcher ``bfrun`` would use is Open MPI's ``mpirun`` (the reason goes to stderr
    when it is not; ``bfrun`` also runs MPICH-style launchers)."""
    try:
        launcher = identify_launcher(find_launcher())
    except LauncherError as exc:
        print(f"Open MPI not found: {exc}", file=sys.stderr)
        return False
    if launcher.flavor != OPEN_MPI:
        print(f"{launcher.path} is not Open MPI's mpirun.", file=sys.stderr)
        return False
    return True


def is_ipyparallel_installed() -> bool:
    """Whether ipyparallel (needed by ``ibfrun``) can be imported."""
    return importlib.util.find_spec("ipyparallel") is not None


def set_env_from_args(env: MutableMapping[str, str], args) -> MutableMapping[str, str]:
    """Add what ``args`` asks for to ``env`` and return it: ``BLUEFOG_TIMELINE`` from
    ``args.timeline_filename``, ``BLUEFOG_LOG_LEVEL=debug`` from ``args.verbose``.

    ``args`` may be the ``argparse`` namespace of the launcher or a
    :class:`~bluefog.run.config.LaunchConfig`; missing attributes count as unset.
    """
    timeline = getattr(args, "timeline_filename", None)
    if timeline:
        env[BLUEFOG_TIMELINE] = str(timeline)
    if getattr(args, "verbose", False):
        env[BLUEFOG_LOG_LEVEL] = "debug"
    return env
