"""hierarchical_neighbor_allreduce: neighbor averaging of machine means (spec §3.8)."""

from bluefog.engine import kernels
from bluefog.ops import combine as mix
from bluefog.ops.common import (FLOAT_DTYPES, Submission, check_float_weight, check_tensor,
                                live_context, renamed_keywords, require, signature,
                                blocking)
from bluefog.ops.neighbor import destination_weights, source_weights
from bluefog.context import neighbors
from bluefog.topology import GetRecvWeights

_RENAMED = renamed_keywords(neighbor_machine_weights="src_machine_weights",
                            send_neighbor_machines="dst_machine_weights")


def _machine_plan(ctx, self_weight, src_machine_weights, dst_machine_weights):
    """(machine sends, machine recvs, combine) in machine ids."""
    require(ctx.local_size > 1, "If local size is 1, you should use neighbor allreduce directly.")
    ctx.require_homogeneous()
    machines, me = ctx.machine_size(), ctx.machine_rank()
    given = [a is not None for a in (self_weight, src_machine_weights, dst_machine_weights)]
    if any(given) and not all(given):
        raise ValueError("Arguments self_weight, src_machine_weights, dst_machine_weights have to be "
                         "presented at the same time.")
    if ctx.machine_topology is None:
        raise RuntimeError("Machine topology must be set before the use of hierarchical neighbor "
                           "allreduce; call bf.set_machine_topology(...) first.")
    in_machines = neighbors(ctx.machine_topology, me, incoming=True)
    out_machines = neighbors(ctx.machine_topology, me, incoming=False)
    if not any(given):
        sends = [(m, None) for m in out_machines]
        recvs = in_machines
        if ctx.is_machine_weighted:
            own, weights = GetRecvWeights(ctx.machine_topology, me)
            combine = mix.weighted(float(own), [float(weights[m]) for m in recvs], ctx.local_size)
        else:
            combine = mix.uniform(divisor_scale=ctx.local_size)
    else:
        check_float_weight(self_weight, "self_weight")
        src = source_weights(src_machine_weights, machines, me, "src_machine_weights")
        if not set(src) <= set(in_machines):
            raise ValueError("The key of src_machine_weights should only contain the machine ranks "
                             f"that belong to in-neighbor machines {in_machines}.")
        sends = destination_weights(dst_machine_weights, machines, me, "dst_machine_weights")
        if not {m for m, _ in sends} <= set(out_machines):
            raise ValueError("The key of dst_machine_weights should only contain the machine ranks "
                             f"that belong to out-neighbor machines {out_machines}.")
        recvs = sorted(src)
        if mix.is_uniform(self_weight, list(src.values())):
            combine = mix.uniform(divisor_scale=ctx.local_size)
        else:
            combine = mix.weighted(self_weight, [src[m] for m in recvs], ctx.local_size)
    if not sends:
        raise ValueError("hierarchical_neighbor_allreduce: this machine sends to no machine "
                         "(send_machine_neighbors should not be empty); give dst_machine_weights or a "
                         "machine topology with out-neighbors.")
    return sends, recvs, combine


@_RENAMED
def hierarchical_neighbor_allreduce_nonblocking(tensor, *, self_weight=None, src_machine_weights=None,
                                                dst_machine_weights=None, enable_topo_check=False,
                                                name=None):
    """Nonblocking :func:`hierarchical_neighbor_allreduce`; returns a handle."""
    tensor = check_tensor(tensor, FLOAT_DTYPES, "hierarchical_neighbor_allreduce")
    ctx = live_context()
    sends, recvs, combine = _machine_plan(ctx, self_weight, src_machine_weights, dst_machine_weights)
    leader = ctx.local_size
    leader_sends = [(m * leader, w) for m, w in sends]
    leader_recvs = [m * leader for m in recvs]
    job = Submission("neighbor.allreduce", name)
    comm = job.ctx.engine.data_comm
    sig = signature("neighbor_allreduce", tensor, "hierarchical", False)
    tensor = job.place("hierarchical_neighbor_allreduce", tensor)
    members = ctx.local_members
    return job.send(sig, lambda launch: kernels.hierarchical_neighbor_allreduce(
        comm, launch.tag, tensor, members, leader_sends, leader_recvs, combine),
        activity="NEIGHBOR_ALLREDUCE")


@_RENAMED
def hierarchical_neighbor_allreduce(tensor, *, self_weight=None, src_machine_weights=None,
                                    dst_machine_weights=None, enable_topo_check=False, name=None):
    """Average of this machine's mean with the neighbor machines' means, on every rank.

    Example::

        bf.set_machine_topology(bf.ExponentialGraph(bf.machine_size()))
        y = bf.hierarchical_neighbor_allreduce(x)
    """
    return blocking(
        hierarchical_neighbor_allreduce_nonblocking,
        tensor, self_weight=self_weight, src_machine_weights=src_machine_weights,
        dst_machine_weights=dst_machine_weights, enable_topo_check=enable_topo_check, name=name)
