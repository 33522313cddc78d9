"""Adapt-then-combine (ATC) and gradient allreduce: communication launched by the backward pass.

Both hook each parameter's gradient accumulation, so a parameter counts once per backward pass even
when a layer is applied twice.

* ATC: on the ``num_steps_per_communication``-th backward pass the hook applies the optimizer's
  update to that parameter at once (the *adapt* step, with the parameter's accumulated gradient)
  and starts averaging the updated value (the *combine* step), which overlaps the rest of the
  backward pass; ``step()`` applies the averages: ``w <- Combine(w - lr * grad(w))`` (spec §5.4).
* Gradient allreduce: the hook starts averaging ``p.grad`` over all ranks; ``step()`` waits and runs
  the base optimizer on the averaged gradients, as Horovod does (spec §5.5).

Example::

    opt = bf.DistributedAdaptThenCombineOptimizer(torch.optim.Adam(model.parameters()), model=model)
    loss.backward()      # parameters are updated and their averaging starts here
    opt.step()           # the averages are applied
"""

import torch

from bluefog.ops.collective import allreduce_nonblocking
from bluefog.ops.common import synchronize
from bluefog.optim.communication import CollectiveKnobs, CommunicationType
from bluefog.optim.global_average import PeriodicGlobalAverage
from bluefog.optim.step_functions import default_step_function
from bluefog.optim.wrapper import BACKWARD_WARNING, DistributedOptimizer, weak_callback

ZERO_GRAD_MESSAGE = (
    "optimizer.zero_grad() was called after loss.backward() but before optimizer.step() or "
    "optimizer.synchronize(). This is prohibited as it can cause a race condition.")
NO_STEP_FUNCTION = (
    "We don't have default implementation for the optimizer you provided ({}); register one with "
    "optimizer.register_step_function(fn), where fn(optimizer, p, grad, param_group) updates the "
    "parameter p in place.")


def after_accumulation(p, callback):
    """Call ``callback(p)`` after each backward pass has accumulated ``p.grad``; a removable handle."""
    if hasattr(p, "register_post_accumulate_grad_hook"):
        return p.register_post_accumulate_grad_hook(callback)
    accumulator = p.view_as(p).grad_fn.next_functions[0][0]   # torch < 2.1
    handle = accumulator.register_hook(lambda *unused: callback(p))
    handle.accumulator = accumulator                            # keep the node alive with the hook
    return handle


class BackwardTriggeredOptimizer(DistributedOptimizer):
    """Counts backward passes per parameter; refuses ``zero_grad`` while communication is pending."""

    _late_warning = BACKWARD_WARNING

    def _attach(self):
        if not self._distributed:
            return
        callback = weak_callback(self._after_backward)
        for p in self._names:
            if p.requires_grad:
                self._hooks.append(after_accumulation(p, callback))

    def zero_grad(self, set_to_none: bool = True):
        if self._handles:
            raise AssertionError(ZERO_GRAD_MESSAGE)
        self.optimizer.zero_grad(set_to_none=set_to_none)


class AdaptInBackward(BackwardTriggeredOptimizer):
    """Runs ``self._step_function`` on each parameter in its backward hook (the *adapt* step), then
    launches ``self._launch``; ``step()`` applies what came back.  The base of ATC and of the
    methods in :mod:`bluefog.optim.sgd_methods` that communicate after the gradient is known."""

    def _init_adapt(self, step_function):
        self._step_function = step_function
        self._step_delay = dict(self._delay)
        self._groups = {p: group for group in self.optimizer.param_groups for p in group["params"]}

    def _after_backward(self, p):
        if self._step_delay[p] <= 0:
            self._warn_once(BACKWARD_WARNING)
        self._step_delay[p] -= 1
        if self._step_delay[p] == 0:
            if self._step_function is None:
                raise ValueError(NO_STEP_FUNCTION.format(type(self.optimizer).__name__))
            with torch.no_grad():
                self._step_function(self, p, p.grad, self._groups[p])
        if self._count(p):
            self._begin(p, lambda: self._launch(p, self._names[p]))

    def step(self, closure=None):
        """Apply the averages of the parameters updated in backward; otherwise a local step.

        Between communications (``num_steps_per_communication > 1``) no parameter was updated in
        backward, and this runs the base optimizer's ``step(closure)``.
        """
        if not self._distributed:
            return self.optimizer.step(closure)
        counted = [d for p, d in self._step_delay.items() if d != self._steps and p.requires_grad]
        if counted and all(d <= 0 for d in counted):
            loss = closure() if closure is not None else None
            for p, d in self._step_delay.items():
                if d <= 0:
                    self._step_delay[p] = self._steps
        elif any(d <= 0 for d in counted):
            raise ValueError("We do not support partial step update in ATC yet: some parameters were "
                             "updated in the backward pass and others were not.")
        else:
            loss = self._step_between_communications(closure)
        self._synchronize_for_step()
        return loss

    def _step_between_communications(self, closure):
        """A step with no parameter updated in backward: the base optimizer's step."""
        return self.optimizer.step(closure)


class DistributedAdaptThenCombineOptimizer(PeriodicGlobalAverage, CollectiveKnobs,
                                           AdaptInBackward):
    """Adapt-then-combine: ``w <- Combine(w - lr * grad(w))``, the update applied in backward.

    The per-parameter update is built in for SGD, Adam (and AdamW), RMSprop, Adagrad and Adadelta;
    other optimizers need :meth:`register_step_function`.  Tunable attributes and arguments
    (``global_average_period`` too) as for
    :class:`~bluefog.optim.adapt_with_combine.DistributedAdaptWithCombineOptimizer`.

    Raises:
        ValueError: (in ``backward``) no step function for this optimizer; (in ``step``) some
            parameters were updated in the backward pass and others only partly counted; bad
            ``global_average_period``.
        AssertionError: ``zero_grad()`` between ``backward()`` and ``step()``.
    """

    def __init__(self, optimizer, model, communication_type=CommunicationType.neighbor_allreduce,
                 num_steps_per_communication=1, global_average_period=None):
        super().__init__(optimizer, model, num_steps_per_communication)
        self._init_knobs(communication_type)
        self._init_global_average(global_average_period)
        self._init_adapt(default_step_function(optimizer))
        self._attach()

    def register_step_function(self, step_function):
        """Use ``step_function(optimizer, p, grad, param_group)`` as the in-backward update."""
        if not callable(step_function):
            raise TypeError("Argument step_function must be callable as fn(optimizer, p, grad, "
                            f"param_group), got {type(step_function).__name__}.")
        self._step_function = step_function

    def _launch(self, p, name):
        if self.global_average_period is not None and self._global_round(p):
            with self._averaging_globally():
                return super()._launch(p, name)
        return super()._launch(p, name)


class DistributedGradientAllreduceOptimizer(BackwardTriggeredOptimizer):
    """Averages gradients over all ranks (Horovod style), then runs the base optimizer.

    Gradients of ``num_steps_per_communication`` backward passes are accumulated locally before
    the average starts.
    """

    _timeline_prefix = "allreduce"

    def __init__(self, optimizer, model, num_steps_per_communication=1):
        super().__init__(optimizer, model, num_steps_per_communication)
        self._attach()

    def _after_backward(self, p):
        if self._count(p):
            self._begin(p, lambda: allreduce_nonblocking(p.grad, average=True,
                                                         name=self._names[p]))

    def synchronize(self):
        """Average every gradient (also those no backward pass produced: zeros), wait, apply."""
        for p in self._names:
            if p.requires_grad and p not in self._handles:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                self._begin(p, lambda p=p: allreduce_nonblocking(p.grad, average=True,
                                                                 name=self._names[p]))
        super().synchronize()

    def _finish(self, p, token):
        p.grad.set_(synchronize(token))
