"""Push-DIGing (Nedić, Olshevsky and Shi, SIAM J. Optim. 2017): gradient tracking on directed
graphs, as an optimizer.

Each rank splits what it holds among itself and its out-neighbors with column-stochastic weights
(``C``: what a rank sends sums to 1; it needs to know only its out-degree), the push-sum scheme of
Kempe et al. 2003.  A scalar weight ``v`` travels with the data and removes the imbalance a
directed, irregular graph causes; the model holds ``x = u / v``::

    y_k     = C y_{k-1} + grad f(x_k) - grad f(x_{k-1})        (y_0 = grad f(x_0))
    u_{k+1} = C (u_k - lr * y_k)                                (u_0 = x_0)
    v_{k+1} = C v_k                                             (v_0 = 1)
    x_{k+1} = u_{k+1} / v_{k+1}

``[u - lr * y, y, v]`` of each parameter goes out in one ``neighbor_allreduce`` from its backward
hook (the sender scales the copy it sends; receivers add with weight 1).

Example::

    bf.set_topology(my_directed_graph)
    opt = bf.DistributedPushDIGingOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), model)
"""

import torch

from bluefog.basics import in_neighbor_ranks, out_neighbor_ranks
from bluefog.ops.neighbor import neighbor_allreduce_nonblocking
from bluefog.optim.adapt_then_combine import AdaptInBackward
from bluefog.optim.sgd_methods import MethodSteps, MixingKnobs, check_sgd, direction
from bluefog.optim.wrapper import set_parameter

NAME = "DistributedPushDIGingOptimizer"


def _adapt_step(optimizer, p, grad, group):
    optimizer._adapt(p, grad, group)


def push_weights(self_weight, src_weights, dst_weights):
    """``(self_weight, {src: 1.0}, {dst: share})`` for a push round; defaults from the static
    topology: keep ``1 / (out-degree + 1)`` and send as much to each out-neighbor."""
    if dst_weights is None:
        if self_weight is not None or src_weights is not None:
            raise ValueError(f"{NAME}: set dst_weights together with self_weight / src_weights "
                             "(or none of them for the static topology).")
        outs = out_neighbor_ranks()
        share = 1.0 / (len(outs) + 1)
        return share, {r: 1.0 for r in in_neighbor_ranks()}, {r: share for r in outs}
    if not isinstance(dst_weights, dict):
        raise ValueError(f"{NAME}: dst_weights must be a dict {{rank: share}} whose shares and "
                         f"self_weight sum to 1, got {type(dst_weights).__name__}.")
    if src_weights is None:
        raise ValueError(f"{NAME}: with dst_weights set, src_weights must list the ranks this rank "
                         "receives from (a list, or a dict with weight 1.0 each).")
    if isinstance(src_weights, dict):
        if any(abs(float(w) - 1.0) > 1e-12 for w in src_weights.values()):
            raise ValueError(f"{NAME}: src_weights must all be 1.0 (the sender scales what it "
                             f"pushes), got {src_weights!r}.")
        sources = list(src_weights)
    else:
        sources = list(src_weights)
    shares = sum(float(w) for w in dst_weights.values())
    if self_weight is None:
        self_weight = 1.0 - shares
    if abs(float(self_weight) + shares - 1.0) > 1e-9 or self_weight < 0:
        raise ValueError(f"{NAME}: self_weight plus the dst_weights shares must be 1 (column "
                         f"stochastic), got {float(self_weight) + shares!r}.")
    return float(self_weight), {int(r): 1.0 for r in sources}, dict(dst_weights)


class DistributedPushDIGingOptimizer(MethodSteps, MixingKnobs, AdaptInBackward):
    """Push-DIGing around ``torch.optim.SGD``: exact on directed and irregular graphs.

    Topologies: static (any strongly connected directed graph; the topology's own weights are not
    used, each rank splits evenly over itself and its out-neighbors) and dynamic: set
    ``dst_weights = {rank: share}``, ``src_weights`` (the ranks received from, weight 1.0 each)
    and optionally ``self_weight`` (default ``1 - sum(shares)``) before each step.  State per
    parameter (in ``state_dict``): ``push_numerator`` (``u``), ``push_weight`` (``v``),
    ``tracker`` (``C y``) and ``previous_grad``.

    Args:
        optimizer: a ``torch.optim.SGD`` with ``momentum=0`` (``lr``, ``weight_decay`` and
            ``maximize`` are honoured).
        model: the ``nn.Module`` (or list) whose parameters the optimizer updates.

    Raises:
        TypeError: ``optimizer`` is not a ``torch.optim.SGD``.
        ValueError: momentum or nesterov set; (at launch) weights that are not column stochastic.
    """

    def __init__(self, optimizer, model):
        check_sgd(optimizer, NAME, momentum=False)
        super().__init__(optimizer, model, 1)
        self._init_mixing()
        self._init_adapt(_adapt_step)
        self._sent = {}              # parameter -> [u - lr * y, y, v], until the combine
        self._attach()

    def _adapt(self, p, grad, group):
        state = self.optimizer.state[p]
        grad = direction(p, grad, group)
        tracker = state.get("tracker")
        tracker = grad.clone() if tracker is None else tracker + grad - state["previous_grad"]
        state["previous_grad"] = grad
        numerator = state.get("push_numerator")
        if numerator is None:
            numerator = p.detach().clone()
            state["push_weight"] = torch.ones(1, dtype=p.dtype, device=p.device)
        self._sent[p] = torch.cat([(numerator - group["lr"] * tracker).reshape(-1),
                                   tracker.reshape(-1), state["push_weight"].reshape(-1)])

    def _launch(self, p, name):
        self_weight, src, dst = push_weights(self.self_weight, self.src_weights, self.dst_weights)
        return neighbor_allreduce_nonblocking(self._sent[p], self_weight=self_weight,
                                              src_weights=src, dst_weights=dst,
                                              enable_topo_check=self.enable_topo_check, name=name)

    def _combine(self, p, mixed):
        sent = self._sent.pop(p)
        mixed = sent if mixed is None else mixed
        n = p.numel()
        state = self.optimizer.state[p]
        state["push_numerator"] = mixed[:n].view_as(p).clone()
        state["tracker"] = mixed[n:2 * n].view_as(p).clone()
        state["push_weight"] = mixed[2 * n:].clone()
        set_parameter(p, state["push_numerator"] / state["push_weight"])
