"""Which averaging formula an op applies, and with which weights: thin descriptions whose arithmetic
lives in :mod:`bluefog.averaging`.

A combine is called as ``combine(x, rows, out=None)`` (the :class:`~bluefog.averaging.Combine`
protocol the kernels use); ``rows`` may be stacked slots or the raw bytes that came with a round.

Example::

    avg = uniform()(x, received)                       # (x + sum of received) / (n + 1)
    mix = weighted(0.5, [0.25, 0.25])(x, received)     # 0.25 r0 + 0.25 r1 + 0.5 x
"""

import dataclasses
from typing import Optional, Tuple

import torch

from bluefog import averaging


@dataclasses.dataclass(frozen=True)
class Uniform:
    """:func:`~bluefog.averaging.uniform_average` over the chosen slots (all when None).

    Combines compare equal when they compute the same formula, so a fused kernel can apply one
    combine to the whole fused buffer.
    """

    slots: Optional[Tuple[int, ...]] = None
    divisor_scale: int = 1

    def __call__(self, x: torch.Tensor, rows, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        return averaging.uniform_average(x, rows, self.slots, self.divisor_scale, out)


@dataclasses.dataclass(frozen=True)
class Weighted:
    """:func:`~bluefog.averaging.weighted_sum`:
    ``(sum_k w_k * slot_k + self_weight * x) / divisor``; slots of weight 0 are left out."""

    self_weight: float
    slot_weights: Tuple[float, ...]
    divisor: int = 1

    def __call__(self, x: torch.Tensor, rows, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        return averaging.weighted_sum(x, rows, self.self_weight, self.slot_weights, self.divisor,
                                      out)


def combine_in_place(combine, x: torch.Tensor, received) -> torch.Tensor:
    """``x[...] = combine(x, received)``, returning ``x``."""
    return combine(x, received, out=x)


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
