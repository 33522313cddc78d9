"""A case that hangs inside MPI, for tests/test_harness.py (not collected on its own)."""

import numpy as np

import bluefog.torch as bf
from casetools import sizes, timeout


@sizes(2)
@timeout(1)
def case_hangs_inside_mpi():
    from mpi4py import MPI
    if bf.rank() == 0:          # waits inside MPI_Recv for a message rank 1 never sends
        MPI.COMM_WORLD.Recv(np.empty(1), source=1, tag=99)


@sizes(2)
def case_after_the_hang():
    pass
