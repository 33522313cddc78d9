"""Compatibility facade: ``bluefog.common.topology_util`` as Bluefog 0.3.0 scripts import it.

Everything lives in :mod:`bluefog.topology`; this module re-exports it and keeps the pre-0.3 names
``PowerTwoRingGraph``, ``PowerGraph`` and ``GetDynamicSendRecvRanks`` as aliases that emit a
``DeprecationWarning`` when called.

Example::

    >>> from bluefog.common import topology_util
    >>> G = topology_util.RingGraph(4, 1)
"""

import functools
import warnings

from bluefog.topology import *  # noqa: F401,F403  (the facade re-exports the whole surface)
from bluefog.topology import (__all__ as _topology_all, ExponentialGraph, ExponentialTwoGraph,
                              GetDynamicOnePeerSendRecvRanks)


def _deprecated_alias(old_name, new_function):
    """A wrapper named ``old_name`` that warns, then calls ``new_function``."""
    @functools.wraps(new_function)
    def alias(*args, **kwargs):
        warnings.warn(f"{old_name} is deprecated; use {new_function.__name__} instead.",
                      DeprecationWarning, stacklevel=2)
        return new_function(*args, **kwargs)
    alias.__name__ = alias.__qualname__ = old_name
    return alias


PowerTwoRingGraph = _deprecated_alias("PowerTwoRingGraph", ExponentialTwoGraph)
PowerGraph = _deprecated_alias("PowerGraph", ExponentialGraph)
GetDynamicSendRecvRanks = _deprecated_alias("GetDynamicSendRecvRanks",
                                            GetDynamicOnePeerSendRecvRanks)

__all__ = list(_topology_all) + ["PowerTwoRingGraph", "PowerGraph", "GetDynamicSendRecvRanks"]
