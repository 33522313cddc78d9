"""The base of every distributed optimizer: a wrapper that holds the user's torch optimizer.

Composition, not subclassing: the wrapper keeps the user's optimizer object (``opt.optimizer``) and
forwards everything it does not define itself to it, so ``param_groups``, ``state``, ``defaults``,
``state_dict``, ``load_state_dict``, ``add_param_group`` and the optimizer's own hooks are those of
the base optimizer.  ``isinstance(opt, torch.optim.SGD)`` holds because the ``__class__`` attribute
reports the base optimizer's class, the protocol ``isinstance`` consults after ``type()`` (as
``unittest.mock`` does for spec'd mocks); ``type(opt)`` stays the wrapper class.

Subclasses decide *when* communication starts (a forward hook, a backward hook) and *what* it does
(an averager from :mod:`bluefog.optim.communication` or :mod:`bluefog.optim.windows`).

Example::

    opt = bf.DistributedAdaptWithCombineOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                                  model=model)
    isinstance(opt, torch.optim.SGD)     # True
    opt.param_groups[0]["lr"] = 0.05     # the base optimizer sees it too
"""

import contextlib
import os
import warnings
import weakref
from typing import Dict, List, Tuple

import torch

from bluefog import config
from bluefog.basics import size
from bluefog.timeline import tracer

FORWARD_WARNING = (
    "Unexpected behavior: After num_steps_per_communication times of forward computation "
    "`y=model(x)` are called, an optimizer step() function must be called. It does not matter if "
    "you call other functions like zero_grad() or loss.backward() in between; communication is "
    "only launched on the num_steps_per_communication-th forward pass before a step().")
BACKWARD_WARNING = (
    "Unexpected behavior: After num_steps_per_communication times of backward computation "
    "`loss.backward()` are called, an optimizer step() function must be called. Communication is "
    "only launched on the num_steps_per_communication-th backward pass before a step().")
DOUBLE_SYNC_WARNING = (
    "optimizer.step() was called after optimizer.synchronize() without "
    "`with optimizer.skip_synchronize():`; the communicated values were already applied, so this "
    "step() only runs the local update.")


def as_models(model) -> List[torch.nn.Module]:
    """``model`` as a list of modules (a module, or a list / tuple of modules)."""
    if isinstance(model, torch.nn.Module):
        return [model]
    if isinstance(model, (list, tuple)) and model and all(isinstance(m, torch.nn.Module)
                                                          for m in model):
        return list(model)
    raise ValueError("Argument model must be a torch.nn.Module or a non-empty list of them, got "
                     f"{type(model).__name__}.")


def parameter_names(models: List[torch.nn.Module], optimizer) -> Dict[torch.Tensor, str]:
    """{parameter: name} for the optimizer's parameters, named as the models name them.

    Raises:
        ValueError: a name appears twice across the models, or the optimizer holds a parameter that
            none of the models has.
    """
    names: Dict[torch.Tensor, str] = {}
    seen = set()
    for model in models:
        for name, p in model.named_parameters():
            if name in seen:
                raise ValueError(f"Parameter name {name!r} appears in more than one model; names are "
                                 "the communication names, so they must be unique.")
            seen.add(name)
            names.setdefault(p, name)
    own = [p for group in optimizer.param_groups for p in group["params"]]
    unnamed = sum(1 for p in own if p not in names)
    if unnamed:
        raise ValueError("Named parameters provided by model are mismatch with the parameters "
                         f"handled by optimizer: {unnamed} of the optimizer's parameters are not "
                         "parameters of the model(s). Pass every model whose parameters the "
                         "optimizer updates.")
    return {p: names[p] for p in own}


def owned_parameters(model: torch.nn.Module, names) -> List[Tuple[torch.nn.Module, str, torch.Tensor]]:
    """(owning module, name, parameter) for each parameter of ``model`` in ``names``, once each.

    The owner is the first module that holds the parameter directly, so a root module that is
    itself a leaf, and parameters shared between layers, are both covered; the owner's ``training``
    flag decides whether a forward pass counts for the parameter.
    """
    found, seen = [], set()
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if id(p) not in seen and p in names:
                seen.add(id(p))
                found.append((module, names[p], p))
    return found


def check_steps(num_steps_per_communication) -> int:
    if (isinstance(num_steps_per_communication, bool)
            or not isinstance(num_steps_per_communication, int)
            or num_steps_per_communication < 1):
        raise ValueError("Argument num_steps_per_communication must be an int >= 1, got "
                         f"{num_steps_per_communication!r}.")
    return num_steps_per_communication


def set_parameter(p, value):
    """Make parameter ``p`` hold ``value``: its storage is replaced (as Bluefog does), so ``value``
    must be a fresh tensor that nothing else writes to.  ``None`` leaves ``p`` alone."""
    if value is not None and value is not p.data:
        with torch.no_grad():
            p.set_(value)


def weak_callback(method):
    """A callable that calls the bound ``method`` while its object lives (hooks must not keep the
    optimizer alive through the model)."""
    ref = weakref.WeakMethod(method)

    def call(*args, **kwargs):
        bound = ref()
        if bound is not None:
            return bound(*args, **kwargs)
        return None
    return call


class DistributedOptimizer:
    """Common part of the wrappers: delegation, hooks, pending communication, synchronisation.

    Subclasses implement :meth:`_attach` (register hooks) and :meth:`_finish` (apply one pending
    communication), and usually :meth:`step`.
    """

    def __init__(self, optimizer, model, num_steps_per_communication=1):
        if isinstance(optimizer, DistributedOptimizer) or not isinstance(optimizer,
                                                                         torch.optim.Optimizer):
            raise TypeError("Argument optimizer must be a plain torch.optim.Optimizer, got "
                            f"{type(optimizer).__name__}.")
        self.optimizer = optimizer
        self._models = as_models(model)
        self._names = parameter_names(self._models, optimizer)
        self._steps = check_steps(num_steps_per_communication)
        self._hooks = []
        self._handles = {}           # parameter -> pending token
        self._delay = {p: self._steps for p in self._names}
        self._warned = False
        self._synchronized = False
        self._should_synchronize = True
        self._timeline = False
        self._compute_spans_attached = False
        self._spans = {}             # parameter -> (timeline row, token) of its open span
        self._distributed = size() > 1
        if os.environ.get(config.TIMELINE):
            self.turn_on_timeline()

    # -- looking like the base optimizer ------------------------------------------------------

    @property
    def __class__(self):
        return type(self.__dict__["optimizer"]) if "optimizer" in self.__dict__ else type(self)

    def __getattr__(self, name):
        optimizer = self.__dict__.get("optimizer")
        if optimizer is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(optimizer, name)

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value):
        self.optimizer.param_groups = value

    @property
    def state(self):
        return self.optimizer.state

    @state.setter
    def state(self, value):
        self.optimizer.state = value

    @property
    def defaults(self):
        return self.optimizer.defaults

    def state_dict(self):
        """The base optimizer's ``state_dict`` (hyperparameters and per-parameter state)."""
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict):
        """Load into the base optimizer; pending communication is left as it is."""
        self.optimizer.load_state_dict(state_dict)

    def zero_grad(self, set_to_none: bool = True):
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def __repr__(self):
        return f"{type(self).__name__}({self.optimizer!r})"

    # -- hooks ---------------------------------------------------------------------------------

    def remove_hooks(self):
        """Remove every hook this wrapper registered; it then steps like the plain optimizer."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    def _warn_once(self, message):
        if not self._warned:
            self._warned = True
            warnings.warn(message, UserWarning, stacklevel=3)

    def _count(self, p) -> bool:
        """Count one pass for ``p``; True when this pass is the one that communicates."""
        if self._delay[p] <= 0:
            self._warn_once(self._late_warning)
        self._delay[p] -= 1
        return self._delay[p] == 0

    _late_warning = FORWARD_WARNING

    # -- pending communication -----------------------------------------------------------------

    _timeline_prefix = "communicate"

    def _begin(self, p, launch):
        if self._timeline:
            row = f"{self._timeline_prefix}.{self._names[p]}"
            self._spans[p] = (row, tracer.begin(row, "COMMUNICATE"))
        self._handles[p] = launch()

    def _end_span(self, p):
        span = self._spans.pop(p, None)
        if span is not None:
            tracer.end(*span)

    def _finish(self, p, token):
        raise NotImplementedError

    def synchronize(self):
        """Wait for every pending communication and apply it; ``step()`` calls it for you."""
        with torch.no_grad():
            for p, token in list(self._handles.items()):
                self._finish(p, token)
                self._delay[p] = self._steps
                self._end_span(p)
        self._handles.clear()
        self._synchronized = True

    @contextlib.contextmanager
    def skip_synchronize(self):
        """``with opt.skip_synchronize(): opt.step()`` after calling ``opt.synchronize()`` yourself."""
        self._should_synchronize = False
        try:
            yield
        finally:
            self._should_synchronize = True

    def _synchronize_for_step(self):
        if self._distributed and self._should_synchronize:
            if self._synchronized:
                warnings.warn(DOUBLE_SYNC_WARNING, UserWarning, stacklevel=3)
            self.synchronize()
        self._synchronized = False

    def step(self, closure=None):
        """Apply pending communication, then the base optimizer's step; returns its result."""
        self._synchronize_for_step()
        return self.optimizer.step(closure)

    # -- timeline ------------------------------------------------------------------------------

    def turn_on_timeline(self):
        """Record each parameter's communication, from launch to completion, as a ``COMMUNICATE``
        span on the row ``<communication prefix>.<parameter name>``, and its ``FORWARD`` and
        ``GRADIENT COMPT.`` phases on the same row (the timeline itself must be running:
        ``BLUEFOG_TIMELINE`` at ``bf.init()``)."""
        if not self._compute_spans_attached:
            from bluefog.optim.compute_spans import ComputeSpans
            ComputeSpans(self).attach(self._models)
            self._compute_spans_attached = True
        self._timeline = True

    def turn_off_timeline(self):
        self._timeline = False
