"""The communication engine: the only package that talks to MPI.

``Engine`` owns a progress thread and runs *kernels* (generators that yield MPI requests) for the ops
that the ``bluefog.ops`` layer submits.  See ``engine.py`` for the runtime model.
"""

from bluefog.engine.engine import Engine
from bluefog.engine.handle import Handle
from bluefog.engine.request import Request

__all__ = ["Engine", "Handle", "Request"]
