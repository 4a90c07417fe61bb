"""Assignment of Fisher blocks to ranks (the owner inverts and updates)."""
import numpy

ASSIGNMENTS = ('balanced', 'count')


def block_cost(block):
    """Estimated owner-side cost (flops) of one step of a block, from what
    the block declares: inversion ``sum d^3`` over the matrices it inverts
    (:meth:`~chainerkfac.fisher_blocks.FisherBlock.inverted_dims`; Cholesky,
    triangular solve and product are each ~d^3/3..d^3) plus its
    preconditioning (:meth:`~chainerkfac.fisher_blocks.FisherBlock.\
preconditioning_flops`)."""
    return float(sum(d ** 3 for d in block.inverted_dims()) +
                 block.preconditioning_flops())


def block_owners(blocks, size, strategy='balanced'):
    """Owner rank of each block (the one function the optimizer, the
    checkpoints and the benchmarks use): :func:`assign_blocks` of the
    blocks' :func:`block_cost`."""
    return assign_blocks([block_cost(b) for b in blocks], size, strategy)


def assign_blocks(costs, size, strategy='balanced'):
    """Owner rank of each block; deterministic from ``costs`` alone.

    Args:
        costs (list of float): estimated cost of each block, in block order.
        size (int): number of ranks.
        strategy: ``'balanced'``: longest-processing-time-first greedy
            (blocks by decreasing cost, ties by index, each to the least
            loaded rank, ties to the lowest rank); ``'count'``: the original
            code's contiguous chunks of nearly equal block counts.

    Returns:
        list of int: owner of each block. With more ranks than blocks some
        ranks own nothing.
    """
    if strategy not in ASSIGNMENTS:
        raise ValueError('assignment must be one of {}, got {!r}'.format(
            ASSIGNMENTS, strategy))
    n = len(costs)
    owners = [0] * n
    if strategy == 'count':
        for rank, chunk in enumerate(numpy.array_split(numpy.arange(n), size)):
            for i in chunk:
                owners[int(i)] = rank
        return owners
    loads = [0.0] * size
    for i in sorted(range(n), key=lambda i: (-costs[i], i)):
        rank = min(range(size), key=lambda r: (loads[r], r))
        owners[i] = rank
        loads[rank] += costs[i]
    return owners


def load_imbalance(costs, owners, size):
    """``max / mean`` of the per-rank summed cost."""
    loads = numpy.zeros(size)
    for c, r in zip(costs, owners):
        loads[r] += c
    return float(loads.max() / loads.mean())
