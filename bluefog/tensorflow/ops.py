"""TensorFlow collective and neighbor ops with gradients (spec §10, §3.3–§3.7).

Each op is the torch op of ``bluefog.ops`` run through :mod:`bluefog.tensorflow.bridge`, wrapped in
``tf.custom_gradient`` for floating-point tensors.  The gradients are the adjoints of the linear maps
the ops compute, so a loss summed over all ranks differentiates correctly:

- ``allreduce``: the same allreduce of the incoming gradient (sum, or average);
- ``broadcast``: the gradients summed over all ranks on the root, zero elsewhere;
- ``allgather``: the gradients summed over all ranks, then this rank's rows;
- ``neighbor_allreduce``: a neighbor_allreduce over the reversed edges, each receiver's weight applied
  by it before sending back and each sender's destination weight applied on arrival;
- ``neighbor_allgather``: every receiver sends its gradient back to its sources, each of which adds
  up the rows that came from it.

Example::

    import bluefog.tensorflow as bf
    bf.init()
    mean = bf.allreduce(tf.constant([float(bf.rank())]))            # eager
    step = tf.function(lambda x: bf.neighbor_allreduce(x))           # or inside a graph
"""

from typing import Dict, List

import numpy as np
import tensorflow as tf
import torch

from bluefog import basics
from bluefog.errors import ArgumentAssertionError
from bluefog.ops import collective as _c
from bluefog.ops import neighbor as _n
from bluefog.ops.common import synchronize
from bluefog.tensorflow.bridge import (ALLREDUCE_TYPES, FLOAT_TYPES, MOVE_TYPES, as_input,
                                       graph_name, run_on_host)
from bluefog.topology import GetRecvWeights


def run_all(start, tensors: List[torch.Tensor], names, **kwargs) -> List[torch.Tensor]:
    """Submit ``start(t, name=n, **kwargs)`` for every tensor, then wait for all of them (so the
    engine can fuse them).  Raises the first error after every submitted op has finished."""
    handles, error = [], None
    for tensor, name in zip(tensors, names):
        try:
            handles.append(start(tensor, name=name, **kwargs))
        except BaseException as failure:   # still wait for what was already submitted
            error = failure
            break
    outputs = []
    for handle in handles:
        try:
            outputs.append(synchronize(handle))
        except BaseException as failure:
            error = error or failure
    if error is not None:
        raise error
    return outputs


def _suffix(name, suffix):
    return None if name is None else f"{name}.{suffix}"


def _differentiable(forward, backward, x, shape, op_name, extra=()):
    """``forward(t) -> torch`` on ``x``; ``backward(dy, *extra) -> torch`` as its gradient."""
    def run(host, inputs, out_shape, dtype):
        return run_on_host(lambda ts: [host(*ts)], inputs, [out_shape], [dtype], op_name)[0]

    if not x.dtype.is_floating:
        return run(forward, [x], shape, x.dtype)

    @tf.custom_gradient
    def op(t):
        def grad(dy):
            return run(backward, [tf.convert_to_tensor(dy), *extra], t.shape, t.dtype)
        return run(forward, [t], shape, t.dtype), grad

    return op(x)


def allreduce(tensor, average=True, name=None, device=""):
    """Sum (or average, by default) of ``tensor`` over all ranks.

    ``device`` is accepted for compatibility and ignored (tensors travel through host memory).
    Gradient: the same allreduce of the incoming gradient.

    Example::

        mean = bf.allreduce(tf.constant([float(bf.rank())]))    # (size-1)/2 on every rank

    Raises:
        ValueError: ``tf.IndexedSlices``, an unsupported dtype, or ``average`` on integers.
    """
    x = as_input(tensor, "allreduce", ALLREDUCE_TYPES)
    if average and not x.dtype.is_floating:
        raise ArgumentAssertionError("If average is set in allreduce, only float or double tensor "
                                     "is allowed.")
    name = graph_name(name, x, "BluefogAllreduce")
    return _differentiable(
        lambda t: _c.allreduce(t, average=average, name=name),
        lambda dy: _c.allreduce(dy, average=average, name=_suffix(name, "grad")),
        x, x.shape, "BluefogAllreduce")


def broadcast(tensor, root_rank, name=None):
    """``root_rank``'s ``tensor`` on every rank.  Gradient: summed over ranks on the root, else 0."""
    x = as_input(tensor, "broadcast", MOVE_TYPES)
    name = graph_name(name, x, "BluefogBroadcast")

    def backward(dy):
        total = _c.allreduce(dy, average=False, name=_suffix(name, "grad"))
        return total if basics.rank() == root_rank else torch.zeros_like(total)

    return _differentiable(lambda t: _c.broadcast(t, root_rank, name=name), backward,
                           x, x.shape, "BluefogBroadcast")


def _rows(x):
    return tf.shape(x, out_type=tf.int64)[:1]


def _own_rows(name, rows):
    """(offset, count) of this rank's rows in an allgather whose ranks hold ``rows`` rows each."""
    counts = _c.allgather(rows, name=_suffix(name, "rows")).tolist()
    me = basics.rank()
    return sum(counts[:me]), counts[me]


def allgather(tensor, name=None):
    """Every rank's ``tensor`` concatenated along dim 0 in rank order (first dims may differ).

    Gradient: the incoming gradients summed over all ranks, then this rank's rows.
    """
    x = as_input(tensor, "allgather", MOVE_TYPES)
    if x.shape.rank == 0:
        raise ValueError("allgather: tried to allgather a rank-zero tensor; give it at least one "
                         "dimension (e.g. tf.reshape(x, [1])).")
    name = graph_name(name, x, "BluefogAllgather")

    def backward(dy, rows):
        offset, count = _own_rows(_suffix(name, "grad"), rows)
        return _c.allreduce(dy, average=False, name=_suffix(name, "grad"))[offset:offset + count]

    shape = tf.TensorShape([None]).concatenate(x.shape[1:]) if x.shape.rank is not None else None
    return _differentiable(lambda t: _c.allgather(t, name=name), backward, x, shape,
                           "BluefogAllgather", extra=[_rows(x)])


def _reversed_weights(self_weight, src_weights, dst_weights) -> Dict:
    """The keyword arguments of the neighbor_allreduce that is the adjoint of the given one."""
    if self_weight is None:
        srcs = basics.in_neighbor_ranks()
        if basics.is_topo_weighted():
            own, weights = GetRecvWeights(basics.load_topology(), basics.rank())
            recv = {r: float(weights[r]) for r in srcs}
        else:
            own = 1.0 / (len(srcs) + 1)
            recv = {r: own for r in srcs}
    else:
        own = self_weight
        if dst_weights is None:   # static pattern: missing in-neighbors have weight 0
            recv = {r: float(src_weights.get(r, 0.0)) for r in basics.in_neighbor_ranks()}
        else:
            recv = {int(r): float(w) for r, w in src_weights.items()}
    if dst_weights is None:
        send = {r: 1.0 for r in basics.out_neighbor_ranks()}
    elif isinstance(dst_weights, dict):
        send = {int(r): float(w) for r, w in dst_weights.items()}
    else:
        send = {int(r): 1.0 for r in dst_weights}
    return dict(self_weight=float(own), src_weights=send, dst_weights=recv)


def neighbor_allreduce(tensor, *, self_weight=None, src_weights=None, dst_weights=None,
                       enable_topo_check=True, name=None):
    """``self_weight * x + sum_j src_weights[j] * x_j`` over the ranks this rank receives from.

    Same arguments and modes as the torch ``neighbor_allreduce`` (static, weighted, dynamic with
    ``dst_weights``).  Gradient: the neighbor_allreduce over the reversed edges (see module doc).

    Example::

        x = bf.neighbor_allreduce(x)                                      # static average
        x = bf.neighbor_allreduce(x, self_weight=0.5, src_weights={(r - 1) % n: 0.5},
                                  dst_weights=[(r + 1) % n])               # one-peer ring
    """
    x = as_input(tensor, "neighbor_allreduce", FLOAT_TYPES)
    name = graph_name(name, x, "BluefogNeighborAllreduce")
    used = {}

    def forward(t):
        out = _n.neighbor_allreduce(t, self_weight=self_weight, src_weights=src_weights,
                                    dst_weights=dst_weights, enable_topo_check=enable_topo_check,
                                    name=name)
        used["reversed"] = _reversed_weights(self_weight, src_weights, dst_weights)
        return out

    def backward(dy):
        return _n.neighbor_allreduce(dy, enable_topo_check=False, name=_suffix(name, "grad"),
                                     **used["reversed"])

    return _differentiable(forward, backward, x, x.shape, "BluefogNeighborAllreduce")


def neighbor_allgather(tensor, *, src_ranks=None, dst_ranks=None, enable_topo_check=True,
                       name=None):
    """The in-neighbors' tensors (or ``src_ranks``', in that order) concatenated along dim 0.

    Same arguments as the torch ``neighbor_allgather``.  Gradient: each receiver sends its gradient
    back to its sources, and each source adds up the rows that were its own.
    """
    x = as_input(tensor, "neighbor_allgather", MOVE_TYPES)
    if x.shape.rank == 0:
        raise ValueError("neighbor_allgather: tried to allgather a rank-zero tensor; give it at "
                         "least one dimension.")
    name = graph_name(name, x, "BluefogNeighborAllgather")
    used = {}

    def forward(t):
        out = _n.neighbor_allgather(t, src_ranks=src_ranks, dst_ranks=dst_ranks,
                                    enable_topo_check=enable_topo_check, name=name)
        if src_ranks is None:
            used["srcs"], used["dsts"] = basics.in_neighbor_ranks(), basics.out_neighbor_ranks()
        else:
            used["srcs"] = [int(r) for r in np.asarray(src_ranks).reshape(-1)]
            used["dsts"] = [int(r) for r in np.asarray(dst_ranks).reshape(-1)]
        return out

    def backward(dy, rows):
        srcs, dsts = used["srcs"], used["dsts"]
        gname = _suffix(name, "grad")
        exchange = dict(src_ranks=srcs, dst_ranks=dsts, enable_topo_check=False)
        counts = _n.neighbor_allgather(rows, name=_suffix(gname, "rows"), **exchange).tolist()
        # Tell each source where its rows sit in this rank's gradient: row 0 holds the total,
        # row 1 + r the offset of rank r's rows (-1 if r is not a source).
        table = torch.full((1, basics.size() + 1), -1, dtype=torch.int64)
        table[0, 0] = dy.shape[0]
        offset = 0
        for src, count in zip(srcs, counts):
            table[0, 1 + src] = offset
            offset += count
        back = dict(src_ranks=dsts, dst_ranks=srcs, enable_topo_check=False)
        tables = _n.neighbor_allgather(table, name=_suffix(gname, "table"), **back)
        grads = _n.neighbor_allgather(dy.contiguous(), name=gname, **back)
        count, me = int(rows[0]), basics.rank()
        total = torch.zeros((count,) + tuple(dy.shape[1:]), dtype=dy.dtype)
        start = 0
        for k in range(len(dsts)):
            at = start + int(tables[k, 1 + me])
            total += grads[at:at + count]
            start += int(tables[k, 0])
        return total

    shape = tf.TensorShape([None]).concatenate(x.shape[1:]) if x.shape.rank is not None else None
    return _differentiable(forward, backward, x, shape, "BluefogNeighborAllgather",
                           extra=[_rows(x)])
