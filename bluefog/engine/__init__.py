"""The communication engine: the only package that talks to MPI and torch.distributed.

``Engine`` owns a progress thread and runs *kernels* (generators that yield MPI requests, or GPU
work to wait for) for the ops that the ``bluefog.ops`` layer submits.  See ``engine.py`` for the
runtime model and ``cuda.py`` for CUDA tensors.
"""

from bluefog.engine import cuda
from bluefog.engine.engine import Engine
from bluefog.engine.handle import Handle
from bluefog.engine.request import Request

__all__ = ["Engine", "Handle", "Request", "cuda"]
