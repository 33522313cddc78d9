"""Periodic global averaging (Gossip-PGA, Chen et al. 2021) for the collective optimizers.

With ``global_average_period=H``, every H-th communication round of a parameter is an exact global
average (an allreduce) instead of the optimizer's ``communication_type``; the other rounds gossip as
usual (with ``CommunicationType.empty`` this is local SGD with periodic averaging).  Rounds are
counted per parameter, so every rank agrees on which rounds are global.

Example::

    opt = bf.DistributedAdaptWithCombineOptimizer(sgd, model, global_average_period=8)
"""

import contextlib

from bluefog.optim.communication import CommunicationType


def check_period(global_average_period):
    if global_average_period is None:
        return None
    if (isinstance(global_average_period, bool) or not isinstance(global_average_period, int)
            or global_average_period < 1):
        raise ValueError("Argument global_average_period must be None (never) or an int >= 1 "
                         f"(communication rounds between global averages), got "
                         f"{global_average_period!r}.")
    return global_average_period


class PeriodicGlobalAverage:
    """Mixin for :class:`~bluefog.optim.communication.CollectiveKnobs` optimizers."""

    def _init_global_average(self, global_average_period):
        self.global_average_period = check_period(global_average_period)
        self._rounds = {}            # parameter -> communication rounds launched so far

    def _global_round(self, p) -> bool:
        """Count one round for ``p``; True when this round is a global average."""
        rounds = self._rounds.get(p, 0) + 1
        self._rounds[p] = rounds
        period = self.global_average_period
        return period is not None and rounds % period == 0

    @contextlib.contextmanager
    def _averaging_globally(self):
        """Launches inside use allreduce (the previous communication type is restored)."""
        saved = self._communication_type
        self._communication_type = CommunicationType.allreduce
        try:
            yield
        finally:
            self._communication_type = saved
