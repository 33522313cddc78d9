"""neighbor_allgather, neighbor_allreduce and pair_gossip (spec §3.6, §3.7, §3.9)."""

from typing import Dict, List, Optional, Tuple

import numpy as np

from bluefog.engine import kernels
from bluefog.engine.lone import LoneRound
from bluefog.engine.request import Request
from bluefog.ops import combine as mix
from bluefog.ops.common import (FLOAT_DTYPES, MOVE_DTYPES, Submission, blocking, blocking_lone,
                                check_float_weight, check_tensor, live_context, renamed_keywords,
                                signature, submit)

_RENAMED = renamed_keywords(neighbor_weights="src_weights", send_neighbors="dst_weights")


def rank_list(ranks, argument: str, size: int, me: int) -> List[int]:
    """Ranks given as a list, tuple or numpy array, as Python ints; checked for range and repeats."""
    values = [int(r) for r in np.asarray(ranks).reshape(-1)]
    for r in values:
        if not 0 <= r < size or r == me:
            raise ValueError(f"Argument {argument} may only hold ranks in [0, {size}) other than "
                             f"self ({me}), got {r}.")
    if len(set(values)) != len(values):
        raise ValueError(f"Argument {argument} should only contain the unique ranks.")
    return values


def destination_weights(dst_weights, size: int, me: int, argument: str = "dst_weights"
                        ) -> List[Tuple[int, Optional[float]]]:
    """``dst_weights`` (list of ranks or {rank: weight}) as ascending (rank, weight or None)."""
    if isinstance(dst_weights, dict):
        ranks = rank_list(list(dst_weights), argument, size, me)
        weights = [float(dst_weights[k]) for k in dst_weights]
    elif isinstance(dst_weights, (list, tuple, np.ndarray)):
        ranks = rank_list(dst_weights, argument, size, me)
        weights = [1.0] * len(ranks)
    else:
        raise ValueError(f"Argument {argument} must be a list of ranks or a dict {{rank: weight}}, "
                         f"got {type(dst_weights).__name__}.")
    scale = any(abs(w - 1.0) > 1e-8 + 1e-5 for w in weights)     # (numpy.allclose's tolerance)
    return sorted((r, w if scale else None) for r, w in zip(ranks, weights))


def source_weights(src_weights, size: int, me: int, argument: str = "src_weights"
                   ) -> Dict[int, float]:
    if not isinstance(src_weights, dict):
        raise ValueError(f"Argument {argument} must be a dict {{rank: weight}}, "
                         f"got {type(src_weights).__name__}.")
    ranks = rank_list(list(src_weights), argument, size, me)
    return {r: float(w) for r, w in zip(ranks, src_weights.values())}


def _plan(ctx, self_weight, src_weights, dst_weights):
    """Resolve the argument modes of §3.7.1: (sends, recvs, combine, dynamic)."""
    if (self_weight is None) != (src_weights is None):
        if dst_weights is not None:
            raise ValueError("Arguments self_weight and src_weights should be presented if enabling "
                             "dynamic topology.")
        raise ValueError("Arguments self_weight and src_weights have to be presented at the same time")
    if self_weight is None:
        if dst_weights is not None:
            raise ValueError("Arguments self_weight and src_weights should be presented if enabling "
                             "dynamic topology.")
        return _static_plan(ctx)
    check_float_weight(self_weight, "self_weight")
    src = source_weights(src_weights, ctx.size, ctx.rank)
    if dst_weights is None:
        recvs = ctx.in_neighbors()
        if not set(src) <= set(recvs):
            raise ValueError("The key of weights should only contain the ranks that belong to "
                             "in-neighbors and self rank.")
        sends = [(r, None) for r in ctx.out_neighbors()]
        dynamic = False
    else:
        recvs = sorted(src)
        sends = destination_weights(dst_weights, ctx.size, ctx.rank)
        dynamic = True
    if mix.is_uniform(self_weight, list(src.values())):
        combine = mix.uniform([k for k, r in enumerate(recvs) if r in src])
    else:
        combine = mix.weighted(self_weight, [src.get(r, 0.0) for r in recvs])
    return sends, recvs, combine, dynamic


def _static_plan(ctx):
    """The plan of a call without weights: the topology's own (remembered for the last context and
    topology: a new ``set_topology`` gives a new topology object)."""
    global _static
    if _static is not None and _static[:3] == (ctx, ctx.topology, ctx.is_weighted):
        return _static[3]
    recvs = tuple(ctx.in_neighbors())       # tuples: shared by every call, never changed
    sends = tuple((r, None) for r in ctx.out_neighbors())
    if ctx.is_weighted:
        own, weights = ctx.recv_weights()
        plan = sends, recvs, mix.weighted(float(own), [float(weights[r]) for r in recvs]), False
    else:
        plan = sends, recvs, mix.uniform(), False
    _static = (ctx, ctx.topology, ctx.is_weighted, plan)
    return plan


_static = None


@_RENAMED
def neighbor_allreduce_nonblocking(tensor, *, self_weight=None, src_weights=None, dst_weights=None,
                                   enable_topo_check=True, name=None):
    """Weighted average with neighbors; returns a handle.  See :func:`neighbor_allreduce`."""
    return submit(_neighbor_allreduce_request(tensor, self_weight, src_weights, dst_weights,
                                              enable_topo_check, name))


def neighbor_average_into_at_sync(tensor, *, self_weight, src_weights, dst_weights,
                                  enable_topo_check, name):
    """Internal, for the optimizers: :func:`neighbor_allreduce_nonblocking` whose average (CPU
    tensors) is computed by ``synchronize`` in the caller's thread, into ``tensor`` itself, without
    a new output tensor.  Not part of the public API."""
    return submit(_neighbor_allreduce_request(tensor, self_weight, src_weights, dst_weights,
                                              enable_topo_check, name, into_at_sync=True))


def _neighbor_allreduce_request(tensor, self_weight, src_weights, dst_weights, enable_topo_check,
                                name, into_at_sync=False) -> Request:
    tensor = check_tensor(tensor, FLOAT_DTYPES, "neighbor_allreduce")
    ctx = live_context()
    sends, recvs, combine, dynamic = _plan(ctx, self_weight, src_weights, dst_weights)
    checked = bool(dynamic and enable_topo_check)
    job = Submission("neighbor.allreduce", name)
    sig = signature("neighbor_allreduce", tensor, "flat", checked)
    topology = dict(sends=frozenset(r for r, _ in sends) if checked else None,
                    recvs=frozenset(recvs) if checked else None, activity="NEIGHBOR_ALLREDUCE")
    tensor = job.place("neighbor_allreduce", tensor)
    defer = into_at_sync and job.route is None
    if job.ctx.engine.ft is not None and job.kernels.by_mpi:
        if self_weight is None:
            return _replanned_request(job, sig, tensor, defer, topology)
        src = source_weights(src_weights, ctx.size, ctx.rank)
        return _renormalized_request(job, sig, tensor, defer, topology, sends, recvs,
                                     float(self_weight), [src.get(r, 0.0) for r in recvs])
    if defer:
        job.handle.convert = lambda slots: _combine_received(combine, tensor, slots)
    fusion = {} if checked or defer else dict(
        fusion_key=("neighbor_allreduce", tensor.dtype, tuple(sends), tuple(recvs)),
        fusion_part=(tensor, combine),
        fuse=lambda group, launch: job.kernels.fused_neighbor_allreduce(
            [r.fusion_part for r in group], sends, recvs, launch))
    return job.request(
        sig, lambda launch: job.kernels.neighbor_allreduce(tensor, sends, recvs, combine, launch,
                                                           defer),
        nbytes=tensor.numel() * tensor.element_size(), carry=lambda: kernels.carry(tensor, sends),
        **topology, **fusion)


def _replanned_request(job, sig, tensor, defer, topology) -> Request:
    """Fault-tolerant mode, static topology: the plan is read when the op starts, so an op that runs
    again after a failure uses the graph every survivor switched to (context._after_failure)."""
    ctx, route = job.ctx, job.kernels
    used = []

    def start(launch):
        sends, recvs, combine, _ = _static_plan(ctx)
        used[:] = [combine]
        return route.neighbor_allreduce(tensor, sends, recvs, combine, launch, defer)

    def fuse(group, launch):
        sends, recvs, combine, _ = _static_plan(ctx)
        return route.fused_neighbor_allreduce([(r.fusion_part, combine) for r in group], sends,
                                              recvs, launch)

    if defer:
        job.handle.convert = lambda slots: _combine_received(used[0], tensor, slots)
    fusion = {} if defer else dict(fusion_key=("neighbor_allreduce", tensor.dtype, "static"),
                                    fusion_part=tensor, fuse=fuse)
    return job.request(sig, start, nbytes=tensor.numel() * tensor.element_size(), **topology,
                       **fusion)


def _renormalized_request(job, sig, tensor, defer, topology, sends, recvs, self_weight,
                          weights) -> Request:
    """Fault-tolerant mode, explicit weights: at the start of the op, the weights of dead
    in-neighbors are dropped and the rest (self included) scaled to the sum they had."""
    route = job.kernels
    comm, used = route.comm, []

    def start(launch):
        lost = sum(w for r, w in zip(recvs, weights) if not comm.alive(r))
        total = self_weight + sum(weights)
        if lost and total == lost:          # nothing left but this rank: it keeps its value
            own, scale = total, 0.0
        else:
            scale = total / (total - lost) if lost else 1.0
            own = self_weight * scale
        combine = mix.weighted(own, [w * scale if comm.alive(r) else 0.0
                                     for r, w in zip(recvs, weights)])
        used[:] = [combine]
        return route.neighbor_allreduce(tensor, sends, recvs, combine, launch, defer)

    if defer:
        job.handle.convert = lambda slots: _combine_received(used[0], tensor, slots)
    return job.request(sig, start, nbytes=tensor.numel() * tensor.element_size(), **topology)


def _combine_received(combine, tensor, slots):
    """``synchronize`` step of a deferred op: average what arrived into ``tensor``."""
    return mix.combine_in_place(combine, tensor, slots)


@_RENAMED
def neighbor_allreduce(tensor, *, self_weight=None, src_weights=None, dst_weights=None,
                       enable_topo_check=True, name=None):
    """``self_weight * x + sum_j src_weights[j] * x_j`` over the ranks this rank receives from.

    With no weights it averages uniformly over self and the in-neighbors of the topology (or uses
    its weights when set with ``is_weighted=True``); ``dst_weights`` makes the pattern dynamic.

    Example::

        x = bf.neighbor_allreduce(x)                                   # static average
        x = bf.neighbor_allreduce(x, self_weight=0.5, src_weights={(r - 1) % n: 0.5},
                                  dst_weights=[(r + 1) % n])            # one-peer ring
    """
    static = self_weight is None and src_weights is None and dst_weights is None
    ctx = live_context()
    key = ("neighbor_allreduce", ctx.topology, ctx.is_weighted) if static else None
    return blocking_lone(ctx, key, "neighbor.allreduce", name, tensor, lambda name: (
        _neighbor_allreduce_request(tensor, self_weight, src_weights, dst_weights,
                                    enable_topo_check, name)),
        lambda request, engine: _lone_plan(ctx, engine, request, tensor))


def _lone_plan(ctx, engine, request, tensor) -> LoneRound:
    """The lone round of a static ``neighbor_allreduce``: its kernel's combine of what came."""
    sends, recvs, combine, _ = _static_plan(ctx)
    return LoneRound(engine.mailbox, request, tensor, lambda x, carried: kernels.combined_from_round(
        x, sends, recvs, combine, carried))


def neighbor_allgather_nonblocking(tensor, *, src_ranks=None, dst_ranks=None, enable_topo_check=True,
                                   name=None):
    """Concatenate the in-neighbors' tensors along dim 0; returns a handle."""
    tensor = check_tensor(tensor, MOVE_DTYPES, "neighbor_allgather")
    if tensor.dim() == 0:
        raise ValueError("neighbor_allgather: tried to allgather a rank-zero tensor; give it at least "
                         "one dimension.")
    ctx = live_context()
    if (src_ranks is None) != (dst_ranks is None):
        raise ValueError("Argument dst_ranks and src_ranks have to be presented at the same time")
    if src_ranks is None:
        recvs, sends, checked = ctx.in_neighbors(), ctx.out_neighbors(), False
        if ctx.engine.ft is not None:      # read when it starts (see _replanned_request)
            recvs, sends = _LaunchNeighbors(ctx, True), _LaunchNeighbors(ctx, False)
    else:
        recvs = rank_list(src_ranks, "src_ranks", ctx.size, ctx.rank)
        sends = sorted(rank_list(dst_ranks, "dst_ranks", ctx.size, ctx.rank))
        checked = bool(enable_topo_check)
    job = Submission("neighbor.allgather", name)
    sig = signature("neighbor_allgather", tensor, tensor.dim(), checked, with_dim0=False)
    tensor = job.place("neighbor_allgather", tensor)
    start = lambda launch: job.kernels.neighbor_allgather(tensor, sends, recvs, launch)
    return job.send(sig, start, dim0=tensor.shape[0], sends=frozenset(sends) if checked else None,
                    recvs=frozenset(recvs) if checked else None, activity="NEIGHBOR_ALLGATHER")


class _LaunchNeighbors:
    """The topology's in- or out-neighbors as of when it is iterated (fault-tolerant mode)."""

    def __init__(self, ctx, incoming: bool):
        self.ctx, self.incoming = ctx, incoming

    def __iter__(self):
        ctx = self.ctx
        return iter(ctx.in_neighbors() if self.incoming else ctx.out_neighbors())

    def __len__(self):
        return len(list(iter(self)))


def neighbor_allgather(tensor, *, src_ranks=None, dst_ranks=None, enable_topo_check=True, name=None):
    """Blocking :func:`neighbor_allgather_nonblocking`.

    Example::

        got = bf.neighbor_allgather(torch.tensor([bf.rank()]))   # equals bf.in_neighbor_ranks()
    """
    return blocking(
        neighbor_allgather_nonblocking,
        tensor, src_ranks=src_ranks, dst_ranks=dst_ranks, enable_topo_check=enable_topo_check,
        name=name)


def pair_gossip_nonblocking(tensor, target_rank, self_weight=None, pair_weight=None, name=None):
    """Exchange with ``target_rank`` (which must call it too) and combine; skip-negotiate only."""
    tensor = check_tensor(tensor, FLOAT_DTYPES, "pair_gossip")
    ctx = live_context()
    if not ctx.engine.skip_negotiation:
        raise ValueError("pair gossip operation does not support to run under with negotiate stage; "
                         "call bf.set_skip_negotiate_stage(True) first.")
    if (self_weight is None) != (pair_weight is None):
        raise ValueError("Arguments self_weight and pair_weight have to be presented at the same time")
    target = rank_list([target_rank], "target_rank", ctx.size, ctx.rank)[0]
    combine = (mix.uniform() if self_weight is None
               else mix.weighted(float(self_weight), [float(pair_weight)]))
    job = Submission("pair.gossip", name)
    sig = signature("pair_gossip", tensor)
    tensor = job.place("pair_gossip", tensor)      # (staged if on CUDA: the MPI route)
    return job.send(sig, lambda launch: job.kernels.neighbor_allreduce(
        tensor, [(target, None)], [target], combine, launch), activity="PAIR_GOSSIP")


def pair_gossip(tensor, target_rank, self_weight=None, pair_weight=None, name=None):
    """Blocking :func:`pair_gossip_nonblocking`."""
    return blocking(pair_gossip_nonblocking, tensor, target_rank, self_weight, pair_weight, name)
