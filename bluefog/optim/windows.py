"""Optimizers that average through one-sided windows: push (win_put), pull (win_get), push-sum.

All three count training-mode forward passes like adapt-with-combine and start their window op on
the ``num_steps_per_communication``-th one; ``step()`` waits for this rank's ops (which complete
without the peers' help), optionally meets the other ranks at a barrier (``force_barrier``, off by
default), combines, then runs the base optimizer.  Nothing in ``step()`` waits for a slow peer.  Win-put and
pull-get give each parameter one window, named ``window_prefix + "." + parameter name`` (push-sum:
one per dtype, see below); ``unregister_window()``
frees exactly the windows this optimizer created (``__del__`` does too, if they are still there).

* push (spec §5.6): put ``p`` into the out-neighbours' buffers; ``w <- average(w, buffers)``.
* pull (the spec's broken ``DistributedPullGetOptimizer``, written from the algorithm): get the
  in-neighbours' published parameters; ``w <- average(w, buffers)``; after the local step the new
  value is published (under the readers' mutexes) for the next round.
* push-sum (stochastic gradient push, asynchronous): each rank keeps ``[x, weight]`` for all
  parameters of one dtype in one window of ``numel + 1`` elements and the model holds
  ``z = x / weight``.  On launch the local optimizer's progress since the last combine, times the
  weight, is added to ``x``, then a share of ``[x, weight]`` is accumulated into each out-neighbour
  (column-stochastic weights) and the rest kept; ``step()`` collects what arrived and sets
  ``z = x / weight``.  Mass is conserved without any barrier, so ranks may run at different speeds
  and stop after different numbers of steps; ``unregister_window()`` collects what is still in
  flight.  It converges on directed and irregular graphs too.

Example::

    opt = bf.DistributedWinPutOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model=model)
    ...
    opt.unregister_window()     # collective; before the next set_topology
"""

import sys

import torch

from bluefog import context
from bluefog.basics import in_neighbor_ranks, out_neighbor_ranks
from bluefog.ops.collective import barrier
from bluefog.ops.window import (win_accumulate_nonblocking, win_create, win_free,
                                win_get_nonblocking, win_mutex, win_put_nonblocking, win_update,
                                win_update_then_collect, win_wait)
from bluefog.optim.adapt_with_combine import ForwardTriggeredOptimizer
from bluefog.optim.wrapper import set_parameter


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


class _Group:
    """The parameters of one dtype and device, pushed as one window: ``ext = [x, weight]``;
    ``out``, the same layout, holds the share sent when the shares are equal.  The parameters
    are made views of one flat buffer ``z`` (as AWC's fused parameters are), so reading and
    writing them all is one tensor operation."""

    __slots__ = ("params", "name", "ext", "out", "z", "spans", "handle", "due")

    def __init__(self, params, name, distributed):
        self.params = params
        self.name = name
        self.spans, start = [], 0
        for p in params:
            self.spans.append((start, start + p.numel()))
            start += p.numel()
        with torch.no_grad():
            flat = torch.cat([p.detach().reshape(-1) for p in params])
            self.ext = torch.cat([flat, torch.ones(1, dtype=flat.dtype, device=flat.device)])
            self.z = flat
            if distributed:
                for p, (a, b) in zip(params, self.spans):
                    set_parameter(p, flat[a:b].view_as(p))
        self.out = None
        self.handle = None
        self.due = set()

    def gather(self):
        """``z`` <- the parameters now.  A parameter whose data was replaced (``p.data = ...``)
        is copied into ``z`` and made its view again."""
        base, size = self.z.data_ptr(), self.z.element_size()
        for p, (a, b) in zip(self.params, self.spans):
            if p.data_ptr() != base + a * size or not p.is_contiguous():
                self.z[a:b].copy_(p.detach().reshape(-1))
                set_parameter(p, self.z[a:b].view_as(p))

    def scatter(self, weight):
        """The parameters (views of ``z``) <- ``x / weight``."""
        torch.div(self.ext[:-1], weight, out=self.z)


class DistributedPushSumOptimizer(WindowOptimizer):
    """Push-sum (stochastic gradient push), asynchronous: correct on directed and irregular graphs.

    The parameters of one dtype share one window, ``window_prefix + "push_sum." + dtype``, holding
    ``[x, weight]``; the model holds ``z = x / weight``.  On the communicating forward pass the
    local progress since the last combine goes into ``x`` (scaled by the weight, so ``z`` moves by
    exactly the base optimizer's step) and shares of ``[x, weight]`` are accumulated into the
    out-neighbours' buffers; ``step()`` waits for this rank's accumulates only, adds what arrived
    and sets ``z = x / weight``.  No barrier: mass is conserved because data and weight travel in
    one accumulate under the target's mutex, and the owner adds and clears its buffers under the
    same mutex.

    Tunable: ``dst_weights`` (None: every out-neighbour, equal shares with self; a list of ranks:
    those, sharing equally with self; ``{rank: w}``: those weights, keeping ``self_weight`` or
    ``1 - sum(w)``), ``self_weight`` and ``force_barrier`` (default False; True meets every rank
    at a barrier in each ``step()``, as Bluefog 0.3.0 did).  A rank whose weight fell below 1
    sends only that fraction of its shares (keeping the rest), so a rank that runs ahead of its
    neighbours cannot hand all its weight away.  ``unregister_window()`` (collective) first adds
    the weight still in flight, so the parameters then hold every rank's final ``z``.
    """

    _timeline_prefix = "win_accumulate"

    def __init__(self, optimizer, model, num_steps_per_communication=1, window_prefix=None):
        super().__init__(optimizer, model, num_steps_per_communication, window_prefix,
                         force_barrier=False)
        self.dst_weights = None
        self.self_weight = None
        groups = {}
        for p in self._names:
            groups.setdefault((p.dtype, p.device), []).append(p)
        self._groups = [_Group(params, f"{self.window_prefix}push_sum.{str(dtype)[6:]}",
                               self._distributed)
                        for (dtype, _), params in groups.items()]
        self._group_of = {p: g for g in self._groups for p in g.params}
        self._sources = in_neighbor_ranks() if self._distributed else []
        if self._distributed:
            for group in self._groups:
                self._create_group_window(group)
            self._attach()

    def _create_group_window(self, group):
        try:
            created = win_create(group.ext, group.name, zero_init=True)
        except RuntimeError as error:
            raise ValueError(f"Cannot allocate MPI window {group.name!r} for push-sum: "
                             f"{error}") from error
        if not created:
            raise ValueError(f"Cannot allocate MPI window for push-sum: a window called "
                             f"{group.name!r} already exists. Free it, or give this optimizer "
                             "another window_prefix.")
        for p in group.params:
            self._windows[p] = group.name
        self._registered[group.name] = group.ext

    @property
    def push_sum_weights(self):
        """``{window name: this rank's push-sum weight}`` (1.0 at the start; the weights of all
        ranks sum to the number of ranks once every accumulate has been collected)."""
        return {g.name: float(g.ext[-1]) for g in self._groups}

    def _shares(self, weight):
        """(self share, {out-neighbour: share}) from the tunable attributes and this rank's
        current push-sum ``weight``."""
        targets = self.dst_weights
        if targets is None:
            targets = out_neighbor_ranks()
        if isinstance(targets, dict):
            shares = {int(r): float(w) for r, w in targets.items()}
            own = (float(self.self_weight) if self.self_weight is not None
                   else 1.0 - sum(shares.values()))
        else:
            share = 1.0 / (len(targets) + 1)
            shares = {int(r): share for r in targets}
            own = share if self.self_weight is None else float(self.self_weight)
        if weight < 1.0:     # send a fraction, keep the rest: the column sums do not change
            given = sum(shares.values())
            shares = {r: w * weight for r, w in shares.items()}
            own += given * (1.0 - weight)
        return own, shares

    def _launch_due(self, due):
        for _, p in due:
            group = self._group_of[p]
            group.due.add(p)
            if group.handle is None and len(group.due) == len(group.params):
                self._launch_group(group)

    def _launch_group(self, group):
        """``x <- weight * z`` (so the local step since the last combine enters ``x`` scaled by
        the weight, and ``z`` moves exactly as the base optimizer moved it), then accumulate the
        shares of ``[x, weight]`` into the out-neighbours and keep the rest."""
        ext = group.ext
        with torch.no_grad():
            weight = float(ext[-1])
            own, shares = self._shares(weight)
            values = set(shares.values())
            group.gather()
            x = ext[:-1]
            if len(values) == 1:        # equal shares: scale once, send unscaled
                if group.out is None:
                    group.out = torch.empty_like(ext)
                share = weight * values.pop()
                torch.mul(group.z, share, out=group.out[:-1])
                group.out[-1] = share
                torch.mul(group.z, weight * own, out=x)
                ext[-1] = weight * own
                ones = {r: 1.0 for r in shares}
                launch = lambda: win_accumulate_nonblocking(
                    group.out, group.name, dst_weights=ones, require_mutex=True)
            else:
                torch.mul(group.z, weight, out=x)
                launch = lambda: win_accumulate_nonblocking(
                    ext, group.name, self_weight=own, dst_weights=shares, require_mutex=True)
        first = group.params[0]
        self._begin(first, launch)
        group.handle = self._handles.pop(first)

    def synchronize(self):
        """Wait for this rank's accumulates (never for a peer), optionally meet at a barrier, add
        what arrived and set every parameter to ``x / weight``."""
        launched = []
        for group in self._groups:
            if group.handle is None and group.due:      # some parameters saw no forward pass
                self._launch_group(group)
            if group.handle is not None:
                win_wait(group.handle)
                launched.append(group)
        if self._distributed and self.force_barrier:
            barrier()
        with torch.no_grad():
            for group in launched:
                self._collect(group, wait=self.force_barrier)
                for p in group.due:
                    self._delay[p] = self._steps
                group.due.clear()
                group.handle = None
                self._end_span(group.params[0])
        self._synchronized = True

    def _collect(self, group, wait=False):
        """Add what arrived into ``[x, weight]`` and set the parameters to ``x / weight``.

        Only the buffers whose mutex is free right now are added (a neighbour may be writing into
        the others); what is left there is added next time, so nothing waits for a neighbour.
        With ``wait`` every buffer is added."""
        name = group.name
        if wait:
            ext = win_update_then_collect(name, require_mutex=True)
        else:
            held = []
            try:
                for j in self._sources:
                    mutex = win_mutex(name, for_self=True, ranks=[j])
                    if mutex.acquire(blocking=False):
                        held.append((j, mutex))
                if not held:
                    return
                ext = win_update(name, self_weight=1.0,
                                 neighbor_weights={j: 1.0 for j, _ in held}, reset=True)
            finally:
                for _, mutex in reversed(held):
                    mutex.release()
        group.scatter(float(ext[-1]))

    def unregister_window(self):
        """Collective: wait for this rank's accumulates, meet the others at a barrier, add the
        weight still in flight (so every parameter holds this rank's final ``x / weight``), then
        free the windows and remove the hooks.  Idempotent."""
        if self._windows and context.initialized() and not context.current().suspended:
            windows = context.current().windows
            mine = [g for g in self._groups
                    if windows.get(g.name) is not None and windows[g.name].tensor is g.ext]
            for group in mine:
                if group.handle is not None:
                    win_wait(group.handle)
                    group.handle = None
            if mine:
                barrier()
                with torch.no_grad():
                    for group in mine:
                        self._collect(group, wait=True)
                        group.due.clear()
        super().unregister_window()
