"""Topologies for decentralized training: static graph generators, weight helpers and dynamic
(per-iteration) send/receive schedules.

Example::

    >>> from bluefog.topology import ExponentialGraph, GetRecvWeights
    >>> self_weight, src_weights = GetRecvWeights(ExponentialGraph(8), 0)
"""

from .dynamic import (GetDynamicOnePeerSendRecvRanks, GetExp2DynamicSendRecvMachineRanks,
                      GetInnerOuterExpo2DynamicSendRecvRanks, GetInnerOuterRingDynamicSendRecvRanks)
from .generators import (ExponentialGraph, ExponentialTwoGraph, FullyConnectedGraph,
                         MeshGrid2DGraph, RingGraph, StarGraph, SymmetricExponentialGraph,
                         TopologyArgumentError)
from .weights import (GetRecvWeights, GetSendWeights, IsRegularGraph, IsTopologyEquivalent,
                      spectral_gap, weight_matrix)

__all__ = [
    "TopologyArgumentError",
    "ExponentialTwoGraph",
    "ExponentialGraph",
    "SymmetricExponentialGraph",
    "MeshGrid2DGraph",
    "StarGraph",
    "RingGraph",
    "FullyConnectedGraph",
    "GetRecvWeights",
    "GetSendWeights",
    "IsTopologyEquivalent",
    "IsRegularGraph",
    "weight_matrix",
    "spectral_gap",
    "GetDynamicOnePeerSendRecvRanks",
    "GetExp2DynamicSendRecvMachineRanks",
    "GetInnerOuterRingDynamicSendRecvRanks",
    "GetInnerOuterExpo2DynamicSendRecvRanks",
]
