"""Distributed optimizers (wrappers around any torch optimizer) and parameter utilities."""

from bluefog.optim.adapt_then_combine import (DistributedAdaptThenCombineOptimizer,
                                              DistributedGradientAllreduceOptimizer)
from bluefog.optim.adapt_with_combine import DistributedAdaptWithCombineOptimizer
from bluefog.optim.communication import CommunicationType
from bluefog.optim.exact_diffusion import DistributedExactDiffusionOptimizer
from bluefog.optim.gradient_tracking import DistributedGradientTrackingOptimizer
from bluefog.optim.push_diging import DistributedPushDIGingOptimizer
from bluefog.optim.quasi_global_momentum import DistributedQuasiGlobalMomentumOptimizer
from bluefog.optim.deprecated import (DistributedAllreduceOptimizer,
                                      DistributedHierarchicalNeighborAllreduceOptimizer,
                                      DistributedNeighborAllreduceOptimizer)
from bluefog.optim.utility import (allreduce_parameters, broadcast_optimizer_state,
                                   broadcast_parameters)
from bluefog.optim.windows import (DistributedPullGetOptimizer, DistributedPushSumOptimizer,
                                   DistributedWinPutOptimizer)
from bluefog.optim.wrapper import DistributedOptimizer

__all__ = [
    "CommunicationType", "DistributedOptimizer", "DistributedAdaptWithCombineOptimizer",
    "DistributedAdaptThenCombineOptimizer", "DistributedGradientAllreduceOptimizer",
    "DistributedAllreduceOptimizer", "DistributedNeighborAllreduceOptimizer",
    "DistributedHierarchicalNeighborAllreduceOptimizer", "DistributedWinPutOptimizer",
    "DistributedPullGetOptimizer", "DistributedPushSumOptimizer", "broadcast_parameters",
    "allreduce_parameters", "broadcast_optimizer_state", "DistributedGradientTrackingOptimizer",
    "DistributedExactDiffusionOptimizer", "DistributedPushDIGingOptimizer",
    "DistributedQuasiGlobalMomentumOptimizer",
]
