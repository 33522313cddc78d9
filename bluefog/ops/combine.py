"""The arithmetic of neighbor averaging, shared by the neighbor, hierarchical and window ops.

Numbers follow spec §3.2: float16 is computed in float32 and rounded once; uniform averages add
everything and divide once; weighted sums add ``w_j * x_j`` in ascending source order and then the
self term.
"""

from typing import Callable, Optional, Sequence

import torch

from bluefog.engine.mpi import compute_dtype

Combine = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def uniform(slots: Optional[Sequence[int]] = None, divisor_scale: int = 1) -> Combine:
    """``(x + sum of the chosen slots) / ((count + 1) * divisor_scale)`` (all slots by default)."""

    def combine(x: torch.Tensor, received: torch.Tensor) -> torch.Tensor:
        chosen = range(received.shape[0]) if slots is None else slots
        acc = x.to(compute_dtype(x.dtype), copy=True)
        for k in chosen:
            acc += received[k]
        acc /= (len(chosen) + 1) * divisor_scale
        return acc.to(x.dtype)

    return combine


def weighted(self_weight: float, slot_weights: Sequence[float], divisor: int = 1) -> Combine:
    """``(sum_k w_k * slot_k + self_weight * x) / divisor``; slots of weight 0 are left out."""

    def combine(x: torch.Tensor, received: torch.Tensor) -> torch.Tensor:
        work = compute_dtype(x.dtype)
        acc = torch.zeros(x.shape, dtype=work)
        for k, w in enumerate(slot_weights):
            if w != 0:
                acc.add_(received[k].to(work), alpha=w)
        acc.add_(x.to(work), alpha=self_weight)
        if divisor != 1:
            acc /= divisor
        return acc.to(x.dtype)

    return combine


def is_uniform(self_weight: float, weights: Sequence[float]) -> bool:
    """True when every weight equals ``1/(len(weights)+1)`` (up to rounding)."""
    target = 1.0 / (len(weights) + 1)
    return all(abs(w - target) <= 1e-8 + 1e-5 * target for w in [self_weight, *weights])
