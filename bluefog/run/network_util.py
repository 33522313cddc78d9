"""``bluefog.run.network_util``: the Bluefog 0.3.0 import path of the launcher's network helpers.

Kept so that old tooling importing it still runs. ``filter_local_addresses`` answers with the
same host test ``bfrun`` uses to tell remote hosts from this machine.

Example::

    from bluefog.run import network_util
    remote = network_util.filter_local_addresses(["localhost", "server2"])
"""

import concurrent.futures
import socket
from typing import Callable, Dict, List, Sequence, Set

from bluefog.run.run import is_local_host

#: How many times the launcher tries ``ssh`` to a remote host before giving up.
SSH_RETRIES = 3

__all__ = ["SSH_RETRIES", "execute_function_multithreaded", "get_local_host_intfs",
           "filter_local_addresses"]


def execute_function_multithreaded(function: Callable, args_list: Sequence[Sequence],
                                   max_workers: int = 100) -> Dict[int, object]:
    """Call ``function(*args)`` for every ``args`` of ``args_list`` on a thread pool.

    Returns:
        ``{index: result}``, index being the position in ``args_list``. An exception raised by a
        call is raised here.
    """
    args_list = [tuple(args) for args in args_list]
    if not args_list:
        return {}
    workers = min(max_workers, len(args_list))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(function, *args) for args in args_list]
        return {index: future.result() for index, future in enumerate(futures)}


def get_local_host_intfs() -> Set[str]:
    """Names of this machine's network interfaces (``lo``, ``eth0``, ...)."""
    return {name for _, name in socket.if_nameindex()}


def filter_local_addresses(all_host_names: Sequence[str]) -> List[str]:
    """The host names of ``all_host_names`` that are not this machine, in their order."""
    local = execute_function_multithreaded(is_local_host, [(h,) for h in all_host_names])
    return [host for index, host in enumerate(all_host_names) if not local[index]]
