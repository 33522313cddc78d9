"""Which network interfaces a multi-host job should use when ``--network-interface`` is not given.

``bfrun`` asks every host in the job for its interfaces that are up and carry an IPv4 address (the
same Python, at the same path, run over ssh; the local host directly) and keeps the names every host
has, without loopback and without interfaces whose address is the same on two hosts (such as
``docker0`` at 172.17.0.1 everywhere, which connects nothing). The result, e.g. ``"eth0"`` or
``"eth0,ib0"``, goes to Open MPI's ``btl_tcp_if_include`` and to ``NCCL_SOCKET_IFNAME``.

Example::

    common_interfaces([("server1", 4), ("server2", 4)])   # 'eth0'
"""

import concurrent.futures
import subprocess
import sys
from typing import Dict, List, Optional, Sequence, Tuple

# Prints "name address" for each interface that is up, not loopback, and has an IPv4 address.
LIST_CODE = r"""
import fcntl, socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _, name in socket.if_nameindex():
    req = struct.pack("256s", name.encode()[:15])
    try:
        flags = struct.unpack("H", fcntl.ioctl(s.fileno(), 0x8913, req)[16:18])[0]
        addr = socket.inet_ntoa(fcntl.ioctl(s.fileno(), 0x8915, req)[20:24])
    except OSError:
        continue
    if flags & 0x1 and not flags & 0x8:
        print(name, addr)
"""

__all__ = ["NicError", "LIST_CODE", "host_interfaces", "choose_common", "common_interfaces",
           "check_interfaces"]


class NicError(RuntimeError):
    """The hosts' interfaces could not be listed, or they have none in common."""


def _parse(text: str) -> Dict[str, str]:
    found = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) == 2:
            found[words[0]] = words[1]
    return found


def host_interfaces(host: str, ssh_port: Optional[int] = None, local: bool = False,
                    python: str = sys.executable) -> Dict[str, str]:
    """``{interface: IPv4 address}`` of ``host`` (up, not loopback).

    Raises:
        NicError: the listing could not be run there.
    """
    if local:
        argv = [python, "-c", LIST_CODE]
    else:
        from bluefog.run.run import ssh_argv
        argv = ssh_argv(host, ssh_port) + [python, "-c", _quote(LIST_CODE)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NicError(f"cannot list the network interfaces of {host}: {exc}") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise NicError(f"cannot list the network interfaces of {host} ({last}); "
                       "pass --network-interface")
    return _parse(done.stdout)


def _quote(code: str) -> str:
    import shlex
    return shlex.quote(code)


def choose_common(per_host: Dict[str, Dict[str, str]]) -> List[str]:
    """Interface names present on every host, minus those with the same address on two hosts."""
    hosts = list(per_host)
    if not hosts:
        return []
    common = set(per_host[hosts[0]])
    for host in hosts[1:]:
        common &= set(per_host[host])
    chosen = []
    for name in sorted(common):
        addresses = [per_host[host][name] for host in hosts]
        if len(set(addresses)) == len(addresses):
            chosen.append(name)
    return chosen


def _all_hosts(hosts: Sequence[Tuple[str, int]], ssh_port: Optional[int]):
    from bluefog.run.run import is_local_host
    names = list(dict.fromkeys(host for host, _ in hosts))
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, len(names))) as pool:
        futures = {name: pool.submit(host_interfaces, name, ssh_port, is_local_host(name))
                   for name in names}
        return {name: future.result() for name, future in futures.items()}


def check_interfaces(hosts: Sequence[Tuple[str, int]], wanted: str,
                     ssh_port: Optional[int] = None) -> None:
    """Make sure every interface in ``wanted`` (comma-separated) is up with an IPv4 address on
    every host, so that a wrong ``--network-interface`` is an error at start, not a stuck job.

    Raises:
        NicError: a host lacks one, or cannot be asked.
    """
    per_host = _all_hosts(hosts, ssh_port)
    for host, nics in per_host.items():
        missing = [name for name in wanted.split(",") if name and name not in nics]
        if missing:
            raise NicError(f"--network-interface {wanted}: {', '.join(missing)} is not up with an "
                           f"IPv4 address on {host} (it has: {', '.join(sorted(nics)) or 'none'}); "
                           "choose an interface that every host has")


def common_interfaces(hosts: Sequence[Tuple[str, int]], ssh_port: Optional[int] = None) -> str:
    """Comma-separated interfaces for a job on ``hosts`` (see the module docstring).

    Raises:
        NicError: a host cannot be asked, or no interface fits.
    """
    per_host = _all_hosts(hosts, ssh_port)
    chosen = choose_common(per_host)
    if not chosen:
        listing = "; ".join(f"{host}: {', '.join(sorted(nics)) or 'none'}"
                            for host, nics in per_host.items())
        raise NicError("the hosts have no network interface in common (up, with an IPv4 address, "
                       f"not loopback): {listing}; pass --network-interface NAME")
    return ",".join(chosen)
