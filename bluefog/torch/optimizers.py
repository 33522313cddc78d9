"""``bluefog.torch.optimizers``: the Bluefog 0.3.0 import path of the distributed optimizers.

The same classes as :mod:`bluefog.torch` exports, plus ``DistributedPullGetOptimizer`` and
``DistributedPushSumOptimizer``, which 0.3.0 defined here without exporting them from
``bluefog.torch``. New code should use ``bluefog.torch``.

Example::

    from bluefog.torch.optimizers import DistributedAdaptWithCombineOptimizer
    optimizer = DistributedAdaptWithCombineOptimizer(optimizer, model=model)
"""

from bluefog.optim import DistributedPullGetOptimizer, DistributedPushSumOptimizer
from bluefog.torch import (CommunicationType, DistributedAdaptThenCombineOptimizer,
                           DistributedAdaptWithCombineOptimizer, DistributedAllreduceOptimizer,
                           DistributedGradientAllreduceOptimizer,
                           DistributedHierarchicalNeighborAllreduceOptimizer,
                           DistributedNeighborAllreduceOptimizer, DistributedWinPutOptimizer)

__all__ = [
    "CommunicationType", "DistributedAdaptThenCombineOptimizer",
    "DistributedAdaptWithCombineOptimizer", "DistributedGradientAllreduceOptimizer",
    "DistributedAllreduceOptimizer", "DistributedNeighborAllreduceOptimizer",
    "DistributedHierarchicalNeighborAllreduceOptimizer", "DistributedWinPutOptimizer",
    "DistributedPullGetOptimizer", "DistributedPushSumOptimizer",
]
