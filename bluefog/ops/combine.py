"""The arithmetic of neighbor averaging, shared by the neighbor, hierarchical and window ops.

Numbers follow spec §3.2: float16 is computed in float32 and rounded once; uniform averages add
everything and divide once; weighted sums add ``w_j * x_j`` in ascending source order and then the
self term.
"""

import dataclasses
from typing import Optional, Tuple

import numpy as np
import torch

from bluefog.engine.mpi import compute_dtype


@dataclasses.dataclass(frozen=True)
class Uniform:
    """``(x + sum of the chosen slots) / ((count + 1) * divisor_scale)`` (all slots when None).

    Combines compare equal when they compute the same formula, so a fused kernel can apply one
    combine to the whole fused buffer.
    """

    slots: Optional[Tuple[int, ...]] = None
    divisor_scale: int = 1

    def __call__(self, x: torch.Tensor, received: torch.Tensor) -> torch.Tensor:
        chosen, divisor = self.terms(len(received))
        if divisor == 1:
            return x.clone()
        if _numpy_ready(x, received):
            return _numpy_uniform(x, received.numpy().reshape(received.shape[0], -1), chosen,
                                  divisor)
        work = compute_dtype(x.dtype)
        if len(chosen):    # the first addition also allocates the result: one pass fewer
            acc = torch.add(x.to(work), received[chosen[0]].to(work))
            for k in chosen[1:]:
                acc += received[k]
        else:
            acc = x.to(work, copy=True)
        acc.div_(divisor)
        return acc.to(x.dtype)

    def terms(self, count: int):
        """The slots added (of ``count`` received) and the divisor."""
        chosen = range(count) if self.slots is None else self.slots
        return chosen, (len(chosen) + 1) * self.divisor_scale

    def of_bytes(self, x: torch.Tensor, parts) -> Optional[torch.Tensor]:
        """``self(x, received)`` for received data given as raw bytes, one array per slot (as it
        came with a negotiation round): no copy into slots first.  None where only the general
        path applies (see :meth:`reads_bytes`)."""
        chosen, divisor = self.terms(len(parts))
        kind = _numpy_kind(x)
        if divisor == 1 or kind is None:
            return None
        return _numpy_uniform(x, [part.view(kind) for part in parts], chosen, divisor)

    def reads_bytes(self, x: torch.Tensor, count: int) -> bool:
        """:meth:`of_bytes` computes the result for ``x`` and ``count`` received parts (it checks
        the same): float32 / float64 on the CPU outside autograd, with something to average."""
        return self.terms(count)[1] != 1 and _numpy_kind(x) is not None


@dataclasses.dataclass(frozen=True)
class Weighted:
    """``(sum_k w_k * slot_k + self_weight * x) / divisor``; slots of weight 0 are left out."""

    self_weight: float
    slot_weights: Tuple[float, ...]
    divisor: int = 1

    def __call__(self, x: torch.Tensor, received: torch.Tensor) -> torch.Tensor:
        work = compute_dtype(x.dtype)
        acc = x.new_zeros(x.shape, dtype=work)
        for k, w in enumerate(self.slot_weights):
            if w != 0:
                acc.add_(received[k].to(work), alpha=w)
        acc.add_(x.to(work), alpha=self.self_weight)
        if self.divisor != 1:
            acc /= self.divisor
        return acc.to(x.dtype)


def _numpy_kind(x: torch.Tensor):
    """numpy's dtype for a float32 / float64 CPU tensor outside autograd, else None: there numpy
    does the arithmetic (the same IEEE additions and division as torch, at a fraction of torch's
    per-call cost on small tensors)."""
    dtype = x.dtype
    if not x.is_cpu or x.requires_grad:
        return None
    return np.float32 if dtype is torch.float32 else np.float64 if dtype is torch.float64 else None


def _numpy_ready(x: torch.Tensor, received) -> bool:
    """``x`` and the stacked ``received`` slots can both be combined in numpy."""
    return (_numpy_kind(x) is not None and type(received) is torch.Tensor
            and received.dtype is x.dtype and received.is_cpu and not received.requires_grad)


def _numpy_uniform(x: torch.Tensor, rows, chosen, divisor: int) -> torch.Tensor:
    """:class:`Uniform` in numpy; ``rows[k]`` is slot k as a flat array of x's dtype."""
    mine = x.numpy().reshape(-1)
    if len(chosen):
        acc = np.add(mine, rows[chosen[0]])
        for k in chosen[1:]:
            np.add(acc, rows[k], out=acc)
    else:
        acc = mine.copy()
    np.divide(acc, divisor, out=acc)
    return torch.from_numpy(acc.reshape(x.shape))


def combine_in_place(combine, x: torch.Tensor, received: torch.Tensor) -> torch.Tensor:
    """``x[...] = combine(x, received)``; a uniform combine in x's own precision needs no temporary
    (the same additions in the same order, so the same bits)."""
    if isinstance(combine, Uniform) and compute_dtype(x.dtype) == x.dtype:
        chosen, divisor = combine.terms(received.shape[0])
        for k in chosen:
            x.add_(received[k])
        if divisor != 1:
            x.div_(divisor)
        return x
    return x.copy_(combine(x, received))


def uniform(slots=None, divisor_scale: int = 1) -> Uniform:
    """A :class:`Uniform` combine."""
    return Uniform(None if slots is None else tuple(slots), divisor_scale)


def weighted(self_weight: float, slot_weights, divisor: int = 1) -> Weighted:
    """A :class:`Weighted` combine."""
    return Weighted(float(self_weight), tuple(float(w) for w in slot_weights), divisor)


def is_uniform(self_weight: float, weights) -> bool:
    """True when every weight equals ``1/(len(weights)+1)`` (up to rounding)."""
    target = 1.0 / (len(weights) + 1)
    return all(abs(w - target) <= 1e-8 + 1e-5 * target for w in [self_weight, *weights])
