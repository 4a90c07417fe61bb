"""Planned communication volume of one DistributedKFAC step.

Computed from the same assignment, statistic shapes and packing as the real
step (``benchmarks/comm_volume.py`` checks it against the communicator's
counters), under the ring algorithms' volumes of
:mod:`chainerkfac.communicators.mpi_communicator`.
"""
import chainer.links as L
import numpy

from chainerkfac import assignment as assignment_module
from chainerkfac import fisher_blocks
from chainerkfac.communicators import mpi_communicator as mc
from chainerkfac.communicators.packing import packed_size


def _size(shape):
    return int(numpy.prod(shape, dtype=numpy.int64))


def planned_step_traffic(model, size, comm_dtype='float32',
                         bn_fisher='full', assignment='balanced', stale=True):
    """Bytes each rank sends in one step, ours and the original scheme's.

    The plan is for a step that refreshes every statistic (the CVPR
    schedule, or the warm-up of the stale one); stale statistics send less.
    ``stale``: the optimizer runs the stale rule (its loss travels with the
    missed-statistics flag).

    Returns:
        dict of lists with one entry per rank: ``'ours'`` (bytes sent in
        all), ``'pipeline'`` (bytes sent by stages 2 and 4 alone),
        ``'original'``; ``'stage2_counts'``/``'stage4_counts'``: values per
        rank in the ReduceScatterV and AllGatherV buffers (parameters only);
        ``'stage2_sent'``/``'stage4_sent'``: values per rank as sent (stage
        2: with the statistics' moments and the missed-statistics flag; stage
        4: with the schedule decisions and the fp16 heads).

    The original code all-reduced one fp32 buffer of every gradient and
    packed factor (stage 2) and one of every parameter of the blocks
    (stage 4). Ours: a reduce-scatter and an all-gather with per-rank
    counts in ``comm_dtype`` (fp16 adds one float64 per array for the
    shared scales of stage 2 and one fp16 exponent per array in stage 4),
    plus an fp32 all-reduce of the parameters without a block and of the
    BatchNormalization running statistics (which the original never
    synchronised).
    """
    blocks, _ = fisher_blocks.create_fisher_blocks(model, bn_fisher)
    costs = [assignment_module.block_cost(b) for b in blocks]
    owners = assignment_module.assign_blocks(costs, size, assignment)
    itemsize = numpy.dtype(mc.comm_dtype_of(comm_dtype)).itemsize
    fp16 = itemsize == 2
    stage2, stage4, n_arrays = [0] * size, [0] * size, [0] * size
    n_stats = [0] * size
    for block, owner in zip(blocks, owners):
        for p in block.params:
            stage2[owner] += p.size
            stage4[owner] += p.size
        for shape in block.statistic_shapes().values():
            sym = len(shape) == 2 and shape[0] == shape[1]
            stage2[owner] += packed_size(shape, sym)
        n_arrays[owner] += len(block.params)
        n_stats[owner] += len(block.statistic_names)
    # every statistic is followed by its per-example moment (one value in
    # an array of its own: the stale rule's sampling-noise estimate)
    stage2_arrays = sum(len(b.params) + 2 * len(b.statistic_names)
                        for b in blocks)
    covered = set(id(p) for b in blocks for p in b.params)
    extra = sum(p.size for p in model.params() if id(p) not in covered)
    extra += sum(2 * lk.avg_mean.size for lk in model.links()
                 if isinstance(lk, L.BatchNormalization))
    # stage 4 also carries the owners' schedule decisions (steps until due,
    # one value per statistic of its blocks, in one more array)
    stage4_sent = [c + k for c, k in zip(stage4, n_stats)]
    # stage 2 also carries the statistics' moments, and, in every rank's
    # segment, the flag of due statistics some rank did not capture and,
    # with the stale rule, the loss (one more array per segment)
    tail = 2 if stale else 1
    stage2_sent = [c + k + tail for c, k in zip(stage2, n_stats)]
    stage2_arrays += size
    if fp16:
        stage4_sent = [c + n + (1 if k else 0) for c, n, k in
                       zip(stage4_sent, n_arrays, n_stats)]
    result = {'ours': [], 'pipeline': [], 'original': [],
              'stage2_counts': stage2, 'stage4_counts': stage4,
              'stage2_sent': stage2_sent, 'stage4_sent': stage4_sent}
    for r in range(size):
        pipeline = (mc.ring_reduce_scatter(stage2_sent, r)[0]
                    + mc.ring_all_gather(stage4_sent, r)[0]) * itemsize
        sent = pipeline + mc.ring_allreduce(extra, size) * 4
        if fp16:
            sent += mc.ring_allreduce(stage2_arrays, size) * 8
        result['pipeline'].append(pipeline)
        result['ours'].append(sent)
        result['original'].append((mc.ring_allreduce(sum(stage2), size)
                                   + mc.ring_allreduce(sum(stage4), size)) * 4)
    return result
