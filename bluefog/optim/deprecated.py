"""Factory names from before Bluefog 0.3.0 that now build an adapt-with-combine optimizer.

Each emits a ``PendingDeprecationWarning`` naming its replacement.

Example::

    opt = bf.DistributedAllreduceOptimizer(sgd, model=model)   # warns; same as
    opt = bf.DistributedAdaptWithCombineOptimizer(sgd, model=model,
                                                  communication_type=bf.CommunicationType.allreduce)
"""

import warnings

from bluefog.optim.adapt_with_combine import DistributedAdaptWithCombineOptimizer
from bluefog.optim.communication import CommunicationType


def _alias(old_name, communication_type):
    def factory(optimizer, model, num_steps_per_communication=1):
        warnings.warn(f"{old_name} will be deprecated in a future release; use "
                      "DistributedAdaptWithCombineOptimizer(optimizer, model, communication_type="
                      f"CommunicationType.{communication_type.name}) instead.",
                      PendingDeprecationWarning, stacklevel=2)
        return DistributedAdaptWithCombineOptimizer(
            optimizer, model, communication_type=communication_type,
            num_steps_per_communication=num_steps_per_communication)
    factory.__name__ = factory.__qualname__ = old_name
    factory.__doc__ = (f"Deprecated: adapt-with-combine over ``{communication_type.value}``; "
                       "emits PendingDeprecationWarning.")
    return factory


DistributedAllreduceOptimizer = _alias("DistributedAllreduceOptimizer", CommunicationType.allreduce)
DistributedNeighborAllreduceOptimizer = _alias("DistributedNeighborAllreduceOptimizer",
                                               CommunicationType.neighbor_allreduce)
DistributedHierarchicalNeighborAllreduceOptimizer = _alias(
    "DistributedHierarchicalNeighborAllreduceOptimizer",
    CommunicationType.hierarchical_neighbor_allreduce)
