"""How the V collectives of K-FAC map onto NCCL, which has no V variants.

Two mappings of a ReduceScatterV / AllGatherV whose segment ``q`` (owned by
rank ``q``) holds ``c_q`` values:

``'grouped'``
    segments back to back; one ``reduce`` (resp. ``bcast``) per non-empty
    segment, rooted at its owner, all inside one ``groupStart``/``groupEnd``.
    NCCL runs reduce and broadcast as pipelined rings (a chain through every
    rank), so rank ``r`` sends ``total - c_r`` values in the reduce-scatter
    and ``total - c_{r+1}`` in the all-gather: the V collectives' ring
    volumes, with no padding.
``'padded'``
    every segment padded to ``w = max c_q`` and one native
    ``reduceScatter`` (resp. ``allGather``) of ``w`` values per rank: every
    rank sends ``(p - 1) w`` values, the padding included.

Since ``(p - 1) w >= total - c_r`` on average (equality iff all counts are
equal), the grouped mapping never moves more bytes; ``'auto'`` takes the
padded mapping (one native collective) exactly when the counts are equal,
where both move the same bytes, and the grouped one otherwise.
:func:`chainerkfac.optimizers.traffic.planned_nccl_traffic` gives a
DistributedKFAC step's bytes under each (``benchmarks/comm_volume.py`` prints
them for ResNet-50).
"""
from chainerkfac.communicators.base import ring_all_gather
from chainerkfac.communicators.base import ring_reduce_scatter

MAPPINGS = ('auto', 'grouped', 'padded')


def check_mapping(mapping):
    if mapping not in MAPPINGS:
        raise ValueError('chainerkfac: mapping must be one of {}, got {!r}'
                         .format(MAPPINGS, mapping))
    return mapping


def choose_mapping(counts, mapping='auto'):
    """``'grouped'`` or ``'padded'`` for segments of ``counts`` values:
    ``mapping`` itself unless ``'auto'`` (see the module docstring)."""
    check_mapping(mapping)
    if mapping != 'auto':
        return mapping
    return 'padded' if len(set(counts)) <= 1 else 'grouped'


class SegmentLayout(object):
    """Where each rank's segment lies in a buffer of a mapped V collective.

    Args:
        counts (list of int): values in each rank's segment.
        mapping (str): ``'grouped'`` or ``'padded'`` (``'auto'`` resolved by
            :func:`choose_mapping`).

    Attributes:
        mapping (str): the resolved mapping.
        counts (list of int).
        offsets (list of int): where segment ``q`` starts.
        width (int): ``max(counts)`` (padded) or None (grouped).
        total (int): the buffer's length (padding included).
    """

    def __init__(self, counts, mapping='auto'):
        self.counts = [int(c) for c in counts]
        if any(c < 0 for c in self.counts):
            raise ValueError('negative count in {}'.format(self.counts))
        self.mapping = choose_mapping(self.counts, mapping)
        p = len(self.counts)
        if self.mapping == 'padded':
            self.width = max(self.counts) if self.counts else 0
            self.offsets = [q * self.width for q in range(p)]
            self.total = p * self.width
        else:
            self.width = None
            self.offsets = [0]
            for c in self.counts[:-1]:
                self.offsets.append(self.offsets[-1] + c)
            self.total = sum(self.counts)

    def __len__(self):
        return len(self.counts)

    def gap(self, q):
        """Padding values after segment ``q`` (0 when grouped)."""
        if self.mapping == 'padded':
            return self.width - self.counts[q]
        return 0

    def segment(self, buffer, q):
        """The values of segment ``q`` in ``buffer`` (a view)."""
        return buffer[self.offsets[q]:self.offsets[q] + self.counts[q]]

    def slot(self, buffer, q):
        """Segment ``q`` with its padding: what a padded collective moves
        for rank ``q``."""
        if self.mapping == 'padded':
            return buffer[self.offsets[q]:self.offsets[q] + self.width]
        return self.segment(buffer, q)

    def moved_counts(self):
        """The counts the NCCL calls move per rank (padding included)."""
        if self.mapping == 'padded':
            return [self.width] * len(self.counts)
        return list(self.counts)

    def reduce_scatter_traffic(self, rank):
        """Values (sent, received) by ``rank`` in the mapped reduce-scatter."""
        return ring_reduce_scatter(self.moved_counts(), rank)

    def all_gather_traffic(self, rank):
        """Values (sent, received) by ``rank`` in the mapped all-gather."""
        return ring_all_gather(self.moved_counts(), rank)
