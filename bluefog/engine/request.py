"""The description of one submitted op, as the engine sees it."""

import dataclasses
import hashlib
from typing import Any, Callable, Dict, FrozenSet, Generator, Optional, Tuple

from bluefog.engine.handle import Handle
from bluefog.engine.memory import BoundedCache

# A kernel runs one op: it yields what it waits for (see polling.py) and returns the output.
Kernel = Generator[list, None, Any]


@dataclasses.dataclass
class Launch:
    """What negotiation tells a kernel: its message tag and every rank's first dim."""

    tag: int
    dim0s: Optional[Tuple[int, ...]] = None  # None when not negotiated (skip-negotiate mode)
    carried: Any = None   # negotiation.Carried: data that already moved with the round records


@dataclasses.dataclass(eq=False)
class Request:
    """One op submitted to the engine.

    ``signature`` holds what must agree across ranks (op kind, dtype, shape without its first dim,
    root rank, flags); ``dim0`` is the first dim, which may differ for the allgather family.
    ``sends`` / ``recvs`` are set for dynamic neighbor ops whose topology is to be checked.
    ``start(launch)`` returns the kernel generator (its return value is the op's output).
    """

    name: str
    signature: Tuple
    start: Callable[[Launch], Kernel]
    handle: Handle
    dim0: int = 0
    sends: Optional[FrozenSet[int]] = None
    recvs: Optional[FrozenSet[int]] = None
    activity: str = "OP"
    # Fusion: requests whose ``fusion_key`` is equal on every rank for consecutive ops may run as
    # one kernel ``fuse(parts, launch)``; ``nbytes`` counts toward BLUEFOG_FUSION_THRESHOLD.
    fusion_key: Optional[Tuple] = None
    fusion_part: Any = None
    fuse: Optional[Callable[[list, Launch], Kernel]] = None
    nbytes: int = 0
    # A small op may send its data with the round record: ``carry()`` gives {destination rank:
    # bytes}, ``nbytes`` long each.  A collective (``carry_to_all``) uses what came only when every
    # rank carried to every other rank; a neighbor op takes whatever came.
    carry: Optional[Callable[[], Dict[int, Any]]] = None
    carry_to_all: bool = False
    # Fault-tolerant mode: the tensor the kernel overwrites in place, restored if the op runs again
    inplace: Any = None

    def digest(self) -> int:
        """:func:`digest_of` this request's name and signature."""
        return digest_of(self.name, self.signature)


def digest_of(name: str, signature: Tuple) -> int:
    """A 63-bit hash of ``signature`` then ``name``, identical on every rank for matching calls
    (remembered for the last few thousand pairs: loops submit the same ops again and again)."""
    key = (name, signature)
    found = _digests.get(key)
    if found is None:
        found = _digests.put(key, name_digest(signature_hash(signature), name))
    return found


def signature_hash(signature: Tuple):
    """The hash of ``signature``, which :func:`name_digest` continues with a name."""
    return hashlib.blake2b(repr(signature).encode() + b"\0", digest_size=8)


def name_digest(hashed_signature, name: str) -> int:
    """:func:`digest_of` ``name`` and a signature, from the signature's :func:`signature_hash`
    (made once by a prepared round, whose every call has a name of its own)."""
    hashed = hashed_signature.copy()
    hashed.update(name.encode())
    return int.from_bytes(hashed.digest(), "little") >> 1


_digests = BoundedCache(4096)
