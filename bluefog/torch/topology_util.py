"""``bluefog.torch.topology_util``: the collective topology-inference helpers."""

from bluefog.ops.infer import InferDestinationFromSourceRanks, InferSourceFromDestinationRanks

__all__ = ["InferSourceFromDestinationRanks", "InferDestinationFromSourceRanks"]
