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
from bluefog.ops.common import live_context, synchronize
from bluefog.ops.hierarchical import hierarchical_neighbor_allreduce_nonblocking
from bluefog.ops.neighbor import neighbor_allreduce_nonblocking, neighbor_average_into_at_sync
from bluefog.optim.wrapper import set_parameter
from bluefog.packing import adjacent_span, pack, split_like


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
    """Neighbor average; static by default, dynamic when ``knobs.dst_weights`` is set.  With
    ``in_place`` the average is written into ``tensor`` when the op is waited for."""

    def launch(self, tensor, name, knobs, in_place=False):
        start = neighbor_average_into_at_sync if in_place else neighbor_allreduce_nonblocking
        return start(tensor, self_weight=knobs.self_weight, src_weights=knobs.src_weights,
                     dst_weights=knobs.dst_weights, enable_topo_check=knobs.enable_topo_check,
                     name=name)

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
        self._packed_runs = (None, [])

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

    def _launch_due(self, due):
        """One op per run of parameters of one dtype and device (up to the fusion threshold)
        instead of one per parameter: the per-op cost of launching, synchronizing and negotiating
        is paid once per run.  Per-parameter ops while the timeline records them, or with fusion
        off (``BLUEFOG_FUSION_THRESHOLD=0``)."""
        averager = COLLECTIVE_AVERAGERS[self._communication_type]
        limit = live_context().settings.fusion_threshold
        if self._timeline or not limit or isinstance(averager, EmptyAverager):
            return super()._launch_due(due)
        key = (tuple((id(p), p.dtype, p.get_device()) for _, p in due), limit)
        if self._packed_runs[0] != key:      # the same parameters every step: plan once
            self._packed_runs = (key, packed_runs([p for _, p in due], limit))
        for run in self._packed_runs[1]:
            if len(run) == 1:
                super()._launch_due([due[run[0]]])
                continue
            names = [due[k][0] for k in run]
            packed = PackedLaunch(averager, [due[k][1].data for k in run],
                                  f"{names[0]}..{names[-1]}", self)
            for i, k in enumerate(run):
                self._handles[due[k][1]] = (packed, i)
        return None

    def _finish(self, p, token):
        source, key = token            # (averager, its token) or (PackedLaunch, index)
        set_parameter(p, source.finish(key))


class PackedLaunch:
    """One averaging op for several tensors of one dtype and device, sent as one flat buffer.

    When the tensors already lie back to back in one storage (parameters do after the first packed
    step), that memory is sent as it is and the result lands in it: a neighbor average is computed
    into it when the op is waited for, any other result is copied in.  Otherwise the tensors are
    packed into a new buffer and each gets a view of the result (which makes them lie back to back
    from then on).
    """

    __slots__ = ("averager", "token", "like", "span", "outputs")

    def __init__(self, averager, tensors, name, knobs):
        self.averager, self.like, self.outputs = averager, tensors, None
        self.span = adjacent_span(tensors)
        if self.span is None:
            self.token = averager.launch(pack(tensors, tensors[0].dtype), name, knobs)
        elif isinstance(averager, NeighborAllreduceAverager):   # averaged into the span in finish
            self.token = averager.launch(self.span, name, knobs, in_place=True)
        else:
            self.token = averager.launch(self.span, name, knobs)

    def finish(self, index):
        """The new value of tensor ``index``, or None when it was written in place (the op is
        waited for once)."""
        if self.outputs is None:
            result = self.averager.finish(self.token)
            if self.span is not None:
                if result.data_ptr() != self.span.data_ptr():
                    self.span.copy_(result)
                self.outputs = [None] * len(self.like)
            else:
                self.outputs = split_like(result, self.like)
        return self.outputs[index]


def packed_runs(tensors, limit_bytes: int):
    """Indices of ``tensors`` in runs of consecutive tensors of one dtype and device, each run at
    most ``limit_bytes`` (a larger tensor is a run of its own)."""
    runs, run, run_bytes = [], [], 0
    for k, t in enumerate(tensors):
        nbytes = t.numel() * t.element_size()
        if run and ((t.dtype, t.device) != (tensors[run[0]].dtype, tensors[run[0]].device)
                    or run_bytes + nbytes > limit_bytes):
            runs.append(run)
            run, run_bytes = [], 0
        run.append(k)
        run_bytes += nbytes
    if run:
        runs.append(run)
    return runs
