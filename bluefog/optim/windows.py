"""Optimizers that average through one-sided windows: push (win_put), pull (win_get), push-sum.

All three count training-mode forward passes like adapt-with-combine and start their window op on
the ``num_steps_per_communication``-th one; ``step()`` waits for this rank's ops, optionally meets
the other ranks at a barrier (``force_barrier``), combines, then runs the base optimizer.  Each
parameter gets one window, named ``window_prefix + "." + parameter name``; ``unregister_window()``
frees exactly the windows this optimizer created (``__del__`` does too, if they are still there).

* push (spec §5.6): put ``p`` into the out-neighbours' buffers; ``w <- average(w, buffers)``.
* pull (the spec's broken ``DistributedPullGetOptimizer``, written from the algorithm): get the
  in-neighbours' published parameters; ``w <- average(w, buffers)``; after the local step the new
  value is published (under the readers' mutexes) for the next round.
* push-sum (spec §5.7, written from the algorithm; stochastic gradient push): each rank keeps
  ``(x, weight)`` in a window of ``numel + 1`` elements and the model holds ``z = x / weight``.
  On launch the local optimizer's progress since the last combine is added to ``x``, then a share
  of ``(x, weight)`` is accumulated into each out-neighbour (column-stochastic weights) and the rest
  kept; ``step()`` collects what arrived and sets ``z = x / weight``.  Mass is conserved, so it
  converges on directed and irregular graphs too.

Example::

    opt = bf.DistributedWinPutOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model=model)
    ...
    opt.unregister_window()     # collective; before the next set_topology
"""

import sys

import torch

from bluefog import context
from bluefog.basics import out_neighbor_ranks
from bluefog.ops.collective import barrier
from bluefog.ops.window import (win_accumulate_nonblocking, win_create, win_free,
                                win_get_nonblocking, win_mutex, win_put_nonblocking, win_update,
                                win_update_then_collect, win_wait)
from bluefog.optim.adapt_with_combine import ForwardTriggeredOptimizer


class WindowOptimizer(ForwardTriggeredOptimizer):
    """Windows per parameter and the wait / barrier / combine order of ``synchronize``."""

    def __init__(self, optimizer, model, num_steps_per_communication=1, window_prefix=None,
                 force_barrier=False):
        super().__init__(optimizer, model, num_steps_per_communication)
        if window_prefix is not None and not isinstance(window_prefix, str):
            raise TypeError(f"Argument window_prefix must be a str or None, got "
                            f"{type(window_prefix).__name__}.")
        self.window_prefix = "" if window_prefix is None else window_prefix + "."
        self.force_barrier = force_barrier
        self._windows = {}          # parameter -> window name, for windows this object created
        self._registered = {}       # window name -> the tensor registered with it

    def _window_name(self, p):
        return self.window_prefix + self._names[p]

    def _create_windows(self, tensor_of, zero_init=False):
        if not self._distributed:
            return
        for p in self._names:
            name = self._window_name(p)
            tensor = tensor_of(p)
            try:
                created = win_create(tensor, name, zero_init=zero_init)
            except RuntimeError as error:
                raise ValueError(f"Cannot allocate MPI window for the parameter "
                                 f"{self._names[p]!r}: {error}") from error
            if not created:
                raise ValueError(f"Cannot allocate MPI window for the parameter {self._names[p]!r}: "
                                 f"a window called {name!r} already exists. Free it, or give this "
                                 "optimizer another window_prefix.")
            self._windows[p] = name
            self._registered[name] = tensor
        self._attach()

    def synchronize(self):
        """Wait for this rank's window ops, meet at a barrier if ``force_barrier``, combine."""
        pending = list(self._handles.items())
        for _, handle in pending:
            win_wait(handle)
        if self._distributed and self.force_barrier:
            barrier()
        with torch.no_grad():
            for p, _ in pending:
                self._combine(p)
                self._delay[p] = self._steps
                self._end_span(p)
        self._handles.clear()
        self._synchronized = True

    def _combine(self, p):
        raise NotImplementedError

    def unregister_window(self):
        """Free the windows this optimizer created and remove its hooks.  Collective; idempotent."""
        self.remove_hooks()
        if not context.initialized():
            self._windows.clear()
            return
        windows = context.current().windows
        for p, name in list(self._windows.items()):
            entry = windows.get(name)
            if entry is not None and entry.tensor is self._registered.get(name):
                win_free(name)
            del self._windows[p]
            self._registered.pop(name, None)

    def __del__(self):
        try:
            if self.__dict__.get("_windows") and not sys.is_finalizing():
                self.unregister_window()
        except Exception:   # the runtime may already be gone; nothing useful to report here
            pass


class DistributedWinPutOptimizer(WindowOptimizer):
    """Push gossip: put each parameter into the out-neighbours' windows, then average.

    Tunable: ``dst_weights`` (None: every out-neighbour with weight 1.0; ``{rank: w}`` for a
    dynamic pattern) and ``force_barrier``.  The combine is ``win_update``: the uniform average of
    the parameter and every in-neighbour buffer (topology weights on a weighted topology); buffers
    nobody refreshed keep their last value.
    """

    _timeline_prefix = "win_put"

    def __init__(self, optimizer, model, num_steps_per_communication=1, window_prefix=None):
        super().__init__(optimizer, model, num_steps_per_communication, window_prefix)
        self.dst_weights = None
        self._create_windows(lambda p: p.data)

    def _launch(self, p, name):
        return win_put_nonblocking(p.data, self._windows[p], dst_weights=self.dst_weights,
                                   require_mutex=False)

    def _combine(self, p):
        win_update(self._windows[p], require_mutex=True)     # in place: the window holds p.data


class DistributedPullGetOptimizer(WindowOptimizer):
    """Pull gossip: read the in-neighbours' published parameters, average, step, publish.

    Tunable: ``src_weights`` (None: every in-neighbour and the topology's average; ``{rank: w}``:
    only those, with ``w_self = self_weight`` or ``1 - sum(w)``), ``self_weight`` and
    ``force_barrier``.
    """

    _timeline_prefix = "win_get"

    def __init__(self, optimizer, model, num_steps_per_communication=1, window_prefix=None):
        super().__init__(optimizer, model, num_steps_per_communication, window_prefix)
        self.src_weights = None
        self.self_weight = None
        self._create_windows(lambda p: p.data)
        self._readers = out_neighbor_ranks() if self._distributed else []

    def _launch(self, p, name):
        sources = None if self.src_weights is None else {r: 1.0 for r in self.src_weights}
        return win_get_nonblocking(self._windows[p], src_weights=sources, require_mutex=True)

    def _combine(self, p):
        name = self._windows[p]
        if self.src_weights is None:
            own, weights = None, None
        else:
            weights = {int(r): float(w) for r, w in self.src_weights.items()}
            own = (float(self.self_weight) if self.self_weight is not None
                   else 1.0 - sum(weights.values()))
        with win_mutex(name, for_self=True, ranks=self._readers):
            win_update(name, self_weight=own, neighbor_weights=weights)

    def step(self, closure=None):
        """Combine, run the base optimizer, then publish the new parameters to the readers."""
        self._synchronize_for_step()
        loss = self.optimizer.step(closure)
        if self._distributed and self._windows:
            with torch.no_grad():
                for name in self._windows.values():
                    with win_mutex(name, for_self=True, ranks=self._readers):
                        win_update(name, self_weight=1.0, neighbor_weights={})
        return loss


class DistributedPushSumOptimizer(WindowOptimizer):
    """Push-sum (stochastic gradient push): correct on directed and irregular graphs.

    Tunable: ``dst_weights`` (None: every out-neighbour; a list of ranks: those, sharing equally
    with self; ``{rank: w}``: those weights, keeping ``self_weight`` or ``1 - sum(w)``),
    ``self_weight`` and ``force_barrier`` (default True, which makes every round complete before
    anyone combines).
    """

    _timeline_prefix = "win_accumulate"

    def __init__(self, optimizer, model, num_steps_per_communication=1, window_prefix=None):
        super().__init__(optimizer, model, num_steps_per_communication, window_prefix,
                         force_barrier=True)
        self.dst_weights = None
        self.self_weight = None
        self._extended = {}     # parameter -> [x, weight] registered with its window
        self._anchor = {}       # parameter -> z at the last combine
        with torch.no_grad():
            for p in self._names:
                self._extended[p] = torch.cat([p.detach().reshape(-1),
                                               torch.ones(1, dtype=p.dtype, device=p.device)])
                self._anchor[p] = p.detach().clone()
        self._create_windows(lambda p: self._extended[p], zero_init=True)

    def _shares(self):
        """(self weight, {out-neighbour: weight}) from the tunable attributes."""
        targets = self.dst_weights
        if targets is None:
            targets = out_neighbor_ranks()
        if isinstance(targets, dict):
            weights = {int(r): float(w) for r, w in targets.items()}
            own = (float(self.self_weight) if self.self_weight is not None
                   else 1.0 - sum(weights.values()))
        else:
            share = 1.0 / (len(targets) + 1)
            weights = {int(r): share for r in targets}
            own = share if self.self_weight is None else float(self.self_weight)
        return own, weights

    def _launch(self, p, name):
        ext = self._extended[p]
        with torch.no_grad():
            ext[:-1].add_(p.detach().reshape(-1) - self._anchor[p].reshape(-1))
        own, weights = self._shares()
        return win_accumulate_nonblocking(ext, self._windows[p], self_weight=own,
                                          dst_weights=weights, require_mutex=True)

    def _combine(self, p):
        ext = win_update_then_collect(self._windows[p], require_mutex=True)
        p.copy_((ext[:-1] / ext[-1]).view_as(p))
        self._anchor[p].copy_(p)
