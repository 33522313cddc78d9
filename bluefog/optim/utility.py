"""Make every rank start from the same model and optimizer: broadcast or average parameters and
optimizer state (spec §6).

Example::

    bf.broadcast_parameters(model.state_dict(), root_rank=0)
    bf.broadcast_optimizer_state(optimizer, root_rank=0)
"""

import numbers
from typing import List, Optional, Tuple

import torch

from bluefog.ops.collective import allreduce_nonblocking_, broadcast_nonblocking_
from bluefog.ops.common import synchronize
from bluefog.optim.wrapper import DistributedOptimizer


def _named_tensors(params) -> List[Tuple[Optional[str], torch.Tensor]]:
    """``params`` (a dict sorted by key, or a list of tensors or (name, tensor) pairs) as pairs."""
    if isinstance(params, dict):
        return sorted(params.items(), key=lambda item: item[0])
    if isinstance(params, (list, tuple)):
        pairs = []
        for item in params:
            if isinstance(item, tuple) and len(item) == 2:
                pairs.append((item[0], item[1]))
            else:
                pairs.append((None, item))
        return pairs
    raise ValueError(f"invalid params of type: {type(params)}; give a dict such as "
                     "model.state_dict() or a list of tensors or (name, tensor) pairs.")


def broadcast_parameters(params, root_rank: int):
    """Overwrite every tensor of ``params`` in place with ``root_rank``'s value.  Collective.

    ``params`` is a dict (``model.state_dict()``, whose tensors share storage with the model) or
    a list of tensors or of ``(name, tensor)`` pairs (``model.named_parameters()``).

    Raises:
        ValueError: ``params`` has another type.
    """
    handles = [broadcast_nonblocking_(p.data, root_rank, name) for name, p in _named_tensors(params)]
    for handle in handles:
        synchronize(handle)


def allreduce_parameters(params):
    """Average every floating-point tensor of ``params`` over all ranks, in place.  Collective.

    Integer tensors (such as batch-norm's ``num_batches_tracked``) are left as they are.
    """
    handles = [allreduce_nonblocking_(p.data, average=True, name=name)
               for name, p in _named_tensors(params) if p.is_floating_point()]
    for handle in handles:
        synchronize(handle)


def _leaves(value) -> Optional[list]:
    """The numbers of a number, bool or (nested) tuple / list of them; None for anything else."""
    if isinstance(value, (bool, numbers.Real)) and not isinstance(value, torch.Tensor):
        return [float(value)]
    if isinstance(value, (tuple, list)) and value:
        found = []
        for item in value:
            sub = _leaves(item)
            if sub is None:
                return None
            found += sub
        return found
    return None


def _rebuild(template, numbers_iter):
    """``template``'s structure and element types, filled from ``numbers_iter``."""
    if isinstance(template, (tuple, list)):
        return type(template)(_rebuild(item, numbers_iter) for item in template)
    value = next(numbers_iter)
    if isinstance(template, bool):
        return bool(value)
    if isinstance(template, numbers.Integral):
        return int(round(value))
    return type(template)(value) if type(template) in (float, int) else float(value)


def _broadcast_value(value, root_rank: int, name: str):
    """``root_rank``'s ``value`` (a number, bool, tensor or nested tuple of numbers); other values
    (None, strings, ...) are returned unchanged without communicating."""
    if isinstance(value, torch.Tensor):
        work = value.detach() if value.is_contiguous() else value.detach().contiguous()
        synchronize(broadcast_nonblocking_(work, root_rank, name))
        if work.data_ptr() != value.data_ptr():
            with torch.no_grad():
                value.copy_(work)
        return value
    leaves = _leaves(value)
    if leaves is None:
        return value
    packed = torch.tensor(leaves, dtype=torch.float64)
    synchronize(broadcast_nonblocking_(packed, root_rank, name))
    return _rebuild(value, iter(packed.tolist()))


def _make_state(optimizer):
    """Run one step with zero gradients to create the optimizer's lazy state, leaving the
    parameters and gradients as they were (no communication: ``optimizer`` is a plain one)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    saved = [(p.detach().clone(), p.grad) for p in params]
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    with torch.no_grad():
        for p, (value, grad) in zip(params, saved):
            p.copy_(value)
            p.grad = grad


def broadcast_optimizer_state(optimizer, root_rank: int):
    """Give every rank ``root_rank``'s optimizer hyperparameters and state.  Collective.

    Works on plain torch optimizers and on bluefog's wrappers (their state is the base
    optimizer's).  Options that are None or strings (``foreach``, ``fused``, ...) are not sent;
    numbers, bools and (nested) tuples of numbers come back with their Python types; tensor state,
    0-d ``step`` counters included, is overwritten in place.

    Raises:
        ValueError: ``optimizer`` is an ``LBFGS`` (its state cannot be broadcast this way).
    """
    base = optimizer.optimizer if isinstance(optimizer, DistributedOptimizer) else optimizer
    if isinstance(base, torch.optim.LBFGS):
        raise ValueError("cannot broadcast torch.optim.LBFGS state")
    for index, group in enumerate(base.param_groups):
        for key in sorted(k for k in group if k != "params"):
            group[key] = _broadcast_value(group[key], root_rank, f"{key}.{index}")
    if not base.state_dict()["state"]:
        _make_state(base)                           # with root's options, so layouts agree
        if not base.state_dict()["state"]:
            return                                  # a stateless optimizer: nothing else to do
    occurrences = {}
    for group in base.param_groups:
        for p in group["params"]:
            state = base.state.get(p)
            if not state:
                continue
            for key in sorted(state, key=str):
                occurrences[key] = occurrences.get(key, 0) + 1
                state[key] = _broadcast_value(state[key], root_rank, f"{key}.{occurrences[key]}")
