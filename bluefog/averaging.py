"""The arithmetic of averaging: each formula that combines a tensor with received data, written once.

Pure functions of tensors (no communication), used by the neighbor, hierarchical, pair-gossip and
window ops (through the combine descriptions of ``bluefog.ops.combine``) and by the engine (the
summed rows of an allreduce whose data came with a negotiation round).

Numbers:

* float16 / bfloat16 are computed in float32 and rounded once at the end; float32 / float64 in
  their own dtype; integer data (windows) in float64, truncated back as a tensor copy does.
* A uniform average adds ``x`` and the chosen rows, in order, then divides once (never a sum of
  products with ``1/n``).
* A weighted sum adds ``w_k * row_k`` in ascending ``k`` (rows are in ascending source rank),
  skipping zero weights, then the self term, then divides by the optional divisor.

Rows (received data): a stacked tensor (``rows[k]`` is row ``k``, shaped like ``x``), or a
sequence whose items are tensors or flat numpy arrays; a numpy array holds the raw bytes of ``x``'s
dtype (as data arrives with a round, any numpy dtype is reinterpreted), so bytes need no copy into
slots first.  float32 / float64 CPU data is computed in numpy: the same IEEE additions and
divisions as torch, at a fraction of torch's per-call cost on small tensors.

Example::

    avg = uniform_average(x, received)                    # (x + sum of rows) / (n + 1)
    mix = weighted_sum(x, received, 0.5, [0.25, 0.25])    # 0.25 r0 + 0.25 r1 + 0.5 x
    uniform_average(x, received, out=x)                   # the same, into x
"""

from typing import Optional, Protocol, Sequence, Union

import numpy as np
import torch

Rows = Union[torch.Tensor, Sequence[Union[torch.Tensor, np.ndarray]]]


class Combine(Protocol):
    """What a kernel calls with the data it received: ``combine(x, rows, out=None)``.

    Returns ``x`` combined with ``rows`` (see the module docstring): a new tensor, or ``out``
    (which may be ``x`` itself) filled with it.  Combines that compare equal compute the same
    formula, so a fused kernel may apply one of them to the whole fused buffer.
    """

    def __call__(self, x: torch.Tensor, rows: Rows,
                 out: Optional[torch.Tensor] = None) -> torch.Tensor: ...


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype arithmetic on ``dtype`` data is done in: float32 for the 16-bit floats (added up in
    float32 and rounded once), else ``dtype`` itself."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def average_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype averages of ``dtype`` data are computed in."""
    return compute_dtype(dtype) if dtype.is_floating_point else torch.float64


def numpy_dtype(dtype: torch.dtype):
    """numpy's scalar type for torch's ``dtype``, or None (bfloat16)."""
    try:
        return torch.empty(0, dtype=dtype).numpy().dtype.type
    except TypeError:
        return None


# dtype -> (numpy's type of the data, numpy's type rows are summed in) where numpy has both
_SUMMED_AS = {d: (numpy_dtype(d), numpy_dtype(compute_dtype(d)))
              for d in (torch.float16, torch.float32, torch.float64, torch.int8, torch.int16,
                        torch.int32, torch.int64, torch.uint8)}


def _numpy_kind(x: torch.Tensor):
    dtype = x.dtype
    if not x.is_cpu or x.requires_grad:
        return None
    return np.float32 if dtype is torch.float32 else np.float64 if dtype is torch.float64 else None


def _row(rows: Rows, k: int, x: torch.Tensor) -> torch.Tensor:
    """Row ``k`` as a tensor shaped like ``x`` (raw bytes viewed in x's dtype)."""
    row = rows[k]
    if type(rows) is torch.Tensor:      # stacked rows are shaped like x already
        return row
    if isinstance(row, np.ndarray):
        row = torch.from_numpy(row.reshape(-1).view(np.uint8)).view(x.dtype).to(x.device)
    return row.reshape(x.shape)


def _numpy_rows(x: torch.Tensor, kind, rows: Rows, chosen):
    """The chosen rows as flat numpy arrays of ``kind``; None if one is not on the CPU in x's dtype."""
    if type(rows) is torch.Tensor:
        if rows.dtype is not x.dtype or not rows.is_cpu or rows.requires_grad:
            return None
        flat = rows.numpy().reshape(rows.shape[0], x.numel())
        return [flat[k] for k in chosen]
    picked = []
    for k in chosen:
        row = rows[k]
        if isinstance(row, np.ndarray):
            picked.append((row if row.ndim == 1 else row.reshape(-1)).view(kind))
        elif row.dtype is x.dtype and row.is_cpu and not row.requires_grad:
            picked.append(row.numpy().reshape(-1))
        else:
            return None
    return picked


def _into(result: torch.Tensor, out: Optional[torch.Tensor]) -> torch.Tensor:
    return result if out is None else out.copy_(result)


def uniform_average(x: torch.Tensor, rows: Rows, chosen: Optional[Sequence[int]] = None,
                    divisor_scale: int = 1, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``(x + sum of rows[k] for k in chosen) / ((len(chosen) + 1) * divisor_scale)``; every row
    when ``chosen`` is None.  Into ``out`` when given; with ``out`` being ``x`` (in x's own
    precision) no temporary is needed: the same additions in the same order, so the same bits."""
    if chosen is None:
        chosen = range(len(rows))
    divisor = (len(chosen) + 1) * divisor_scale
    if divisor == 1:
        return x.clone() if out is None else x if out is x else out.copy_(x)
    kind = _numpy_kind(x)
    if kind is not None and (out is None or (_numpy_kind(out) is kind and out.is_contiguous())):
        picked = _numpy_rows(x, kind, rows, chosen)
        if picked is not None:
            mine = x.numpy().reshape(-1)
            if out is None:
                acc = np.add(mine, picked[0]) if picked else mine.copy()
            else:
                acc = out.numpy().reshape(-1)
                if picked:
                    np.add(mine, picked[0], out=acc)
                elif out is not x:
                    np.copyto(acc, mine)
            for row in picked[1:]:
                np.add(acc, row, out=acc)
            np.divide(acc, divisor, out=acc)
            return torch.from_numpy(acc.reshape(x.shape)) if out is None else out
    work = average_dtype(x.dtype)
    if out is x and work == x.dtype:
        for k in chosen:
            x.add_(_row(rows, k, x))
        return x.div_(divisor)
    if len(chosen):       # the first addition also allocates the result: one pass fewer
        acc = torch.add(x.to(work), _row(rows, chosen[0], x).to(work))
        for k in chosen[1:]:
            acc += _row(rows, k, x)
    else:
        acc = x.to(work, copy=True)
    acc.div_(divisor)
    return _into(acc.to(x.dtype), out)


def weighted_sum(x: torch.Tensor, rows: Rows, self_weight: float, weights: Sequence[float],
                 divisor: int = 1, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``(sum_k weights[k] * rows[k] + self_weight * x) / divisor``, the terms added in that
    order; rows of weight 0 are left out (not read).  Into ``out`` when given (may be ``x``)."""
    work = average_dtype(x.dtype)
    acc = x.new_zeros(x.shape, dtype=work)
    for k, w in enumerate(weights):
        if w != 0:
            acc.add_(_row(rows, k, x).to(work), alpha=w)
    acc.add_(x.to(work), alpha=self_weight)
    if divisor != 1:
        acc /= divisor
    return _into(acc.to(x.dtype), out)


def window_combine(x: torch.Tensor, slots: Rows, self_weight: Optional[float] = None,
                   weights: Optional[Sequence[float]] = None,
                   out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``win_update``'s combine of ``x`` with its neighbor buffers ``slots``: the uniform average
    of x and every slot when ``self_weight`` is None, else the weighted sum."""
    if self_weight is None:
        return uniform_average(x, slots, out=out)
    return weighted_sum(x, slots, self_weight, weights, out=out)


def associated_p(p_self: float, p_slots: Sequence[float], self_weight: Optional[float] = None,
                 weights: Optional[Sequence[float]] = None) -> float:
    """The push-sum weight after ``win_update``: :func:`window_combine` applied to the scalar p
    (float64) with the same weights, so that p follows the tensor exactly."""
    if self_weight is None:
        total = p_self
        for q in p_slots:
            total += q
        return total / (len(p_slots) + 1)
    total = 0.0
    for q, w in zip(p_slots, weights):
        if w != 0:
            total += w * q
    return total + self_weight * p_self


def summed_rows(stacked, like: torch.Tensor, out: Optional[torch.Tensor] = None,
                divisor: int = 1) -> torch.Tensor:
    """Every row of ``stacked`` (one per rank: ``like``'s data as raw bytes, a 2-D numpy array, or
    a stacked tensor) added in row order in the compute dtype, divided by ``divisor`` when it is
    over 1, rounded once: into ``out``, or a new tensor shaped like ``like`` when it is None.  The
    rows are added one after the other, so every rank gets the same bits."""
    types = _SUMMED_AS.get(like.dtype)
    if types is not None and isinstance(stacked, np.ndarray):
        dtype, work = types
        total = np.add.reduce(stacked.view(dtype), axis=0, dtype=work)
        if divisor > 1:
            np.divide(total, divisor, out=total)
        if out is None:
            return torch.from_numpy(total.astype(dtype, copy=False).reshape(like.shape))
        np.copyto(out.numpy().reshape(-1), total, casting="unsafe")
        return out
    if isinstance(stacked, np.ndarray):      # a dtype numpy lacks (bfloat16)
        stacked = torch.from_numpy(stacked.view(np.uint8)).view(like.dtype)
    stacked = stacked.reshape(stacked.shape[0], -1)
    total = stacked[0].to(compute_dtype(like.dtype), copy=True)
    for row in stacked[1:]:
        total += row
    if divisor > 1:
        total.div_(divisor)
    return _into(total.to(like.dtype).reshape(like.shape), out)
