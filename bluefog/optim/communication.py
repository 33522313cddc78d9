"""How a distributed optimizer averages one parameter: :class:`CommunicationType` and the averagers.

An *averager* starts the averaging of one tensor (``launch``, returning a pending token, usually an op
handle) and later turns the token into the averaged tensor (``finish``).  The wrappers in this package
call ``launch`` from their hooks and ``finish`` from ``step``; they never talk to the ops directly.
The collective averagers read the optimizer's tunable attributes (spec §5.3, §5.8) at every launch,
so users may change topology or weights between iterations.

Example::

    averager = COLLECTIVE_AVERAGERS[CommunicationType.neighbor_allreduce]
    token = averager.launch(p.data, "fc.weight", optimizer)
    p.data.copy_(averager.finish(token))
"""

import enum

from bluefog.errors import ArgumentAssertionError

from bluefog.ops.collective import allreduce_nonblocking
from bluefog.ops.common import synchronize
from bluefog.ops.hierarchical import hierarchical_neighbor_allreduce_nonblocking
from bluefog.ops.neighbor import neighbor_allreduce_nonblocking
from bluefog.optim.wrapper import set_parameter


class CommunicationType(enum.Enum):
    """Which op combines the parameters; the value doubles as the timeline name prefix."""

    neighbor_allreduce = "neighbor.allreduce"
    hierarchical_neighbor_allreduce = "hierarchical.neighbor.allreduce"
    allreduce = "allreduce"
    empty = "empty"


class AllreduceAverager:
    """Global average over every rank."""

    def launch(self, tensor, name, knobs):
        return allreduce_nonblocking(tensor, average=True, name=name)

    def finish(self, token):
        return synchronize(token)


class NeighborAllreduceAverager:
    """Neighbor average; static by default, dynamic when ``knobs.dst_weights`` is set."""

    def launch(self, tensor, name, knobs):
        return neighbor_allreduce_nonblocking(
            tensor, self_weight=knobs.self_weight, src_weights=knobs.src_weights,
            dst_weights=knobs.dst_weights, enable_topo_check=knobs.enable_topo_check, name=name)

    def finish(self, token):
        return synchronize(token)


class HierarchicalNeighborAllreduceAverager:
    """Neighbor average of machine means (needs a machine topology and ``local_size() > 1``)."""

    def launch(self, tensor, name, knobs):
        return hierarchical_neighbor_allreduce_nonblocking(
            tensor, self_weight=knobs.self_weight, src_machine_weights=knobs.src_machine_weights,
            dst_machine_weights=knobs.dst_machine_weights,
            enable_topo_check=knobs.enable_topo_check, name=name)

    def finish(self, token):
        return synchronize(token)


class EmptyAverager:
    """No communication at all: every rank trains on its own."""

    def launch(self, tensor, name, knobs):
        return None

    def finish(self, token):
        return None


COLLECTIVE_AVERAGERS = {
    CommunicationType.allreduce: AllreduceAverager(),
    CommunicationType.neighbor_allreduce: NeighborAllreduceAverager(),
    CommunicationType.hierarchical_neighbor_allreduce: HierarchicalNeighborAllreduceAverager(),
    CommunicationType.empty: EmptyAverager(),
}


class CollectiveKnobs:
    """The tunable attributes of the optimizers that average with collective ops (spec §5.3, §5.8).

    ``communication_type`` must be a :class:`CommunicationType` (else ``AssertionError``); the
    weights default to ``None`` (static topology) and ``enable_topo_check`` to False.
    """

    def _init_knobs(self, communication_type):
        self.communication_type = communication_type
        self.self_weight = None
        self.src_weights = None
        self.dst_weights = None
        self.src_machine_weights = None
        self.dst_machine_weights = None
        self.enable_topo_check = False

    @property
    def communication_type(self):
        return self._communication_type

    @communication_type.setter
    def communication_type(self, value):
        if not isinstance(value, CommunicationType):
            raise ArgumentAssertionError("communication_type must be a bf.CommunicationType, got "
                                         f"{value!r}.")
        self._communication_type = value

    @property
    def _timeline_prefix(self):
        return self._communication_type.value

    def _launch(self, p, name):
        averager = COLLECTIVE_AVERAGERS[self._communication_type]
        return averager, averager.launch(p.data, name, self)

    def _finish(self, p, token):
        averager, pending = token
        set_parameter(p, averager.finish(pending))
