"""``bluefog.tensorflow.optimizers``: the Bluefog 0.3.0 import path of the TensorFlow training
helpers.

The same objects as :mod:`bluefog.tensorflow` exports. New code should use
``bluefog.tensorflow``.

Example::

    from bluefog.tensorflow.optimizers import DistributedOptimizer
    opt = DistributedOptimizer(keras.optimizers.SGD(0.1))
"""

from bluefog.tensorflow import (BroadcastVariablesCallback, DistributedGradientTape,
                                DistributedOptimizer, average_gradients, broadcast_variables)

__all__ = ["DistributedOptimizer", "DistributedGradientTape", "broadcast_variables",
           "average_gradients", "BroadcastVariablesCallback"]
