"""Lazy access to mpi4py and the mapping from torch tensors to MPI buffers.

Importing ``mpi4py.MPI`` initialises MPI, so it happens at the first ``bf.init()``, not at import.
"""

import os

import numpy as np
import torch

from bluefog import config

_MPI = None

# MPI has no 16-bit float type: float16 travels as raw 16-bit words and is computed in float32.
_WIRE_DTYPE = {torch.float16: torch.int16, torch.bfloat16: torch.int16}


def mpi():
    """The ``mpi4py.MPI`` module, initialising MPI on first use."""
    global _MPI
    if _MPI is None:
        # Open MPI's osc/ucx component prints an error when no UCX device exists, although another
        # component is then used; leave it out unless the user chose window components.
        os.environ.setdefault("OMPI_MCA_osc", "^ucx")
        # BLUEFOG_FAILURE_TIMEOUT: how long ULFM's failure detector waits for a silent (frozen)
        # rank before declaring it dead; the heartbeat period must be under a third of it
        timeout = config.failure_timeout()
        if timeout is not None:
            os.environ["OMPI_MCA_mpi_ft_detector_timeout"] = repr(timeout)
            os.environ["OMPI_MCA_mpi_ft_detector_period"] = repr(min(0.5, timeout / 4))
        import mpi4py
        mpi4py.rc.thread_level = config.mpi_thread_level()
        from mpi4py import MPI
        _MPI = MPI
    return _MPI


def wire(tensor: torch.Tensor) -> np.ndarray:
    """A zero-copy numpy view of a contiguous CPU tensor, in a dtype MPI can carry."""
    wire_dtype = _WIRE_DTYPE.get(tensor.dtype)
    if wire_dtype is not None:
        tensor = tensor.view(wire_dtype)
    return tensor.numpy()


def datatype(array: np.ndarray):
    """The MPI datatype of a numpy array's elements."""
    from mpi4py.util.dtlib import from_numpy_dtype
    return from_numpy_dtype(array.dtype)
