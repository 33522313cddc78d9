"""Timeline spans of an optimizer's compute phases (spec §8): ``FORWARD`` and ``GRADIENT COMPT.``.

For every parameter, on the row ``<prefix>.<parameter name>`` (the row of its communication):
``FORWARD`` runs from the model's forward-pre-hook to the forward hook of the layer that owns the
parameter, and ``GRADIENT COMPT.`` from the moment backward reaches the model's output to the
parameter's gradient hook.  The hooks are registered only when the timeline is turned on.

Example::

    spans = ComputeSpans(optimizer)          # optimizer: a DistributedOptimizer
    spans.attach(models)                     # hooks join optimizer._hooks (removable)
"""

from collections import defaultdict

import torch

from bluefog.timeline import tracer


class ComputeSpans:
    """Opens and closes the compute-phase spans of one optimizer's parameters."""

    def __init__(self, optimizer):
        self._opt = optimizer
        self._open = {}              # (activity, parameter) -> (row, token)

    def _row(self, p):
        return f"{self._opt._timeline_prefix}.{self._opt._names[p]}"

    def _begin(self, activity, params):
        if self._opt._timeline:
            for p in params:
                row = self._row(p)
                self._open[(activity, p)] = (row, tracer.begin(row, activity))

    def _end(self, activity, p):
        span = self._open.pop((activity, p), None)
        if span is not None:
            tracer.end(*span)

    def attach(self, models):
        """Register the hooks on ``models`` (each parameter of the optimizer, once)."""
        from bluefog.optim.wrapper import owned_parameters
        for model in models:
            owned = owned_parameters(model, self._opt._names)
            params = [p for _, _, p in owned]
            by_owner = defaultdict(list)
            for owner, _, p in owned:
                by_owner[owner].append(p)
            hooks = self._opt._hooks
            hooks.append(model.register_forward_pre_hook(self._forward_starts(params)))
            for owner, mine in by_owner.items():
                hooks.append(owner.register_forward_hook(self._forward_ends(mine)))
            hooks.append(model.register_forward_hook(self._backward_watch(params)))
            for p in params:
                if p.requires_grad:
                    hooks.append(p.register_hook(self._gradient_ends(p)))

    def _forward_starts(self, params):
        def hook(module, inputs):
            self._begin("FORWARD", params)
        return hook

    def _forward_ends(self, params):
        def hook(module, inputs, output):
            for p in params:
                self._end("FORWARD", p)
        return hook

    def _backward_watch(self, params):
        def hook(module, inputs, output):
            self._watch_output(output, params)
        return hook

    def _gradient_ends(self, p):
        def hook(grad):
            self._end("GRADIENT COMPT.", p)
        return hook

    def _watch_output(self, output, params):
        if self._opt._timeline and isinstance(output, torch.Tensor) and output.requires_grad:
            def hook(grad):
                self._begin("GRADIENT COMPT.", params)
            output.register_hook(hook)
