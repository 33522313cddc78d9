"""InferSourceFromDestinationRanks / InferDestinationFromSourceRanks (spec §2.6; collective)."""

from typing import List, Sequence

import numpy as np
import torch

from bluefog.errors import ArgumentAssertionError
from bluefog.ops.collective import allgather
from bluefog.ops.common import live_context


def _checked_ranks(ranks: Sequence[int], argument: str) -> List[int]:
    ctx = live_context()
    values = list(ranks)
    for r in values:
        if not isinstance(r, (int, np.integer)) or isinstance(r, bool):
            raise ArgumentAssertionError(f"Argument {argument} must hold ints, got {r!r}.")
        if not 0 <= r < ctx.size or r == ctx.rank:
            raise ArgumentAssertionError(f"Argument {argument} may only hold ranks in [0, {ctx.size}) "
                                         f"other than self ({ctx.rank}), got {r}.")
    if len(set(int(r) for r in values)) != len(values):
        raise ArgumentAssertionError(f"Argument {argument} should only contain unique ranks.")
    return sorted(int(r) for r in values)


def _everyones_lists(mine: List[int]) -> List[List[int]]:
    degrees = allgather(torch.tensor([len(mine)], dtype=torch.int32)).tolist()
    flat = allgather(torch.tensor(mine, dtype=torch.int32)).tolist()
    lists, start = [], 0
    for degree in degrees:
        lists.append(flat[start:start + degree])
        start += degree
    return lists


def _infer(ranks, argument: str, construct_adjacency_matrix: bool, transpose: bool):
    lists = _everyones_lists(_checked_ranks(ranks, argument))
    me = live_context().rank
    found = [k for k, lst in enumerate(lists) if me in lst]
    if not construct_adjacency_matrix:
        return found
    size = len(lists)
    matrix = np.eye(size)
    for k, lst in enumerate(lists):
        matrix[k, lst] = 1.0
    if transpose:
        matrix = matrix.T.copy()
    return found, matrix / matrix.sum(axis=0)


def InferSourceFromDestinationRanks(dst_ranks, construct_adjacency_matrix=False):
    """The ranks that send to this rank, given every rank's destinations (collective).

    With ``construct_adjacency_matrix=True`` also returns the column-normalised matrix W
    (``W[i, j] > 0`` means i sends to j).

    Example::

        srcs = bf.InferSourceFromDestinationRanks(dst_ranks=[(bf.rank() + 1) % bf.size()])
    """
    return _infer(dst_ranks, "dst_ranks", construct_adjacency_matrix, transpose=False)


def InferDestinationFromSourceRanks(src_ranks, construct_adjacency_matrix=False):
    """The ranks this rank sends to, given every rank's sources (collective); see the twin above."""
    return _infer(src_ranks, "src_ranks", construct_adjacency_matrix, transpose=True)
