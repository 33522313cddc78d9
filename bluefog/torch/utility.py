"""``bluefog.torch.utility``: the Bluefog 0.3.0 import path of the parameter utilities.

The same functions as :mod:`bluefog.torch` exports. New code should use ``bluefog.torch``.

Example::

    from bluefog.torch.utility import broadcast_parameters
    broadcast_parameters(model.state_dict(), root_rank=0)
"""

from bluefog.torch import allreduce_parameters, broadcast_optimizer_state, broadcast_parameters

__all__ = ["broadcast_parameters", "allreduce_parameters", "broadcast_optimizer_state"]
