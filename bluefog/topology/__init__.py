"""Topologies for decentralized training: static graph generators, weight helpers and dynamic
(per-iteration) send/receive schedules, finite-time exact averaging schedules, and analysis.

Example::

    >>> from bluefog.topology import ExponentialGraph, GetRecvWeights
    >>> self_weight, src_weights = GetRecvWeights(ExponentialGraph(8), 0)
"""

from .analysis import (TopologySummary, consensus_errors, degree_range, diameter, mixing_rate,
                       mixing_spectral_gap, summarize)
from .dynamic import (GetDynamicOnePeerSendRecvRanks, GetExp2DynamicSendRecvMachineRanks,
                      GetInnerOuterExpo2DynamicSendRecvRanks, GetInnerOuterRingDynamicSendRecvRanks)
from .exact import (ScheduleRound, check_schedule, exact_average_rounds, exact_average_schedule,
                    one_peer_exponential_schedule, schedule_rounds)
from .generators import (ExponentialGraph, ExponentialTwoGraph, FullyConnectedGraph,
                         MeshGrid2DGraph, RingGraph, StarGraph, SymmetricExponentialGraph,
                         TopologyArgumentError)
from .plotting import plot_consensus_error, plot_topology
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
    "ScheduleRound",
    "exact_average_schedule",
    "exact_average_rounds",
    "one_peer_exponential_schedule",
    "schedule_rounds",
    "check_schedule",
    "TopologySummary",
    "mixing_rate",
    "mixing_spectral_gap",
    "degree_range",
    "diameter",
    "consensus_errors",
    "summarize",
    "plot_topology",
    "plot_consensus_error",
]
