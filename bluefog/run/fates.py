"""What happened to each rank of a job, from the records of :mod:`bluefog.run.rankwatch` and
:mod:`bluefog.run.failure`, and the lines ``bfrun`` prints about it.

A rank's *fate* is one of: finished (exit code 0), died (a signal, or a non-zero exit code), failed
with a Python exception (the runtime recorded it), or vanished (it started, or was placed on a host,
but nothing says how it ended: its host went down or could not be asked).

Example::

    fates = read_fates(["/tmp/bfrun-x"], world_size=4, job_start=t0)
    print(death_line(fates[2]))   # 'rank 2 died (SIGKILL) 41.2 s into the job'
"""

import dataclasses
import json
import os
import re
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

_RECORD = re.compile(r"^(start|end|rank)(\d+)\.json$")

__all__ = ["Fate", "parse_records", "load_directory", "read_fates", "rank_hosts", "describe",
           "death_line", "root_cause_line", "fault_tolerant_summary"]


@dataclasses.dataclass
class Fate:
    """Everything known about one rank."""

    rank: int
    host: Optional[str] = None
    start: Optional[float] = None
    end: Optional[float] = None
    code: Optional[int] = None       # exit code, when it exited
    signal: Optional[str] = None     # e.g. "SIGKILL", when a signal ended it
    error: Optional[str] = None      # last traceback line the watcher saw on stderr
    exception: Optional[str] = None  # what the runtime's excepthook recorded
    exception_time: Optional[float] = None

    @property
    def ended(self) -> bool:
        return self.end is not None

    @property
    def finished(self) -> bool:
        return self.ended and self.code == 0 and self.signal is None

    @property
    def died(self) -> bool:
        return self.ended and not self.finished

    @property
    def failure_time(self) -> Optional[float]:
        times = [t for t in (self.exception_time, self.end if self.died else None) if t is not None]
        return min(times) if times else None


def parse_records(texts: Iterable[Tuple[str, str]]) -> Dict[str, dict]:
    """``(file name, JSON text)`` pairs -> ``{file name: record}``; bad ones are skipped."""
    records = {}
    for name, text in texts:
        if not _RECORD.match(name):
            continue
        try:
            record = json.loads(text)
        except ValueError:
            continue
        if isinstance(record, dict):
            records[name] = record
    return records


def load_directory(directory: str) -> Dict[str, dict]:
    """The records in ``directory`` (an empty dict if it cannot be read)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return {}
    texts = []
    for name in names:
        if _RECORD.match(name):
            try:
                with open(os.path.join(directory, name)) as handle:
                    texts.append((name, handle.read()))
            except OSError:
                continue
    return parse_records(texts)


def read_fates(records: Dict[str, dict], world_size: int,
               hosts: Optional[Sequence[str]] = None) -> List[Fate]:
    """One :class:`Fate` per rank ``0 .. world_size-1`` from ``records`` (see :func:`parse_records`).

    ``hosts[r]`` is where rank ``r`` was placed, used when no record names its host.
    """
    fates = [Fate(rank, host=hosts[rank] if hosts else None) for rank in range(world_size)]
    for name, record in records.items():
        kind, rank = _RECORD.match(name).groups()
        rank = int(rank)
        if rank >= world_size:
            continue
        fate = fates[rank]
        try:
            if kind == "start":
                fate.start = float(record["start"])
                fate.host = str(record.get("host") or fate.host)
            elif kind == "end":
                fate.start = float(record.get("start") or fate.start or 0) or fate.start
                fate.end = float(record["end"])
                fate.code = None if record.get("code") is None else int(record["code"])
                fate.signal = record.get("signal") or None
                fate.error = record.get("error") or None
                fate.host = str(record.get("host") or fate.host)
            else:
                fate.exception = str(record["error"])
                fate.exception_time = float(record["time"])
        except (KeyError, TypeError, ValueError):
            continue
    return fates


def rank_hosts(hosts: Sequence[Tuple[str, int]], world_size: int) -> List[str]:
    """Where ``--map-by slot`` puts each rank: hosts' slots in order, wrapping around if oversubscribed."""
    slots = [host for host, count in hosts for _ in range(count)]
    if not slots:
        return ["localhost"] * world_size
    return [slots[rank % len(slots)] for rank in range(world_size)]


def describe(fate: Fate) -> str:
    """The cause of a rank's end in a few words: ``SIGKILL``, ``exit code 7``, ``ImportError: ...``."""
    if fate.exception:
        return fate.exception
    if fate.signal:
        return fate.signal
    if fate.error:
        return f"{fate.error}; exit code {fate.code}"
    if fate.code is not None:
        return f"exit code {fate.code}"
    return "no exit status: its host went down or lost contact"


def _seconds(fate: Fate, job_start: float) -> str:
    when = fate.failure_time if fate.failure_time is not None else fate.end
    return "" if when is None else f" {max(0.0, when - job_start):.1f} s into the job"


def _where(fate: Fate, show_host: bool) -> str:
    return f" on {fate.host}" if show_host and fate.host else ""


def death_line(fate: Fate, job_start: float, show_host: bool = False) -> str:
    """``rank 2 died (SIGKILL) 41.2 s into the job`` (``rank 2 on node7 died ...`` with the host)."""
    where = _where(fate, show_host)
    return f"rank {fate.rank}{where} died ({describe(fate)}){_seconds(fate, job_start)}"


def _vanished_by_host(fates: Sequence[Fate]) -> Dict[str, List[int]]:
    lost: Dict[str, List[int]] = {}
    for fate in fates:
        if not fate.ended and fate.exception is None:
            lost.setdefault(fate.host or "?", []).append(fate.rank)
    return lost


def _ranks(ranks: Sequence[int]) -> str:
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(str(r) for r in ranks)


def lost_hosts_line(fates: Sequence[Fate], all_ranks_of: Dict[str, List[int]]) -> Optional[str]:
    """A line naming hosts none of whose ranks left an exit status, or None."""
    lost = _vanished_by_host(fates)
    down = [(host, ranks) for host, ranks in lost.items() if ranks == all_ranks_of.get(host)]
    if not down:
        return None
    parts = [f"{host} ({_ranks(ranks)})" for host, ranks in down]
    return ("lost contact with " + "; ".join(parts) + ": no exit status came back from "
            + ("that host" if len(down) == 1 else "those hosts")
            + " (it went down, or its MPI daemon or ssh session was killed)")


def root_cause_line(fates: Sequence[Fate], job_start: float,
                    all_ranks_of: Dict[str, List[int]]) -> Optional[str]:
    """The line naming the rank that failed first, or None when the records say nothing."""
    raised = [f for f in fates if f.exception is not None]
    if raised:
        first = min(raised, key=lambda f: (f.exception_time, f.rank))
        return f"rank {first.rank} failed first: {first.exception}"
    lost = lost_hosts_line(fates, all_ranks_of)
    if lost:    # the other hosts' ranks were then stopped by the launcher: not the cause
        return lost
    failed = [f for f in fates if f.failure_time is not None]
    if failed:
        first = min(failed, key=lambda f: (f.failure_time, f.rank))
        where = _where(first, len(all_ranks_of) > 1)
        cause = describe(first)
        if first.signal == "SIGKILL":
            cause += " (sent by a user, a job scheduler, or the kernel when memory ran out)"
        return f"rank {first.rank}{where} failed first: {cause},{_seconds(first, job_start)}"
    return None


def fault_tolerant_summary(fates: Sequence[Fate], job_start: float,
                           all_ranks_of: Dict[str, List[int]]) -> Tuple[List[str], int]:
    """Lines for a ``--fault-tolerant`` job and its exit code.

    A rank *died* if a signal ended it, an uncaught Python exception ended it (the runtime then lets
    the others go on), or it exited non-zero before any rank finished. The job succeeds (0) when at
    least one rank finished and every rank finished or died; a rank that exits non-zero after
    others finished failed, and its exit code (or 1) is the job's.
    """
    finished = [f for f in fates if f.finished]
    first_done = min((f.end for f in finished), default=None)
    deaths, failures = [], []
    for fate in fates:
        if fate.exception is not None or fate.signal is not None or (
                fate.died and (first_done is None or fate.end < first_done)):
            deaths.append(fate)     # the runtime lets the others go on after an exception, too
        elif fate.died:
            failures.append(fate)
    lines = []
    vanished = [f for f in fates if not f.ended and f.exception is None]
    for fate in sorted(deaths, key=lambda f: (f.failure_time or 0, f.rank)):
        lines.append(death_line(fate, job_start, len(all_ranks_of) > 1))
    lost = lost_hosts_line(fates, all_ranks_of)
    if lost:
        lines.append(lost)
    elif vanished:
        lines.append(f"{_ranks([f.rank for f in vanished])} left no exit status")
    total = len(fates)
    summary = f"{len(finished)} of {total} ranks finished"
    if lines:
        lines[-1] += f"; {summary}"
    code = 0
    for fate in failures:
        lines.append(f"rank {fate.rank} failed: {describe(fate)}")
        code = code or (fate.code if fate.code else 1)
    if not finished:
        code = code or 1
        if not lines or not lines[-1].endswith(summary):
            lines.append(summary)
    return lines, code
