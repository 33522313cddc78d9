"""Exact diffusion (Yuan, Ying, Zhao and Sayed, IEEE TSP 2019; D², Tang et al., ICML 2018) as an
optimizer.

Diffusion (adapt-then-combine) with a correction that removes the bias plain decentralized SGD has
when the ranks' data differ; with full gradients it reaches the exact minimizer of the average loss
at a constant step size.  With a symmetric doubly stochastic ``W`` and ``W_bar = (I + W) / 2``::

    psi_{k+1} = x_k - lr * grad f(x_k)                 (adapt)
    phi_{k+1} = psi_{k+1} + x_k - psi_k                (correct; psi_0 = x_0)
    x_{k+1}   = W_bar phi_{k+1}                        (combine)

The combine needs the new gradient, so each parameter's ``phi`` is sent from its backward hook, as
in adapt-then-combine, overlapping the rest of the backward pass.

Example::

    opt = bf.DistributedExactDiffusionOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model)
    loss.backward()          # adapt, correct, and start the combine per parameter
    opt.step()               # apply the combine
"""

from bluefog.optim.adapt_then_combine import AdaptInBackward
from bluefog.optim.sgd_methods import (MethodSteps, MixingKnobs, TopologyCheck, check_sgd,
                                       direction)
from bluefog.optim.wrapper import set_parameter

NAME = "DistributedExactDiffusionOptimizer"


def _adapt_step(optimizer, p, grad, group):
    optimizer._adapt(p, grad, group)


class DistributedExactDiffusionOptimizer(MethodSteps, MixingKnobs, AdaptInBackward):
    """Exact diffusion around ``torch.optim.SGD``.

    Topologies: static only, with a symmetric doubly stochastic ``W`` (an undirected graph with
    symmetric weights: ``RingGraph``, ``FullyConnectedGraph``, a weighted symmetric graph...).  The
    static topology is checked; ``self_weight`` / ``src_weights`` may give other static weights
    (the caller's responsibility); ``dst_weights`` (dynamic topologies) is refused.  State per
    parameter (in ``state_dict``): ``psi``.

    Args:
        optimizer: a ``torch.optim.SGD`` with ``momentum=0`` (``lr``, ``weight_decay`` and
            ``maximize`` are honoured).
        model: the ``nn.Module`` (or list) whose parameters the optimizer updates.

    Raises:
        TypeError: ``optimizer`` is not a ``torch.optim.SGD``.
        ValueError: momentum or nesterov set; (at launch) the static topology is not symmetric and
            doubly stochastic, or ``dst_weights`` is set.
    """

    def __init__(self, optimizer, model):
        check_sgd(optimizer, NAME, momentum=False)
        super().__init__(optimizer, model, 1)
        self._init_mixing()
        self._check_topology = TopologyCheck(NAME, symmetric=True)
        self._init_adapt(_adapt_step)
        self._attach()

    def _adapt(self, p, grad, group):
        """``p`` becomes ``phi = psi_new + x - psi_old`` (sent); ``psi`` is kept in the state."""
        state = self.optimizer.state[p]
        psi = p.detach() - group["lr"] * direction(p, grad, group)
        previous = state.get("psi")
        if previous is None:
            p.copy_(psi)
        else:
            p.add_(psi - previous)
        state["psi"] = psi

    def _launch(self, p, name):
        if self.dst_weights is not None:
            raise ValueError(f"{NAME} supports static topologies only: set dst_weights to None "
                             "(exact diffusion's correction assumes one fixed W).")
        if self.self_weight is None:
            self._check_topology()
        return self._mix(p.data, name)

    def _combine(self, p, mixed):
        if mixed is not None:                      # x = (phi + W phi) / 2
            set_parameter(p, (p.detach() + mixed).mul_(0.5))
