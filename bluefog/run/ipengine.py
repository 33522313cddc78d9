"""One ``ibfrun`` engine: an ipyparallel engine whose engine id is this process's MPI rank.

``ibfrun`` runs ``bfrun -np N python -m bluefog.run.ipengine --profile=<p> ...``.  The rank is taken
from the launcher's environment (``OMPI_COMM_WORLD_RANK`` or ``PMI_RANK``), so MPI itself is not
initialised here: that happens at the first ``bf.init()`` in a cell, with bluefog's thread level.

Example::

    bfrun -np 2 python -m bluefog.run.ipengine --profile=bluefog
"""

import os
import sys


def engine_argv(argv, environ=os.environ):
    """``argv`` plus ``--IPEngine.id=<rank>`` when a launcher gave this process a rank."""
    rank = environ.get("OMPI_COMM_WORLD_RANK", environ.get("PMI_RANK"))
    if rank is not None and not any(a.startswith("--IPEngine.id") for a in argv):
        argv = list(argv) + [f"--IPEngine.id={int(rank)}"]
    return list(argv)


def main(argv=None):
    from ipyparallel.engine.app import launch_new_instance
    launch_new_instance(engine_argv(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
