"""``'pure_nccl'``: K-FAC's packed collectives through an NCCL interface.

:class:`PureNcclCommunicator` has the collectives of ``'mpi'`` with the same
results; it moves its buffers only through
:class:`~chainerkfac.communicators.nccl_interface.NcclInterface` (NCCL
through CuPy on GPUs, or its MPI emulation on CPUs), so everything here runs
and is tested without a GPU.
"""
import numpy

from chainerkfac.communicators import nccl_mapping
from chainerkfac.communicators.base import comm_dtype_of
from chainerkfac.communicators.base import PackedCommunicator
from chainerkfac.communicators.base import PendingReduceScatter
from chainerkfac.communicators.packing import fp16_exponents
from chainerkfac.communicators.packing import max_abs_vector

#: implementations of the NCCL interface ``nccl_backend`` may name
BACKENDS = ('nccl', 'mpi_emulation')


class PureNcclCommunicator(PackedCommunicator):
    """ChainerMN communicator whose K-FAC collectives go through NCCL.

    The V collectives map onto NCCL calls as ``mapping`` says (see
    :mod:`~chainerkfac.communicators.nccl_mapping`: ``'grouped'`` reduces /
    broadcasts per owner segment inside one group, ``'padded'`` native
    reduce-scatter / all-gather of segments padded to the largest, or
    ``'auto'``: padded when every segment has the same size, grouped
    otherwise, i.e. whichever moves fewer bytes). fp16 uses the power-of-two
    scales of ``'mpi'`` (agreed by one NCCL max all-reduce) and NCCL's fp16
    sums.

    Streams: a collective's arrays are packed by one launch on the caller's
    stream (``backend.current_stream()``), communicated and unpacked by one
    launch on the same stream; nothing waits on the host (fp16 excepted:
    the scale exponents are read back once per collective).
    :meth:`start_reduce_scatter_v` communicates on a side stream that waits
    for the packing (an event), and ``wait()`` makes the caller's stream
    wait for the communication (an event) before unpacking; the next
    collective on the caller's stream also waits for it, so that calls on
    the one NCCL communicator never run concurrently. No device-wide
    synchronisation anywhere.

    Byte counters: what this rank sends and receives under NCCL's ring
    algorithms (pipelined chains for reduce and broadcast), padding
    included: see
    :class:`~chainerkfac.communicators.nccl_mapping.SegmentLayout`. With the
    grouped mapping they equal ``'mpi'``'s.

    Args:
        mpi_comm: an ``mpi4py.MPI.Comm`` (bootstrap, ChainerMN's methods).
        nccl_backend: ``'nccl'``
            (:class:`~chainerkfac.communicators.nccl_backend.NcclBackend`),
            ``'mpi_emulation'`` (:class:`~.nccl_emulation.MpiNcclEmulation`),
            or an object implementing the interface.
        mapping (str): ``'auto'``, ``'grouped'`` or ``'padded'``.
    """

    def __init__(self, mpi_comm, nccl_backend='nccl', mapping='auto'):
        super(PureNcclCommunicator, self).__init__(mpi_comm)
        self.mapping = nccl_mapping.check_mapping(mapping)
        if nccl_backend == 'nccl':
            from chainerkfac.communicators.nccl_backend import NcclBackend
            nccl_backend = NcclBackend(self.mpi_comm, self.intra_rank)
        elif nccl_backend == 'mpi_emulation':
            from chainerkfac.communicators.nccl_emulation import (
                MpiNcclEmulation)
            nccl_backend = MpiNcclEmulation(self.mpi_comm)
        elif isinstance(nccl_backend, str):
            raise ValueError('chainerkfac: nccl_backend must be one of {} or '
                             'an NCCL interface, got {!r}'.format(
                                 BACKENDS, nccl_backend))
        if (nccl_backend.rank, nccl_backend.size) != (self.rank, self.size):
            raise ValueError(
                'chainerkfac: the NCCL interface is rank {} of {}, MPI says '
                'rank {} of {}'.format(nccl_backend.rank, nccl_backend.size,
                                       self.rank, self.size))
        self.backend = nccl_backend
        self._side = None
        self._side_done = None

    # --- buffers and streams ----------------------------------------------
    def _allocate(self, size, dtype, kind):
        if kind == 'zeros':
            return self.backend.zeros(size, dtype)
        return self.backend.empty(size, dtype)

    def _zeros(self, n, dtype):
        """A view of ``n`` kept zeros (padding to pack)."""
        return self._buffer('zeros', n, dtype, 'zeros')

    def _caller_stream(self):
        """The caller's stream, made to wait for the last side-stream
        collective (one NCCL communicator: its calls must not overlap)."""
        stream = self.backend.current_stream()
        if self._side_done is not None:
            stream.wait_event(self._side_done)
            self._side_done = None
        return stream

    def _side_stream(self):
        if self._side is None:
            self._side = self.backend.new_stream()
        return self._side

    def _to_backend(self, arrays):
        return [a if self.backend.on_device(a) else self.backend.asarray(a)
                for a in arrays]

    def _scales_vector(self, values):
        """float32 vector on the backend from host float64 ``values``."""
        return self.backend.asarray(numpy.asarray(values, numpy.float32))

    def _global_exponents(self, arrays, stream):
        """fp16 exponents of ``arrays`` agreed by all ranks: per-array
        maxima on the device, one NCCL max all-reduce, one read-back."""
        maxima = self._buffer('maxima', len(arrays), numpy.float64)
        self.backend.launch(stream, lambda: _copy(
            max_abs_vector(arrays, self.backend.xp), maxima))
        self.backend.all_reduce(maxima, maxima, 'max', stream)
        self._count_allreduce(len(arrays), maxima.itemsize)
        return self._exponents(self.backend.to_host(maxima, stream))

    def _pack(self, stream, items, arrays, buffer, scales):
        plan = self._plan(items)
        scales = None if scales is None else self._scales_vector(scales)
        self.backend.launch(stream, lambda: plan.pack(arrays, buffer, scales))

    def _unpack(self, stream, items, buffer, outs, divisors):
        plan = self._plan(items)
        if divisors is not None and isinstance(divisors, numpy.ndarray):
            divisors = self._scales_vector(divisors)
        self.backend.launch(stream,
                            lambda: plan.unpack(buffer, outs, divisors))

    def _results(self, outs, like, stream):
        """``outs`` (on the backend) where the caller's ``like`` arrays
        live: host copies for host arrays on a device backend."""
        return [out if self.backend.on_device(ref)
                or not self.backend.on_device(out)
                else self.backend.to_host(out, stream)
                for out, ref in zip(outs, like)]

    def _empty_like(self, like):
        xp = self.backend.xp
        return [xp.empty(a.shape, a.dtype) for a in like]

    # --- collectives ------------------------------------------------------
    def allreduce_mean(self, arrays, comm_dtype='float32'):
        """Means over ranks of a list of arrays: one packed buffer, one
        NCCL all-reduce in place.

        Returns:
            list: new arrays (dtype and shape of the inputs).
        """
        if not arrays:
            return []
        dtype = comm_dtype_of(comm_dtype)
        stream = self._caller_stream()
        source = self._to_backend(arrays)
        items = [(a.shape, False) for a in arrays]
        n = self._plan(items).size
        buf = self._buffer('allreduce', n, dtype)
        scales = None
        if dtype == numpy.float16:
            scales = 2.0 ** self._global_exponents(source, stream)
        self._pack(stream, items, source, buf, scales)
        self.backend.all_reduce(buf, buf, 'sum', stream)
        self._count_allreduce(n, buf.itemsize)
        divisors = self.size * (numpy.ones(len(items)) if scales is None
                                else scales)
        outs = self._empty_like(arrays)
        self._unpack(stream, items, buf, outs, divisors)
        return self._results(outs, arrays, stream)

    def start_reduce_scatter_v(self, arrays_per_rank, comm_dtype='float32',
                               blocking=False, purpose='rs'):
        """:meth:`reduce_scatter_v` whose communication runs on a side
        stream (``blocking=False``), overlapping what the caller queues
        next; ``.wait()`` on the returned handle gives the arrays (their
        unpacking queued on the caller's stream after the communication)."""
        dtype = comm_dtype_of(comm_dtype)
        layout = self._reduce_scatter_layout(arrays_per_rank)
        if layout.total == 0:
            return PendingReduceScatter(None, lambda: [])
        r = self.rank
        caller = self._caller_stream()
        segments = nccl_mapping.SegmentLayout(layout.counts, self.mapping)
        flat = self._to_backend(layout.flat)
        scales = None
        if dtype == numpy.float16:
            scales = 2.0 ** self._global_exponents(flat, caller)
        send = self._buffer(purpose + '_send', segments.total, dtype)
        recv_slot = self._buffer(purpose + '_recv',
                                 segments.width if segments.width is not None
                                 else layout.counts[r], dtype)
        items, arrays, pack_scales = [], [], []
        position = 0
        for q, plan in enumerate(layout.plans):
            for item in plan.items:
                items.append(item)
                arrays.append(flat[position])
                if scales is not None:
                    pack_scales.append(scales[position])
                position += 1
            gap = segments.gap(q)
            if gap:
                items.append(((gap,), False))
                arrays.append(self._zeros(gap, dtype))
                pack_scales.append(1.0)
        self._pack(caller, items, arrays, send,
                   None if scales is None else pack_scales)

        stream = caller
        if not blocking:
            stream = self._side_stream()
            stream.wait_event(caller.record())
        if segments.mapping == 'padded':
            self.backend.reduce_scatter(send, recv_slot, 'sum', stream)
            self._count(segments.reduce_scatter_traffic(r), send.itemsize)
        else:
            with self.backend.group():
                for q in range(self.size):
                    if layout.counts[q]:
                        self.backend.reduce(
                            segments.segment(send, q),
                            recv_slot if q == r else None, q, 'sum', stream)
            self._count(segments.reduce_scatter_traffic(r), send.itemsize)
        done = None
        if not blocking:
            done = stream.record()
            self._side_done = done
        recv = recv_slot[:layout.counts[r]]
        divisors = layout.own_divisors(self.size, scales)
        own_items = layout.own_plan.items

        def finish():
            target = self.backend.current_stream()
            if done is not None:
                target.wait_event(done)
            outs = self._empty_like(layout.own_arrays)
            self._unpack(target, own_items, recv, outs, divisors)
            return self._results(outs, layout.own_arrays, target)
        return PendingReduceScatter(None, finish)

    def all_gather_v(self, arrays_per_rank, comm_dtype='float32'):
        """Delivers every rank's arrays to all ranks; the arguments and
        results of ``'mpi'``'s ``all_gather_v`` (fp16: the owner's scale
        exponents travel in its segment's head)."""
        dtype = comm_dtype_of(comm_dtype)
        plans, heads, counts = self._all_gather_plans(arrays_per_rank, dtype)
        if sum(counts) == 0:
            return [[] for _ in plans]
        r = self.rank
        stream = self._caller_stream()
        segments = nccl_mapping.SegmentLayout(counts, self.mapping)
        buf = self._buffer('ag', segments.total, dtype)
        own = self._to_backend(arrays_per_rank[r])
        items, arrays, scales = [], list(own), None
        items = list(plans[r].items)
        if heads[r]:
            ks = fp16_exponents(self.backend.to_host(
                self.backend.launch(stream, lambda: max_abs_vector(
                    own, self.backend.xp)), stream))
            items = [((heads[r],), False)] + items
            arrays = [self.backend.asarray(ks.astype(numpy.float32))] + arrays
            scales = [1.0] + list(2.0 ** ks)
        gap = segments.gap(r)
        if gap:
            items.append(((gap,), False))
            arrays.append(self._zeros(gap, dtype))
            if scales is not None:
                scales.append(1.0)
        self._pack(stream, items, arrays, segments.slot(buf, r), scales)
        if segments.mapping == 'padded':
            self.backend.all_gather(segments.slot(buf, r), buf, stream)
        else:
            with self.backend.group():
                for q in range(self.size):
                    if counts[q]:
                        self.backend.bcast(segments.segment(buf, q), q,
                                           stream)
        self._count(segments.all_gather_traffic(r), buf.itemsize)
        return self._unpack_gathered(stream, segments, plans, heads, buf,
                                     arrays_per_rank)

    def _unpack_gathered(self, stream, segments, plans, heads, buf,
                         arrays_per_rank):
        """Every segment of ``buf`` unpacked by one launch: heads and
        padding go to kept scratch, fp16 divisors are computed from the
        heads on the device."""
        xp = self.backend.xp
        items, outs, like = [], [], []
        sink_sizes = [h + segments.gap(q) for q, h in enumerate(heads)]
        sink = self._buffer('ag_sink', sum(sink_sizes), numpy.float32)
        head_positions, divided = [], []
        sink_at = 0
        for q, plan in enumerate(plans):
            if heads[q]:
                items.append(((heads[q],), False))
                outs.append(sink[sink_at:sink_at + heads[q]])
                sink_at += heads[q]
                start = segments.offsets[q]
                head_positions.extend(range(start, start + heads[q]))
                divided.extend(range(len(items), len(items) + len(plan)))
            mine = self._empty_like(arrays_per_rank[q])
            items.extend(plan.items)
            outs.extend(mine)
            like.append(mine)
            gap = segments.gap(q)
            if gap:
                items.append(((gap,), False))
                outs.append(sink[sink_at:sink_at + gap])
                sink_at += gap
        divisors = None
        if head_positions:
            def compute():
                exps = buf[xp.asarray(numpy.array(head_positions))]
                d = xp.ones(len(items), numpy.float32)
                d[xp.asarray(numpy.array(divided))] = xp.ldexp(
                    xp.ones(len(divided), numpy.float32),
                    exps.astype(numpy.int32))
                return d
            divisors = self.backend.launch(stream, compute)
        self._unpack(stream, items, buf, outs, divisors)
        return [self._results(mine, arrays_per_rank[q], stream)
                for q, mine in enumerate(like)]


def _copy(source, target):
    target[...] = source
