"""``bfrun`` command line -> :class:`LaunchConfig`.

All validation happens here, at the boundary: a bad value ends the program through
``argparse`` (a message naming the flag on stderr, exit code 2), never with a traceback.

Example::

    cfg = parse_args(["-np", "4", "-H", "server1:2,server2:2", "python", "train.py"])
    cfg.hosts_arg  # 'server1:2,server2:2'
"""

import argparse
import dataclasses
import re
import shlex
import sys
from typing import List, Optional, Tuple

from bluefog import __version__

HOST_ENTRY = re.compile(r"^[\w.-]+:\d+$")

__all__ = ["LaunchConfig", "parse_args", "parse_hosts", "parse_hostfile", "make_parser"]


@dataclasses.dataclass
class LaunchConfig:
    """Everything ``bfrun`` needs to build and run the MPI command."""

    num_proc: int
    command: List[str]
    hosts: List[Tuple[str, int]] = dataclasses.field(default_factory=list)
    ssh_port: Optional[int] = None
    network_interface: Optional[str] = None
    use_infiniband: bool = False
    extra_mpi_flags: List[str] = dataclasses.field(default_factory=list)
    prefix: str = ""
    verbose: bool = False
    timeline_filename: Optional[str] = None
    fault_tolerant: bool = False

    def __post_init__(self):
        if not self.hosts:
            self.hosts = [("localhost", self.num_proc)]

    @property
    def hosts_arg(self) -> str:
        """Hosts as ``h1:s1,h2:s2``, the form both Open MPI ``-H`` and Hydra ``-hosts`` take."""
        return ",".join(f"{host}:{slots}" for host, slots in self.hosts)


def parse_hosts(text: str) -> List[Tuple[str, int]]:
    """``"h1:2,h2:4"`` -> ``[("h1", 2), ("h2", 4)]``.

    Raises:
        ValueError: an entry is not ``host:slots`` or has zero slots.
    """
    hosts = []
    for entry in text.split(","):
        entry = entry.strip()
        if not HOST_ENTRY.match(entry):
            raise ValueError(f"host entry {entry!r} is not of the form <host>:<slots>, "
                             f"e.g. server1:4")
        host, slots = entry.rsplit(":", 1)
        if int(slots) < 1:
            raise ValueError(f"host entry {entry!r} must have at least one slot")
        hosts.append((host, int(slots)))
    return hosts


def parse_hostfile(path: str) -> List[Tuple[str, int]]:
    """Read lines ``<host> slots=<n>`` (``#`` comments and blank lines ignored).

    A line with just ``<host>`` means one slot; other ``key=value`` words (``max_slots=``) are ignored.

    Raises:
        OSError: the file cannot be read.
        ValueError: a line is malformed.
    """
    hosts = []
    with open(path) as handle:
        for number, raw in enumerate(handle, 1):
            words = raw.split("#", 1)[0].split()
            if not words:
                continue
            host, slots = words[0], 1
            if not re.match(r"^[\w.-]+$", host):
                raise ValueError(f"line {number}: {host!r} is not a host name")
            for word in words[1:]:
                key, sep, value = word.partition("=")
                if not sep:
                    raise ValueError(f"line {number}: expected '<host> slots=<n>', got {raw.strip()!r}")
                if key == "slots":
                    if not value.isdigit() or int(value) < 1:
                        raise ValueError(f"line {number}: slots must be a positive integer, "
                                         f"got {value!r}")
                    slots = int(value)
            hosts.append((host, slots))
    if not hosts:
        raise ValueError("it lists no hosts")
    return hosts


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port (1-65535), got {value}")
    return value


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bfrun", allow_abbrev=False,
        description="Launch a Bluefog job: runs COMMAND on N processes through mpirun.",
        epilog="Example: bfrun -np 4 python train.py")
    parser.add_argument("-v", "--version", action="version", version=__version__,
                        help="print the bluefog version and exit")
    parser.add_argument("-np", "--num-proc", dest="num_proc", type=_positive_int, metavar="N",
                        help="number of processes to start (required)")
    parser.add_argument("-p", "--ssh-port", dest="ssh_port", type=_port, metavar="PORT",
                        help="ssh port used to reach remote hosts")
    parser.add_argument("--network-interface", dest="network_interface", metavar="NIC",
                        help="network interface for MPI TCP traffic and NCCL (e.g. eth0); without "
                             "it, a multi-host job uses the interfaces every host has")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-H", "--hosts", dest="hosts", metavar="H1:S1,H2:S2",
                       help="hosts and their slots (default localhost:N)")
    group.add_argument("-hostfile", "--hostfile", dest="hostfile", metavar="FILE",
                       help="file with lines '<host> slots=<n>'")
    parser.add_argument("--use-infiniband", dest="use_infiniband", action="store_true",
                        help="let MPI use InfiniBand")
    parser.add_argument("--extra-mpi-flags", dest="extra_mpi_flags", default="", metavar="FLAGS",
                        help="flags passed to mpirun as they are, e.g. \"--mca foo bar\"")
    parser.add_argument("--prefix", dest="prefix", default="", metavar="PATH",
                        help="prepended to 'mpirun' as is (include the trailing '/')")
    parser.add_argument("--verbose", action="store_true",
                        help="print the mpirun command and set BLUEFOG_LOG_LEVEL=debug")
    parser.add_argument("--timeline-filename", dest="timeline_filename", metavar="FILE",
                        help="record a timeline (sets BLUEFOG_TIMELINE)")
    parser.add_argument("--fault-tolerant", dest="fault_tolerant", action="store_true",
                        help="keep the job going when ranks die (Open MPI with ULFM); sets "
                             "BLUEFOG_FAULT_TOLERANT=1 for the ranks")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to run")
    return parser


def _attach_extra_flags(parser: argparse.ArgumentParser, argv: List[str]) -> List[str]:
    """Rewrite ``--extra-mpi-flags VALUE`` as ``--extra-mpi-flags=VALUE`` before the command starts,
    so that a value beginning with '-' (``--report-bindings``, ``-ppn 2``) is not taken for an option.
    """
    argv = list(argv)
    takes_value = {option for action in parser._actions if action.option_strings and action.nargs
                   is None and action.const is None for option in action.option_strings}
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--extra-mpi-flags" and i + 1 < len(argv):
            argv[i:i + 2] = [f"{word}={argv[i + 1]}"]
            i += 1
        elif word in takes_value:
            i += 2
        elif word.startswith("-") and word != "--":
            i += 1
        else:  # '--' or the first word of the command
            break
    return argv


def parse_args(argv: Optional[List[str]] = None) -> LaunchConfig:
    """Parse ``bfrun`` arguments (``sys.argv[1:]`` when ``argv`` is None); exit 2 on bad input."""
    parser = make_parser()
    args = parser.parse_args(_attach_extra_flags(parser, sys.argv[1:] if argv is None else argv))
    if args.num_proc is None:
        parser.error("the following arguments are required: -np/--num-proc")
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        parser.error("a command to run is required, e.g. 'bfrun -np 4 python train.py'")
    hosts = []
    if args.hosts is not None:
        try:
            hosts = parse_hosts(args.hosts)
        except ValueError as exc:
            parser.error(f"argument -H/--hosts: {exc}")
    elif args.hostfile is not None:
        try:
            hosts = parse_hostfile(args.hostfile)
        except (OSError, ValueError) as exc:
            parser.error(f"argument -hostfile/--hostfile: cannot use {args.hostfile!r}: {exc}")
    try:
        extra = shlex.split(args.extra_mpi_flags)
    except ValueError as exc:
        parser.error(f"argument --extra-mpi-flags: {exc}")
    nic = args.network_interface
    if nic is not None and (not nic or any(ch.isspace() for ch in nic)):
        parser.error(f"argument --network-interface: {nic!r} is not an interface name")
    return LaunchConfig(
        num_proc=args.num_proc, command=command, hosts=hosts, ssh_port=args.ssh_port,
        network_interface=args.network_interface, use_infiniband=args.use_infiniband,
        extra_mpi_flags=extra, prefix=args.prefix, verbose=args.verbose,
        timeline_filename=args.timeline_filename, fault_tolerant=args.fault_tolerant)
