"""What the K-FAC communicators share, whatever moves their bytes.

:class:`PackedCommunicator` keeps the packing plans, the reusable buffers and
the byte counters, agrees on the fp16 power-of-two scales, lays out the
V collectives (which arrays of which rank go where) and computes the
divisors of the results. Its subclasses only move buffers:
:class:`~chainerkfac.communicators.mpi_communicator.MpiCommunicator` through
mpi4py,
:class:`~chainerkfac.communicators.nccl_communicator.PureNcclCommunicator`
through an NCCL interface.
"""
import numpy
from chainermn.communicators import mpi_communicator_base

from chainerkfac.communicators.packing import fp16_exponents
from chainerkfac.communicators.packing import PackingPlan

#: packing plans a communicator keeps at least (each a few bytes per array);
#: it keeps ``max(MAX_PLANS, PLANS_PER_RANK * size)``: a step builds one plan
#: per rank segment, two collectives' worth with the after-forward overlap
MAX_PLANS = 64
PLANS_PER_RANK = 4

_COMM_DTYPES = {'float32': numpy.float32, 'float16': numpy.float16}


class CommunicatorUnavailable(RuntimeError):
    """A communicator cannot be created here (a missing library or device);
    the message is one line naming what is missing."""


def comm_dtype_of(name):
    """``'float32'``/``'float16'`` (or the NumPy dtypes) to a NumPy dtype."""
    dtype = _COMM_DTYPES.get(name, None) if isinstance(name, str) else name
    if dtype not in (numpy.float32, numpy.float16):
        raise ValueError("comm_dtype must be 'float32' or 'float16', got "
                         "{!r}".format(name))
    return numpy.dtype(dtype).type


def ring_reduce_scatter(counts, rank):
    """Values rank ``rank`` (sends, receives) in a ring reduce-scatter whose
    segment ``r`` holds ``counts[r]`` values: every segment but its own
    leaves it once, every segment but its predecessor's arrives once."""
    total, p = sum(counts), len(counts)
    return total - counts[rank], total - counts[(rank - 1) % p]


def ring_all_gather(counts, rank):
    """Values rank ``rank`` (sends, receives) in a ring all-gather."""
    total, p = sum(counts), len(counts)
    return total - counts[(rank + 1) % p], total - counts[rank]


def ring_allreduce(n, size):
    """Values each rank sends (= receives) in a ring all-reduce of ``n``:
    a reduce-scatter then an all-gather of ``n / size`` chunks."""
    return 2 * (size - 1) * n // size


class PendingReduceScatter(object):
    """Handle of a non-blocking ``start_reduce_scatter_v``: ``wait()`` gives
    this rank's arrays (after ``request.Wait()`` when there is a request)."""

    def __init__(self, request, finish):
        self._request, self._finish = request, finish

    def wait(self):
        """Waits for the collective and returns this rank's arrays."""
        if self._request is not None:
            self._request.Wait()
        return self._finish()


class ReduceScatterLayout(object):
    """Who gets what in a ReduceScatterV.

    Attributes:
        plans: one :class:`PackingPlan` per rank (its segment).
        counts (list of int): values in each rank's segment.
        total (int): their sum.
        flat (list): every rank's arrays, in rank order.
        flat_items (list): ``(shape, symmetric)`` of :attr:`flat`.
        own_plan, own_arrays: this rank's segment.
        first (int): position of this rank's first array in :attr:`flat`.
    """

    def __init__(self, plans, arrays_per_rank, rank):
        self.plans = plans
        self.counts = [p.size for p in plans]
        self.total = sum(self.counts)
        self.flat = [a for seg in arrays_per_rank for a, _ in seg]
        self.flat_items = [(a.shape, sym) for seg in arrays_per_rank
                           for a, sym in seg]
        self.own_plan = plans[rank]
        self.own_arrays = [a for a, _ in arrays_per_rank[rank]]
        self.first = sum(len(plans[q]) for q in range(rank))

    def own_divisors(self, size, scales):
        """float64 divisors of this rank's arrays: the number of ranks times
        the fp16 scale (``scales`` None: fp32)."""
        n = len(self.own_plan)
        if scales is None:
            return size * numpy.ones(n)
        return size * scales[self.first:self.first + n]


class PackedCommunicator(mpi_communicator_base.MpiCommunicatorBase):
    """ChainerMN communicator base with K-FAC's packed collectives.

    Subclasses implement ``start_reduce_scatter_v``, ``all_gather_v`` and
    ``allreduce_mean``, and may override :meth:`_allocate` (where buffers
    live). The byte counters (:attr:`bytes_sent`, :attr:`bytes_received`,
    cumulative, see :meth:`reset_traffic`) count what this rank moves under
    the algorithm each subclass documents.
    """

    def __init__(self, mpi_comm):
        super(PackedCommunicator, self).__init__(mpi_comm)
        self._buffers = {}
        self._plans = {}
        self.reset_traffic()

    # --- bookkeeping ------------------------------------------------------
    def reset_traffic(self):
        """Zeroes :attr:`bytes_sent` and :attr:`bytes_received`."""
        self.bytes_sent = 0
        self.bytes_received = 0

    def _count(self, sent_received, itemsize):
        self.bytes_sent += sent_received[0] * itemsize
        self.bytes_received += sent_received[1] * itemsize

    def _count_allreduce(self, n, itemsize):
        moved = ring_allreduce(n, self.size) * itemsize
        self.bytes_sent += moved
        self.bytes_received += moved

    def _allocate(self, size, dtype, kind):
        """A new 1-D buffer of ``size`` values for :meth:`_buffer`."""
        return numpy.empty(size, dtype=dtype)

    def _buffer(self, purpose, size, dtype, kind='host'):
        """A kept buffer of at least ``size`` values (its first ``size``),
        grown when a step needs more; one per purpose, dtype and kind."""
        key = (purpose, numpy.dtype(dtype).str, kind)
        buf = self._buffers.get(key)
        if buf is None or buf.size < size:
            buf = self._allocate(max(size, 1), dtype, kind)
            self._buffers[key] = buf
        return buf[:size]

    def _plan(self, items):
        """The cached :class:`PackingPlan` of ``items`` (the most recently
        used ``max(MAX_PLANS, PLANS_PER_RANK * size)`` are kept: under
        stale statistics the list of arrays changes from step to step)."""
        key = tuple(items)
        plan = self._plans.pop(key, None)
        if plan is None:
            plan = PackingPlan(items)
            while len(self._plans) >= max(MAX_PLANS,
                                          PLANS_PER_RANK * self.size):
                self._plans.pop(next(iter(self._plans)))
        self._plans[key] = plan
        return plan

    def _plans_of(self, arrays_per_rank):
        if len(arrays_per_rank) != self.size:
            raise ValueError('expected one list of arrays per rank ({}), got '
                             '{}'.format(self.size, len(arrays_per_rank)))
        return [self._plan([(a.shape, sym) for a, sym in seg])
                for seg in arrays_per_rank]

    def _reduce_scatter_layout(self, arrays_per_rank):
        return ReduceScatterLayout(self._plans_of(arrays_per_rank),
                                   arrays_per_rank, self.rank)

    def _all_gather_plans(self, arrays_per_rank, dtype):
        """Plans of each rank's arrays, the fp16 head of each segment (one
        exponent per array) and each segment's count (head included)."""
        if len(arrays_per_rank) != self.size:
            raise ValueError('expected one list of arrays per rank ({}), got '
                             '{}'.format(self.size, len(arrays_per_rank)))
        plans = [self._plan([(a.shape, False) for a in seg])
                 for seg in arrays_per_rank]
        heads = [len(p) if dtype == numpy.float16 else 0 for p in plans]
        counts = [h + p.size for h, p in zip(heads, plans)]
        return plans, heads, counts

    def _exponents(self, global_max):
        """fp16 exponents from the maxima agreed by all ranks: the sum of
        ``size`` terms stays below the fp16 target."""
        return fp16_exponents(global_max, n_terms=self.size)

    # --- collectives ------------------------------------------------------
    def multi_node_mean_grad(self, model, zero_fill=False):
        """Averages the gradients of ``model`` over ranks (one all-reduce)."""
        params = [p for _, p in sorted(model.namedparams())
                  if p.array is not None and (p.grad is not None or zero_fill)]
        for p in params:
            if p.grad is None:
                p.grad = p.xp.zeros_like(p.array)
        means = self.allreduce_mean([p.grad for p in params])
        for p, mean in zip(params, means):
            p.grad[...] = mean

    def reduce_scatter_v(self, arrays_per_rank, comm_dtype='float32'):
        """Sums arrays over ranks and gives each rank the mean of its own.

        Args:
            arrays_per_rank: ``arrays_per_rank[r]`` is the list of
                ``(array, symmetric)`` pairs owned by rank ``r`` (the same
                shapes on every rank). Symmetric matrices travel as upper
                triangles.
            comm_dtype: ``'float32'`` or ``'float16'`` (scaled by per-array
                powers of two so that the sum over ranks stays below
                ``2**14``: relative rounding ~``2**-11`` per value and
                addition; values below ``max * 2**-24`` flush to zero).

        Returns:
            list: this rank's arrays, averaged over ranks (new arrays, in
            the inputs' dtypes).
        """
        return self.start_reduce_scatter_v(
            arrays_per_rank, comm_dtype, blocking=True).wait()

    def start_reduce_scatter_v(self, arrays_per_rank, comm_dtype='float32',
                               blocking=False, purpose='rs'):
        raise NotImplementedError

    def all_gather_v(self, arrays_per_rank, comm_dtype='float32'):
        raise NotImplementedError

    def allreduce_mean(self, arrays, comm_dtype='float32'):
        raise NotImplementedError
