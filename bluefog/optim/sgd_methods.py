"""Shared parts of the SGD-based decentralized methods (gradient tracking, exact diffusion,
push-DIGing, quasi-global momentum): checking the base optimizer, the local gradient direction,
mixing-matrix checks, and the per-method ``adapt`` / ``combine`` protocol.

Each method is a wrapper from :mod:`bluefog.optim.adapt_with_combine` or
:mod:`bluefog.optim.adapt_then_combine` (same hooks, same delegation to the base optimizer) whose
update is its own: ``_adapt(p, grad, group)`` prepares what is sent for one parameter, and
``_combine(p, mixed)`` turns the neighbors' weighted average of it into the new parameter and
state.  With one rank, ``mixed`` is None (the mixing matrix is the identity) and the method runs
its local update, so a size-1 run is plain gradient descent for the exact methods.

Example::

    check_sgd(optimizer, "DistributedGradientTrackingOptimizer", momentum=False)
    d = direction(p, p.grad, group)        # gradient with weight decay and maximize applied
"""

import numpy as np
import torch

from bluefog.basics import is_topo_weighted, load_topology, size
from bluefog.ops.common import synchronize
from bluefog.optim.communication import NeighborAllreduceAverager
from bluefog.topology import GetRecvWeights

_NEIGHBOR = NeighborAllreduceAverager()


def check_sgd(optimizer, method: str, momentum: bool):
    """The base optimizer must be a plain ``torch.optim.SGD`` with settings ``method`` defines.

    With ``momentum`` False every group must have ``momentum=0``; with True every group must
    have ``momentum`` in (0, 1); ``nesterov`` and ``dampening`` are not defined for these methods.

    Raises:
        TypeError: ``optimizer`` is not a ``torch.optim.SGD``.
        ValueError: a group's ``momentum``, ``nesterov`` or ``dampening`` is not supported.
    """
    from bluefog.optim.wrapper import DistributedOptimizer
    if isinstance(optimizer, DistributedOptimizer) or not isinstance(optimizer, torch.optim.SGD):
        raise TypeError(f"Argument optimizer of {method} must be a torch.optim.SGD (the method's "
                        f"update is defined for plain SGD only), got {type(optimizer).__name__}.")
    for k, group in enumerate(optimizer.param_groups):
        beta = group.get("momentum", 0)
        if momentum and not 0 < beta < 1:
            raise ValueError(f"{method} needs torch.optim.SGD with momentum in (0, 1) (the "
                             f"quasi-global momentum factor), got momentum={beta!r} in param "
                             f"group {k}.")
        if not momentum and beta != 0:
            raise ValueError(f"{method} needs torch.optim.SGD with momentum=0 (momentum is not "
                             f"defined for this method), got momentum={beta!r} in param group {k}.")
        if group.get("nesterov", False):
            raise ValueError(f"{method} does not support nesterov=True (param group {k}).")
        if momentum and group.get("dampening", 0) != 0:
            raise ValueError(f"{method} needs dampening=0, got dampening="
                             f"{group['dampening']!r} in param group {k}.")


def direction(p, grad, group):
    """The local gradient direction of ``p``: ``grad`` (zeros if None), negated under
    ``maximize``, plus ``weight_decay * p``; always a new tensor."""
    d = torch.zeros_like(p) if grad is None else grad.detach().clone()
    if group.get("maximize", False):
        d.neg_()
    if group.get("weight_decay", 0) != 0:
        d.add_(p.detach(), alpha=group["weight_decay"])
    return d


def static_mixing_matrix() -> np.ndarray:
    """``M[i, j]``: the weight rank i gives to rank j's tensor in a static ``neighbor_allreduce``
    (topology weights when the topology is weighted, else uniform over in-neighbors and self)."""
    topo, n = load_topology(), size()
    weighted = is_topo_weighted()
    matrix = np.zeros((n, n))
    for i in range(n):
        if weighted:
            self_weight, src = GetRecvWeights(topo, i)
        else:
            peers = [j for j in topo.predecessors(i) if j != i]
            self_weight = 1.0 / (len(peers) + 1)
            src = {j: self_weight for j in peers}
        matrix[i, i] = self_weight
        for j, w in src.items():
            matrix[i, j] = w
    return matrix


def check_static_weights(method: str, symmetric: bool = False):
    """Raise ``ValueError`` unless the static mixing matrix is doubly stochastic (and symmetric
    when ``symmetric``): exact methods converge to a wrong point otherwise."""
    matrix = static_mixing_matrix()
    rows, cols = matrix.sum(axis=1), matrix.sum(axis=0)
    if not (np.allclose(rows, 1.0, atol=1e-9) and np.allclose(cols, 1.0, atol=1e-9)):
        raise ValueError(
            f"{method} needs a doubly stochastic mixing matrix (every rank's weights, given and "
            f"received, sum to 1); the current topology's column sums are "
            f"{np.round(cols, 6).tolist()}. Use a regular graph with uniform weights (RingGraph, "
            "ExponentialGraph, FullyConnectedGraph) or a weighted one: "
            "bf.set_topology(G, is_weighted=True).")
    if symmetric and not np.allclose(matrix, matrix.T, atol=1e-9):
        raise ValueError(f"{method} needs a symmetric mixing matrix (an undirected topology with "
                         "symmetric weights, e.g. RingGraph or FullyConnectedGraph); the current "
                         "topology is directed.")


class TopologyCheck:
    """Checks the static topology once per topology object (``set_topology`` replaces it)."""

    def __init__(self, method: str, symmetric: bool = False):
        self.method, self.symmetric, self._checked = method, symmetric, None

    def __call__(self):
        topology, weighted = load_topology(), is_topo_weighted()
        checked = self._checked          # (graph, weighted): the graph itself, an id may be reused
        if checked is None or checked[0] is not topology or checked[1] != weighted:
            check_static_weights(self.method, self.symmetric)
            self._checked = (topology, weighted)


class MixingKnobs:
    """The neighbor-averaging weights a method reads at every launch, as for AWC: ``self_weight``,
    ``src_weights``, ``dst_weights`` (None: the static topology) and ``enable_topo_check``."""

    _timeline_prefix = "neighbor.allreduce"

    def _init_mixing(self):
        self.self_weight = None
        self.src_weights = None
        self.dst_weights = None
        self.enable_topo_check = False

    def _mix(self, tensor, name):
        """Start ``W @ tensor`` (nonblocking); ``synchronize`` the result gives the average."""
        return _NEIGHBOR.launch(tensor, name, self)

    def _finish(self, p, token):
        self._combine(p, synchronize(token))


class MethodSteps:
    """Mixin for the method wrappers: a size-1 ``step()`` runs the method with ``W = I``; a
    ``closure`` is evaluated first (its forward and backward passes launch the communication)."""

    def step(self, closure=None):
        if not self._distributed:
            return self._local_step(closure)
        return super().step(closure)

    def _step_between_communications(self, closure):
        """(Methods that adapt in backward.)  No backward pass since the last step: evaluate the
        closure, whose backward pass adapts and launches."""
        if closure is None:
            return None
        with torch.enable_grad():
            loss = closure()
        for p, delay in self._step_delay.items():
            if delay <= 0:
                self._step_delay[p] = self._steps
        return loss

    def _local_step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            for group in self.optimizer.param_groups:
                for p in group["params"]:
                    if p.requires_grad:
                        self._adapt(p, p.grad, group)
                        self._combine(p, None)
        return loss

    def register_step_function(self, step_function):
        raise TypeError(f"{type(self).__name__} applies its own update; register_step_function is "
                        "only for DistributedAdaptThenCombineOptimizer.")
