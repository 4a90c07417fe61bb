"""Assignment of Fisher blocks to ranks (the owner inverts and updates)."""
import numpy

ASSIGNMENTS = ('balanced', 'count')


def _dims(block):
    """Dimensions of the matrices a block inverts, from its link's shapes."""
    from chainerkfac.fisher_blocks import BatchNormalizationBlock
    if isinstance(block, BatchNormalizationBlock):
        c = block.link.gamma.shape[0]
        return {'full': [2 * c], 'unit': [2] * c, 'diag': [1] * (2 * c)}[
            block.mode]
    w = block.link.W
    if w.array is None:
        raise ValueError('chainerkfac: link {} is not initialised; run one '
                         'forward pass (or give its input size) before the '
                         'first distributed update'.format(block.name))
    d_in = int(numpy.prod(w.shape[1:])) + (1 if block.has_bias else 0)
    return [d_in, w.shape[0]]


def block_cost(block):
    """Estimated owner-side cost (flops) of one step of a block.

    Inversion ``sum d^3`` (Cholesky, triangular solve and product are each
    ~d^3/3..d^3) plus preconditioning ``G^-1 M A^-1``:
    ``2 out in (out + in)``.
    """
    dims = _dims(block)
    cost = float(sum(d ** 3 for d in dims))
    if len(dims) == 2:
        d_in, d_out = dims
        cost += 2.0 * d_in * d_out * (d_in + d_out)
    else:
        cost += 2.0 * sum(d * d for d in dims)
    return cost


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
