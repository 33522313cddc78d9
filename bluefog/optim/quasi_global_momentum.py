"""Quasi-global momentum (QG-DSGDm; Lin, Karimireddy, Stich and Jaggi, ICML 2021) as an optimizer.

Decentralized momentum SGD with heterogeneous data builds momentum from each rank's own gradients,
which point in different directions on different ranks and amplify the disagreement.  QG-DSGDm
builds the momentum from the change of the *averaged* model instead, an estimate of the global
direction.  With ``beta`` the SGD momentum and mixing matrix ``W``::

    m_k       = grad f(x_k) + beta * mhat_{k-1}                       (mhat_{-1} = 0)
    x_{k+1}   = W (x_k - lr * m_k)                                    (adapt, then combine)
    mhat_k    = beta * mhat_{k-1} + (1 - beta) * (x_k - x_{k+1}) / lr

Each parameter is adapted and sent from its backward hook, as in adapt-then-combine.

Example::

    sgd = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    opt = bf.DistributedQuasiGlobalMomentumOptimizer(sgd, model)
"""

from bluefog.optim.adapt_then_combine import AdaptInBackward
from bluefog.optim.communication import CollectiveKnobs, CommunicationType
from bluefog.optim.sgd_methods import MethodSteps, check_sgd, direction
from bluefog.optim.wrapper import set_parameter

NAME = "DistributedQuasiGlobalMomentumOptimizer"


def _adapt_step(optimizer, p, grad, group):
    optimizer._adapt(p, grad, group)


class DistributedQuasiGlobalMomentumOptimizer(MethodSteps, CollectiveKnobs, AdaptInBackward):
    """QG-DSGDm around ``torch.optim.SGD(momentum=beta)``.

    Topologies: any the ATC optimizer takes: static or dynamic (``self_weight`` / ``src_weights`` /
    ``dst_weights``, read at every launch), and any ``communication_type``.  State per parameter
    (in ``state_dict``): ``quasi_global_momentum`` (``mhat``).

    Args:
        optimizer: a ``torch.optim.SGD`` with ``momentum`` in (0, 1), ``dampening=0``,
            ``nesterov=False`` (``lr``, ``weight_decay``, ``maximize`` are honoured).
        model: the ``nn.Module`` (or list) whose parameters the optimizer updates.
        communication_type: a :class:`CommunicationType` (default ``neighbor_allreduce``).

    Raises:
        TypeError: ``optimizer`` is not a ``torch.optim.SGD``.
        ValueError: momentum not in (0, 1), dampening or nesterov set.
    """

    def __init__(self, optimizer, model, communication_type=CommunicationType.neighbor_allreduce):
        check_sgd(optimizer, NAME, momentum=True)
        super().__init__(optimizer, model, 1)
        self._init_knobs(communication_type)
        self._init_adapt(_adapt_step)
        self._before = {}            # parameter -> x_k, until the combine
        self._attach()

    def _adapt(self, p, grad, group):
        state = self.optimizer.state[p]
        step = direction(p, grad, group)
        momentum = state.get("quasi_global_momentum")
        if momentum is not None:
            step.add_(momentum, alpha=group["momentum"])
        self._before[p] = p.detach().clone()
        p.sub_(step, alpha=group["lr"])

    def _finish(self, p, token):
        source, key = token
        self._combine(p, source.finish(key))

    def _combine(self, p, mixed):
        set_parameter(p, mixed)
        group, before = self._groups[p], self._before.pop(p)
        lr, beta = group["lr"], group["momentum"]
        if lr == 0:
            return
        state = self.optimizer.state[p]
        change = (before - p.detach()).div_(lr)
        momentum = state.get("quasi_global_momentum")
        if momentum is None:
            state["quasi_global_momentum"] = change.mul_(1 - beta)
        else:
            momentum.mul_(beta).add_(change, alpha=1 - beta)
