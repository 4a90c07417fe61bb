"""MPI communicator with the packed collectives of distributed K-FAC."""
import numpy
from chainer import backend
from chainermn.communicators import mpi_communicator_base
from mpi4py import MPI

from chainerkfac.communicators.packing import fp16_exponents
from chainerkfac.communicators.packing import max_abs
from chainerkfac.communicators.packing import PackingPlan

#: packing plans a communicator keeps (each a few bytes per array)
MAX_PLANS = 64

_COMM_DTYPES = {'float32': numpy.float32, 'float16': numpy.float16}


def comm_dtype_of(name):
    """``'float32'``/``'float16'`` (or the NumPy dtypes) to a NumPy dtype."""
    dtype = _COMM_DTYPES.get(name, None) if isinstance(name, str) else name
    if dtype not in (numpy.float32, numpy.float16):
        raise ValueError("comm_dtype must be 'float32' or 'float16', got "
                         "{!r}".format(name))
    return numpy.dtype(dtype).type


def _fp16_sum(inbuf, inoutbuf, datatype):
    """MPI reduction op: elementwise fp16 sum, each addition done in fp32."""
    a = numpy.frombuffer(inbuf, dtype=numpy.float16)
    b = numpy.frombuffer(inoutbuf, dtype=numpy.float16)
    b[...] = (a.astype(numpy.float32) + b.astype(numpy.float32)).astype(
        numpy.float16)


_FP16_SUM = None


def _mpi_args(buffer):
    """``[buffer, MPI type]``: fp16 travels as 16-bit words."""
    if buffer.dtype == numpy.float16:
        return [buffer, MPI.UINT16_T]
    return [buffer, MPI.FLOAT]


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
    """Handle of a non-blocking :meth:`MpiCommunicator.start_reduce_scatter_v`."""

    def __init__(self, request, finish):
        self._request, self._finish = request, finish

    def wait(self):
        """Waits for the collective and returns this rank's arrays."""
        if self._request is not None:
            self._request.Wait()
        return self._finish()


class MpiCommunicator(mpi_communicator_base.MpiCommunicatorBase):
    """ChainerMN MPI communicator with K-FAC's packed collectives.

    Arrays are NumPy (CPU) or CuPy; a collective's device arrays are packed
    on the device by one kernel launch and staged through host memory by one
    copy each way. Host buffers are kept and reused across steps (grown when
    a step needs more).

    Byte counters (:attr:`bytes_sent`, :attr:`bytes_received`, cumulative;
    see :meth:`reset_traffic`) count what this rank moves under the
    bandwidth-optimal ring algorithms: a reduce-scatter of segments
    ``c_0..c_{p-1}`` sends ``total - c_rank`` values, an all-gather receives
    ``total - c_rank``, an all-reduce of n values moves ``2 (p-1)/p n``.
    """

    def __init__(self, mpi_comm):
        super(MpiCommunicator, self).__init__(mpi_comm)
        self._buffers = {}
        self._plans = {}
        self.reset_traffic()

    # --- bookkeeping ------------------------------------------------------
    def reset_traffic(self):
        """Zeroes :attr:`bytes_sent` and :attr:`bytes_received`."""
        self.bytes_sent = 0
        self.bytes_received = 0

    def _buffer(self, purpose, size, dtype):
        key = (purpose, numpy.dtype(dtype).str)
        buf = self._buffers.get(key)
        if buf is None or buf.size < size:
            buf = numpy.empty(max(size, 1), dtype=dtype)
            self._buffers[key] = buf
        return buf[:size]

    def _plan(self, items):
        """The cached :class:`PackingPlan` of ``items`` (the most recently
        used :data:`MAX_PLANS` are kept: under stale statistics the list of
        arrays changes from step to step)."""
        key = tuple(items)
        plan = self._plans.pop(key, None)
        if plan is None:
            plan = PackingPlan(items)
            while len(self._plans) >= MAX_PLANS:
                self._plans.pop(next(iter(self._plans)))
        self._plans[key] = plan
        return plan

    def _plans_of(self, arrays_per_rank):
        if len(arrays_per_rank) != self.size:
            raise ValueError('expected one list of arrays per rank ({}), got '
                             '{}'.format(self.size, len(arrays_per_rank)))
        return [self._plan([(a.shape, sym) for a, sym in seg])
                for seg in arrays_per_rank]

    def _global_exponents(self, arrays):
        """fp16 scale exponents of ``arrays``, agreed by all ranks (one MAX
        all-reduce of one float per array)."""
        local = max_abs(arrays)
        total = numpy.empty_like(local)
        self.mpi_comm.Allreduce(local, total, op=MPI.MAX)
        self._count_allreduce(local.size, local.itemsize)
        return fp16_exponents(total, n_terms=self.size)

    def _count_allreduce(self, n, itemsize):
        moved = ring_allreduce(n, self.size) * itemsize
        self.bytes_sent += moved
        self.bytes_received += moved

    def _count(self, sent_received, itemsize):
        self.bytes_sent += sent_received[0] * itemsize
        self.bytes_received += sent_received[1] * itemsize

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

    def allreduce_mean(self, arrays, comm_dtype='float32'):
        """Means over ranks of a list of arrays, through one packed buffer.

        Returns:
            list: new arrays (dtype and shape of the inputs).
        """
        if not arrays:
            return []
        dtype = comm_dtype_of(comm_dtype)
        plan = self._plan([(a.shape, False) for a in arrays])
        send = self._buffer('allreduce', plan.size, dtype)
        scales = None
        if dtype == numpy.float16:
            scales = 2.0 ** self._global_exponents(arrays)
        self._pack(plan, arrays, send, scales)
        op = MPI.SUM if dtype == numpy.float32 else self._fp16_op()
        self.mpi_comm.Allreduce(MPI.IN_PLACE, _mpi_args(send), op=op)
        self._count_allreduce(plan.size, send.itemsize)
        divisors = self.size * (numpy.ones(len(plan)) if scales is None
                                else scales)
        return self._unpack(plan, send, divisors, arrays)

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
        """Non-blocking :meth:`reduce_scatter_v` (``MPI_Ireduce_scatter``);
        ``.wait()`` on the returned handle gives the arrays."""
        dtype = comm_dtype_of(comm_dtype)
        plans = self._plans_of(arrays_per_rank)
        counts = [p.size for p in plans]
        total = sum(counts)
        own = plans[self.rank]
        flat = [a for seg in arrays_per_rank for a, _ in seg]
        if total == 0:
            return PendingReduceScatter(None, lambda: [])
        send = self._buffer(purpose + '_send', total, dtype)
        recv = self._buffer(purpose + '_recv', counts[self.rank], dtype)
        scales = None
        if dtype == numpy.float16:
            scales = 2.0 ** self._global_exponents(flat)
        self._pack(self._plan([(a.shape, sym) for seg in arrays_per_rank
                               for a, sym in seg]), flat, send, scales)
        op = MPI.SUM if dtype == numpy.float32 else self._fp16_op()
        args = (_mpi_args(send), _mpi_args(recv), counts, op)
        if blocking:
            self.mpi_comm.Reduce_scatter(*args)
            request = None
        else:
            request = self.mpi_comm.Ireduce_scatter(*args)
        p, r = self.size, self.rank
        self._count(ring_reduce_scatter(counts, r), send.itemsize)
        first = sum(len(plans[q]) for q in range(r))
        own_arrays = [a for a, _ in arrays_per_rank[r]]
        own_scales = (None if scales is None
                      else scales[first:first + len(own)])

        def finish():
            divisors = p * (numpy.ones(len(own)) if own_scales is None
                            else own_scales)
            return self._unpack(own, recv, divisors, own_arrays)
        return PendingReduceScatter(request, finish)

    def all_gather_v(self, arrays_per_rank, comm_dtype='float32'):
        """Delivers every rank's arrays to all ranks (``MPI_Allgatherv``).

        Args:
            arrays_per_rank: ``arrays_per_rank[r]``: arrays owned by rank
                ``r``. This rank's own list holds the values to send; the
                others only give the shapes to expect.
            comm_dtype: ``'float32'`` or ``'float16'``; fp16 arrays are
                scaled by a power of two chosen by their owner so that
                ``max |x|`` is near ``2**14`` (relative rounding ~``2**-11``);
                the exponents travel in the segment's head, exact in fp16.

        Returns:
            list: ``[[arrays of rank 0], [arrays of rank 1], ...]`` (new
            arrays; this rank's own after the same rounding trip).
        """
        dtype = comm_dtype_of(comm_dtype)
        plans = [self._plan([(a.shape, False) for a in seg])
                 for seg in arrays_per_rank]
        head = [len(p) if dtype == numpy.float16 else 0 for p in plans]
        counts = [h + p.size for h, p in zip(head, plans)]
        total = sum(counts)
        if total == 0:
            return [[] for _ in plans]
        r = self.rank
        own = arrays_per_rank[r]
        send = self._buffer('ag_send', counts[r], dtype)
        scales = None
        if dtype == numpy.float16:
            ks = fp16_exponents(max_abs(own))
            send[:head[r]] = ks
            scales = 2.0 ** ks
        self._pack(plans[r], own, send[head[r]:], scales)
        recv = self._buffer('ag_recv', total, dtype)
        displs = [0]
        for c in counts[:-1]:
            displs.append(displs[-1] + c)
        mpi_type = _mpi_args(send)[1]
        self.mpi_comm.Allgatherv([send, mpi_type],
                                 [recv, counts, displs, mpi_type])
        self._count(ring_all_gather(counts, r), send.itemsize)
        out = []
        for q, plan in enumerate(plans):
            seg = recv[displs[q]:displs[q] + counts[q]]
            divisors = None
            if head[q]:
                divisors = 2.0 ** seg[:head[q]].astype(numpy.float64)
            out.append(self._unpack(plan, seg[head[q]:], divisors,
                                    arrays_per_rank[q]))
        return out

    # --- helpers ----------------------------------------------------------
    def _fp16_op(self):
        global _FP16_SUM
        if _FP16_SUM is None:
            _FP16_SUM = MPI.Op.Create(_fp16_sum, commute=True)
        return _FP16_SUM

    @staticmethod
    def _pack(plan, arrays, host_buffer, scales):
        """Packs ``arrays`` (the whole plan) into ``host_buffer``, each where
        it lives: a run of device arrays is packed on the device by one
        launch and copied to the host once; host arrays are packed in place.

        ``scales``: None or a float64 NumPy vector (powers of two).
        """
        for start, stop, xp in _runs(arrays):
            first, last = plan.bounds(start, stop)
            run_scales = None
            if scales is not None:
                run_scales = xp.asarray(scales[start:stop], numpy.float32)
            if xp is numpy:
                plan.pack(arrays[start:stop], host_buffer[first:last],
                          run_scales, start, stop)
            else:  # pragma: no cover - needs a GPU
                staging = xp.empty(last - first, host_buffer.dtype)
                plan.pack(arrays[start:stop], staging, run_scales, start, stop)
                staging.get(out=host_buffer[first:last])

    @staticmethod
    def _unpack(plan, host_buffer, divisors, like):
        """New arrays with the dtypes, shapes and devices of ``like``, from
        ``host_buffer`` divided by ``divisors`` (None or a float64 NumPy
        vector): a run of device arrays is copied to the device once and
        unpacked by one launch."""
        outs = [backend.get_array_module(ref).empty(ref.shape, ref.dtype)
                for ref in like]
        for start, stop, xp in _runs(like):
            first, last = plan.bounds(start, stop)
            run_divisors = None
            if divisors is not None:
                run_divisors = xp.asarray(divisors[start:stop], numpy.float32)
            source = host_buffer[first:last]
            if xp is not numpy:  # pragma: no cover - needs a GPU
                source = xp.asarray(source)
            plan.unpack(source, outs[start:stop], run_divisors, start, stop)
        return outs


def _runs(arrays):
    """``(start, stop, xp)`` of the maximal runs of arrays on one device."""
    runs = []
    for i, array in enumerate(arrays):
        xp = backend.get_array_module(array)
        if runs and runs[-1][2] is xp and (
                xp is numpy or array.device == arrays[runs[-1][0]].device):
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1, xp])
    return [tuple(r) for r in runs]
