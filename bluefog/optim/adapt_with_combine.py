"""Adapt-with-combine (AWC): communication launched by the forward pass, applied in ``step()``.

Each training-mode forward pass of a model counts once for every parameter it owns (one hook on the
top-level model, so a layer applied twice still counts once); on the
``num_steps_per_communication``-th pass the parameter's averaging starts, overlapping the backward
pass.  ``step()`` waits for it, replaces the parameter by the averaged value and then runs the base
optimizer, so ``w <- Combine(w) - lr * grad(w)`` with the gradient taken before combining (spec §5.3).
The window optimizers reuse this trigger with other averagers.

Example::

    opt = bf.DistributedAdaptWithCombineOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                                  model=model)
    for x, y in data:
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
"""

from bluefog.ops.common import submission_batch
from bluefog.optim.communication import CollectiveKnobs, CommunicationType
from bluefog.optim.global_average import PeriodicGlobalAverage
from bluefog.optim.wrapper import DistributedOptimizer, owned_parameters, weak_callback


class ForwardTriggeredOptimizer(DistributedOptimizer):
    """Counts training-mode forward passes per parameter and launches ``self._launch`` on the last."""

    def __init__(self, optimizer, model, num_steps_per_communication=1):
        super().__init__(optimizer, model, num_steps_per_communication)
        self._owned = {}

    def _attach(self):
        if not self._distributed:
            return
        for model in self._models:
            self._owned[id(model)] = owned_parameters(model, self._names)
            self._hooks.append(model.register_forward_hook(weak_callback(self._after_forward)))

    def _after_forward(self, model, inputs, output):
        due = [(name, p) for owner, name, p in self._owned.get(id(model), ())
               if owner.training and p.requires_grad and self._count(p)]
        if due:
            with submission_batch():   # every op reaches negotiation in one round
                self._launch_due(due)

    def _launch_due(self, due):
        """Start the communication of every (name, parameter) in ``due``: one op each."""
        for name, p in due:
            self._begin(p, lambda p=p, name=name: self._launch(p, name))

    def _launch(self, p, name):
        raise NotImplementedError


class DistributedAdaptWithCombineOptimizer(PeriodicGlobalAverage, CollectiveKnobs,
                                            ForwardTriggeredOptimizer):
    """Adapt-with-combine: ``w <- Combine(w) - lr * grad(w)``, communication overlapping backward.

    Tunable between iterations (read at every launch): ``communication_type``, ``self_weight``,
    ``src_weights``, ``dst_weights`` (neighbor_allreduce), ``src_machine_weights``,
    ``dst_machine_weights`` (hierarchical_neighbor_allreduce) and ``enable_topo_check``.

    Args:
        optimizer: any torch optimizer over (some of) the model's parameters.
        model: the ``nn.Module`` (or a list of them) whose forward passes trigger communication;
            parameter names are the communication names, so they must agree across ranks.
        communication_type: a :class:`CommunicationType`.
        num_steps_per_communication: communicate on every J-th forward pass.
        global_average_period: None, or H: every H-th communication round of a parameter is an
            exact global average (allreduce) instead of ``communication_type`` (Gossip-PGA).

    Raises:
        ValueError: ``model`` does not name every parameter of ``optimizer``; bad
            ``global_average_period``.
        AssertionError: ``communication_type`` is not a ``CommunicationType``.
    """

    def __init__(self, optimizer, model, communication_type=CommunicationType.neighbor_allreduce,
                 num_steps_per_communication=1, global_average_period=None):
        super().__init__(optimizer, model, num_steps_per_communication)
        self._init_knobs(communication_type)
        self._init_global_average(global_average_period)
        self._attach()

    def _launch_due(self, due):
        if self.global_average_period is None:
            return super()._launch_due(due)
        rounds, global_rounds = [], []
        for name, p in due:
            (global_rounds if self._global_round(p) else rounds).append((name, p))
        if rounds:
            super()._launch_due(rounds)
        if global_rounds:
            with self._averaging_globally():
                super()._launch_due(global_rounds)
        return None
