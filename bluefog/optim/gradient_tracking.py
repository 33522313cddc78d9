"""Gradient tracking (DIGing; Nedić, Olshevsky and Shi, SIAM J. Optim. 2017) as an optimizer.

Each rank keeps ``y``, an estimate of the *average* gradient over all ranks, and steps along it
instead of its own gradient, so the ranks reach the exact minimizer of the average loss even when
their data differ (plain decentralized SGD stops at a biased point).  With mixing matrix ``W``::

    x_{k+1} = W x_k - lr * y_k
    y_{k+1} = W y_k + grad f(x_{k+1}) - grad f(x_k),        y_0 = grad f(x_0)

``W x_k`` and ``W y_{k-1}`` do not depend on the new gradient, so both start in the forward pass
(one ``neighbor_allreduce`` per parameter) and overlap the backward pass, as in adapt-with-combine.

Example::

    opt = bf.DistributedGradientTrackingOptimizer(torch.optim.SGD(model.parameters(), lr=0.05),
                                                  model)
    for x, y in data:
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
"""

import torch

from bluefog.optim.adapt_with_combine import ForwardTriggeredOptimizer
from bluefog.optim.sgd_methods import MixingKnobs, TopologyCheck, check_sgd, direction
from bluefog.optim.wrapper import set_parameter

NAME = "DistributedGradientTrackingOptimizer"


class DistributedGradientTrackingOptimizer(MixingKnobs, ForwardTriggeredOptimizer):
    """Gradient tracking (DIGing) around ``torch.optim.SGD``.

    Topologies: static and dynamic (time-varying), with a doubly stochastic ``W`` each step.  The
    static topology is checked (``ValueError`` otherwise); dynamic weights set through
    ``self_weight`` / ``src_weights`` / ``dst_weights`` (read at every launch, as for AWC) are the
    caller's responsibility.  State per parameter (in ``state_dict``): ``tracker`` (``y``) and
    ``previous_grad``.

    Args:
        optimizer: a ``torch.optim.SGD`` with ``momentum=0`` (``lr``, ``weight_decay`` and
            ``maximize`` are honoured; ``lr`` may change between steps).
        model: the ``nn.Module`` (or list) whose forward passes start communication.

    Raises:
        TypeError: ``optimizer`` is not a ``torch.optim.SGD``.
        ValueError: momentum or nesterov set; (at launch) the static topology is not doubly
            stochastic.
    """

    def __init__(self, optimizer, model):
        check_sgd(optimizer, NAME, momentum=False)
        super().__init__(optimizer, model, 1)
        self._init_mixing()
        self._check_topology = TopologyCheck(NAME)
        self._mixed = {}             # parameter -> W [x; y] that came back
        self._attach()

    def _launch(self, p, name):
        if self.self_weight is None and self.dst_weights is None:
            self._check_topology()
        tracker = self.optimizer.state[p].get("tracker")
        sent = p.detach().reshape(-1)
        if tracker is not None:
            sent = torch.cat([sent, tracker.reshape(-1)])
        return self._mix(sent, name)

    def _combine(self, p, mixed):
        self._mixed[p] = mixed       # applied in step(), once the new gradient is known

    def step(self, closure=None):
        """Wait for ``W x`` and ``W y``, update the tracker with the new gradient, step along it."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._distributed:
            self._synchronize_for_step()
        with torch.no_grad():
            for group in self.optimizer.param_groups:
                for p in group["params"]:
                    if p.requires_grad:
                        self._update(p, group, self._mixed.pop(p, None))
        self._mixed.clear()
        return loss

    def _update(self, p, group, mixed):
        """``mixed`` is ``W [x; y_prev]`` flattened (None: ``W = I``)."""
        state = self.optimizer.state[p]
        grad = direction(p, p.grad, group)
        tracker = state.get("tracker")
        if mixed is None:
            mixed_x, mixed_y = p.detach(), tracker
        else:
            n = p.numel()
            mixed_x = mixed[:n].view_as(p)
            mixed_y = None if tracker is None else mixed[n:].view_as(p)
        if tracker is None:
            tracker = grad.clone()
        else:
            tracker = mixed_y + grad - state["previous_grad"]
        state["tracker"] = tracker
        state["previous_grad"] = grad
        set_parameter(p, torch.sub(mixed_x, tracker, alpha=group["lr"]))
