"""Planned communication volume of one DistributedKFAC step.

Computed from the step's own wire layout (:mod:`chainerkfac.wire`), owners
and packing (``benchmarks/comm_volume.py`` checks it against the
communicator's counters), under the ring algorithms' volumes of
:mod:`chainerkfac.communicators.mpi_communicator`, and under the NCCL
mappings of :mod:`chainerkfac.communicators.nccl_mapping`.
"""
import chainer.links as L
import numpy

from chainerkfac import assignment as assignment_module
from chainerkfac import fisher_blocks
from chainerkfac import wire
from chainerkfac.communicators import mpi_communicator as mc
from chainerkfac.communicators import nccl_mapping


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
    owners = assignment_module.block_owners(blocks, size, assignment)
    by_rank = [[b for b, r in zip(blocks, owners) if r == rank]
               for rank in range(size)]
    layout = wire.StepLayout(by_rank, lambda b: b.statistic_names,
                             tail_size=2 if stale else 1)
    itemsize = numpy.dtype(mc.comm_dtype_of(comm_dtype)).itemsize
    fp16 = itemsize == 2

    def parameters(entries):
        return sum(e.size for e in entries
                   if e.kind in (wire.GRADIENT, wire.STEP))
    stage2 = [parameters(layout.stage2(r)) +
              sum(e.size for e in layout.stage2(r)
                  if e.kind == wire.STATISTIC) for r in range(size)]
    stage4 = [parameters(layout.stage4(r)) for r in range(size)]
    stage2_sent = [wire.values(layout.stage2(r)) for r in range(size)]
    # fp16: one exponent per array in stage 4, in the segment's head
    stage4_sent = [wire.values(layout.stage4(r)) +
                   (len(layout.stage4(r)) if fp16 else 0)
                   for r in range(size)]
    stage2_arrays = sum(len(layout.stage2(r)) for r in range(size))
    covered = set(id(p) for b in blocks for p in b.params)
    extra = sum(p.size for p in model.params() if id(p) not in covered)
    extra += sum(2 * lk.avg_mean.size for lk in model.links()
                 if isinstance(lk, L.BatchNormalization))
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


def planned_nccl_traffic(model, size, comm_dtype='float32', mapping='auto',
                         bn_fisher='full', assignment='balanced'):
    """Bytes each rank sends in one DistributedKFAC step through
    ``'pure_nccl'`` with ``mapping``, from the plan of
    :func:`planned_step_traffic` (a step that refreshes every statistic).

    Returns:
        dict of lists, one entry per rank: ``'ours'`` (everything) and
        ``'pipeline'`` (stages 2 and 4); for ``'grouped'`` they equal the
        plan's (the ring volumes of ``'mpi'``).
    """
    plan = planned_step_traffic(model, size, comm_dtype, bn_fisher,
                                assignment)
    itemsize = numpy.dtype(mc.comm_dtype_of(comm_dtype)).itemsize
    stage2 = nccl_mapping.SegmentLayout(plan['stage2_sent'], mapping)
    stage4 = nccl_mapping.SegmentLayout(plan['stage4_sent'], mapping)
    out = {'ours': [], 'pipeline': []}
    for r in range(size):
        pipeline = (stage2.reduce_scatter_traffic(r)[0]
                    + stage4.all_gather_traffic(r)[0]) * itemsize
        rest = plan['ours'][r] - plan['pipeline'][r]
        out['pipeline'].append(pipeline)
        out['ours'].append(pipeline + rest)
    return out
