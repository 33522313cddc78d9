"""The ``bfrun`` launcher: command line -> :class:`~bluefog.run.config.LaunchConfig` -> ``mpirun``.

Nothing in this package imports torch or the communication engine; starting a job must stay cheap.
``bluefog.run.failure`` is the small piece the runtime itself uses to report the rank that failed first.
"""
