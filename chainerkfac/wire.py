"""The wire layout of one DistributedKFAC step: what stages 2 and 4 carry.

Stage 2 (ReduceScatterV: every rank's values summed, the mean delivered to
the segment's rank) and stage 4 (AllGatherV: every segment delivered to
every rank) move, per rank, a list of entries. :class:`StepLayout` builds
those lists once per step from the blocks each rank owns and the statistics
the schedule makes due; the producers (which array goes where), the
consumers (what each received array is), the byte planner
(:func:`chainerkfac.optimizers.traffic.planned_step_traffic`) and, through
it, the NCCL planner all iterate them. A new per-block quantity of a
collective is one more kind of entry here.

Segment of rank ``r`` in stage 2, for each block ``r`` owns, in block order:

- ``GRADIENT``: each parameter's gradient;
- for each due statistic not sent after the forward pass: ``STATISTIC`` (a
  symmetric matrix travels as one triangle) and its ``MOMENT`` (one value:
  the per-example moment of the stale rule's noise estimate);

then one ``TAIL`` (the flag of due statistics some rank did not capture and,
with the stale rule, the rank's loss: every rank's tail goes into every
segment, so each rank receives the mean flag and the mean loss).

After the forward pass (``communicate_after_forward``), segment of ``r``: the
``STATISTIC`` ``A`` and its ``MOMENT`` of each block ``r`` owns whose ``A`` is
due.

Segment of rank ``r`` in stage 4: ``STEP`` (each parameter's
``theta_new - theta_old``) of ``r``'s blocks, then, when ``r`` owns a block,
one ``DECISIONS`` entry: a value per statistic of its blocks (the schedule's
decisions, see :meth:`chainerkfac.optimizers.KFAC._apply_schedule`).
"""
import collections

import numpy

from chainerkfac.communicators.packing import packed_size

GRADIENT = 'gradient'
STATISTIC = 'statistic'
MOMENT = 'moment'
TAIL = 'tail'
STEP = 'step'
DECISIONS = 'decisions'


class Entry(collections.namedtuple(
        'Entry', 'kind block name shape symmetric')):
    """One array of a segment: its ``kind``, the ``block`` it belongs to
    (None for a tail or the decisions), the parameter or statistic ``name``,
    its ``shape`` and whether it travels as a triangle (``symmetric``)."""

    __slots__ = ()

    @property
    def size(self):
        """Values on the wire (``d (d + 1) / 2`` for a symmetric ``d x d``)."""
        return packed_size(self.shape, self.symmetric)


def _is_symmetric(shape):
    return len(shape) == 2 and shape[0] == shape[1]


class StepLayout(object):
    """The entries of one step's collectives.

    Args:
        blocks_by_rank (list of lists): the blocks each rank owns, in block
            order.
        due (callable): ``due(block)``: the names of the block's statistics
            refreshed at this step (the same on every rank).
        after_forward (bool): the due ``A`` statistics travel after the
            forward pass instead of in stage 2.
        tail_size (int): values of the tail (1: the flag; 2: and the loss).
    """

    def __init__(self, blocks_by_rank, due, after_forward=False, tail_size=1):
        self.blocks_by_rank = blocks_by_rank
        self._due = due
        self.after_forward = after_forward
        self.tail_size = tail_size

    @property
    def size(self):
        return len(self.blocks_by_rank)

    def _statistics(self, block, names):
        shapes = block.statistic_shapes()
        out = []
        for name in block.statistic_names:
            if name in names:
                shape = tuple(shapes[name])
                out += [Entry(STATISTIC, block, name, shape,
                              _is_symmetric(shape)),
                        Entry(MOMENT, block, name, (1,), False)]
        return out

    def _parameters(self, kind, block):
        return [Entry(kind, block, n, tuple(getattr(block.link, n).shape),
                      False) for n in block.param_names]

    def stage2(self, rank):
        """Entries of ``rank``'s segment of the ReduceScatterV."""
        out = []
        for block in self.blocks_by_rank[rank]:
            out += self._parameters(GRADIENT, block)
            due = set(self._due(block))
            if self.after_forward:
                due.discard('A')
            out += self._statistics(block, due)
        out.append(Entry(TAIL, None, None, (self.tail_size,), False))
        return out

    def forward(self, rank):
        """Entries of ``rank``'s segment of the collective started after the
        forward pass (empty unless ``after_forward``)."""
        if not self.after_forward:
            return []
        out = []
        for block in self.blocks_by_rank[rank]:
            if 'A' in self._due(block):
                out += self._statistics(block, ('A',))
        return out

    def schedule_keys(self, rank):
        """The schedule keys of ``rank``'s blocks, in the order of its
        ``DECISIONS`` entry."""
        return [b.schedule_keys[n] for b in self.blocks_by_rank[rank]
                for n in b.statistic_names]

    def stage4(self, rank):
        """Entries of ``rank``'s segment of the AllGatherV."""
        out = []
        for block in self.blocks_by_rank[rank]:
            out += self._parameters(STEP, block)
        keys = self.schedule_keys(rank)
        if keys:
            out.append(Entry(DECISIONS, None, None, (len(keys),), False))
        return out


def values(entries):
    """Values on the wire of a list of entries."""
    return sum(e.size for e in entries)


def step_dtype(parameter_dtype):
    """The dtype of a parameter step in stage 4: at least float32, so that
    the owner and every other rank add the same rounded step."""
    return numpy.promote_types(parameter_dtype, numpy.float32)
