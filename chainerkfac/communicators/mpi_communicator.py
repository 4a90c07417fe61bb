"""MPI communicator with the packed collectives of distributed K-FAC."""
import numpy
from chainer import backend
from mpi4py import MPI

from chainerkfac.communicators.base import comm_dtype_of  # NOQA: F401
from chainerkfac.communicators.base import MAX_PLANS  # NOQA: F401
from chainerkfac.communicators.base import PackedCommunicator
from chainerkfac.communicators.base import PendingReduceScatter
from chainerkfac.communicators.base import ring_all_gather
from chainerkfac.communicators.base import ring_allreduce  # NOQA: F401
from chainerkfac.communicators.base import ring_reduce_scatter
from chainerkfac.communicators.packing import fp16_exponents
from chainerkfac.communicators.packing import max_abs

#: where a collective's buffer lives (see :func:`staging_mode`)
STAGING_MODES = ('host', 'pinned', 'device')


def _fp16_sum(inbuf, inoutbuf, datatype):
    """MPI reduction op: elementwise fp16 sum, each addition done in fp32
    and rounded to fp16 (one rounding per addition, as NCCL adds fp16)."""
    a = numpy.frombuffer(inbuf, dtype=numpy.float16)
    b = numpy.frombuffer(inoutbuf, dtype=numpy.float16)
    b[...] = (a.astype(numpy.float32) + b.astype(numpy.float32)).astype(
        numpy.float16)


_FP16_SUM = None


def fp16_sum_op():
    """The MPI op that sums fp16 values carried as 16-bit words."""
    global _FP16_SUM
    if _FP16_SUM is None:
        _FP16_SUM = MPI.Op.Create(_fp16_sum, commute=True)
    return _FP16_SUM


def sum_op(dtype):
    """MPI op summing buffers of ``dtype`` (float32: ``MPI.SUM``)."""
    return fp16_sum_op() if numpy.dtype(dtype) == numpy.float16 else MPI.SUM


def mpi_args(buffer):
    """``[buffer, MPI type]``: fp16 travels as 16-bit words."""
    if buffer.dtype == numpy.float16:
        return [buffer, MPI.UINT16_T]
    if buffer.dtype == numpy.float64:
        return [buffer, MPI.DOUBLE]
    return [buffer, MPI.FLOAT]


def _loaded_mpi_libraries():
    """Paths of the MPI libraries mapped into this process (Linux)."""
    try:
        with open('/proc/self/maps') as f:
            paths = [line.split()[-1] for line in f if 'libmpi' in line]
    except OSError:
        return []
    return sorted(set(p for p in paths if p.startswith('/')))


def mpi_cuda_support():
    """Whether the MPI library says it takes CUDA device buffers.

    Asks ``MPI.Query_cuda_support()`` where mpi4py has it, else the
    ``MPIX_Query_cuda_support()`` extension of the MPI library this process
    loaded (MPICH 4, Open MPI, MVAPICH2); False when nothing answers. The
    PyPI MPICH and Open MPI wheels answer 0 (built without CUDA).
    """
    query = getattr(MPI, 'Query_cuda_support', None)
    if query is not None:
        return bool(query())
    import ctypes
    for path in [None] + _loaded_mpi_libraries():
        try:
            function = getattr(ctypes.CDLL(path), 'MPIX_Query_cuda_support')
        except (OSError, AttributeError):
            continue
        function.restype = ctypes.c_int
        function.argtypes = []
        return bool(function())
    return False


def staging_mode(any_device_array, cuda_aware, fp16_reduction):
    """Where a collective's buffer lives.

    ``'host'``: every array is NumPy, so is the buffer. ``'device'``: some
    array is on a GPU and MPI takes device buffers (``cuda_aware``), so the
    arrays are packed on the device (host arrays copied there first) and the
    device buffer goes to MPI; except for fp16 sums, whose reduction op runs
    in Python on host memory. ``'pinned'``: device arrays packed on the
    device, staged through a kept pinned host buffer (one copy each way per
    run of arrays on one device).
    """
    if not any_device_array:
        return 'host'
    if cuda_aware and not fp16_reduction:
        return 'device'
    return 'pinned'


class PendingCopies(object):
    """Asynchronous copies that may still be reading kept pinned buffers.

    ``cupy.ndarray.set(host)`` queues ``cudaMemcpyAsync`` on the current
    stream (CuPy 13.6 and 14.2): from pinned memory it returns before the
    copy has read the buffer. A buffer the host, or MPI, writes while such
    a copy runs would hand the device the new values. After each such copy
    :meth:`started` records an event on its stream (the latest per stream:
    it marks everything queued there before it); :meth:`wait` blocks the
    host until every recorded event has passed, and is called before
    pinned memory is written again. Copies *into* pinned memory
    (``get(out=...)``) block already.

    Streams need ``record()``, returning an event with ``synchronize()``
    (``cupy.cuda.Stream``). :attr:`waits` counts the events waited for.
    """

    def __init__(self):
        self._events = {}
        self.waits = 0

    def __len__(self):
        return len(self._events)

    def started(self, stream):
        """A copy out of pinned memory was queued on ``stream``."""
        key = getattr(stream, 'ptr', None)
        # the stream is kept with its event: an id is not reused meanwhile
        self._events[id(stream) if key is None else key] = (stream,
                                                            stream.record())

    def wait(self):
        """Returns once every copy recorded so far has read its buffer."""
        events, self._events = self._events, {}
        for _, event in events.values():
            event.synchronize()
            self.waits += 1


def _device_of(arrays):
    """The CuPy device id of the first device array, or None."""
    for a in arrays:
        if not isinstance(a, numpy.ndarray):  # pragma: no cover - needs a GPU
            return a.device.id
    return None


class MpiCommunicator(PackedCommunicator):
    """ChainerMN MPI communicator with K-FAC's packed collectives.

    Arrays are NumPy (CPU) or CuPy. A collective's device arrays are packed
    on the device by one kernel launch per run of arrays on one device, into
    a kept device buffer, and staged through a kept pinned host buffer by
    one copy each way; with a CUDA-aware MPI (``cuda_aware``, asked of the
    library by default: :func:`mpi_cuda_support`) the device buffer goes to
    MPI directly (fp16 sums excepted: see :func:`staging_mode`). The copy
    to the device is asynchronous: a collective that stages through pinned
    memory first waits for the previous collectives' copies out of it
    (:class:`PendingCopies`: one event wait each, usually already passed).

    Byte counters (:attr:`bytes_sent`, :attr:`bytes_received`, cumulative;
    see :meth:`reset_traffic`) count what this rank moves under the
    bandwidth-optimal ring algorithms: a reduce-scatter of segments
    ``c_0..c_{p-1}`` sends ``total - c_rank`` values, an all-gather receives
    ``total - c_rank``, an all-reduce of n values moves ``2 (p-1)/p n``.

    Args:
        mpi_comm: an ``mpi4py.MPI.Comm``.
        cuda_aware (bool or None): whether MPI takes CUDA device buffers
            (None: ask the library).
    """

    def __init__(self, mpi_comm, cuda_aware=None):
        super(MpiCommunicator, self).__init__(mpi_comm)
        self.cuda_aware = (mpi_cuda_support() if cuda_aware is None
                           else bool(cuda_aware))
        self.pending_copies = PendingCopies()

    # --- buffers ----------------------------------------------------------
    def _allocate(self, size, dtype, kind):
        if kind == 'host':
            return numpy.empty(size, dtype=dtype)
        import cupy  # pragma: no cover - needs a GPU
        if kind == 'pinned':  # pragma: no cover - needs a GPU
            import cupyx
            return cupyx.empty_pinned(size, dtype=dtype)
        with cupy.cuda.Device(kind[1]):  # pragma: no cover - needs a GPU
            return cupy.empty(size, dtype=dtype)

    def _staged_buffer(self, purpose, size, dtype, arrays, fp16_reduction):
        """The buffer handed to MPI for ``arrays`` (see :func:`staging_mode`).

        A pinned buffer is returned only once no copy out of pinned memory
        is pending (:class:`PendingCopies`): every collective takes its
        buffers before it packs into them or hands them to MPI.
        """
        device = _device_of(arrays)
        mode = staging_mode(device is not None, self.cuda_aware,
                            fp16_reduction)
        if mode == 'device':  # pragma: no cover - needs a GPU
            return self._buffer(purpose, size, dtype, ('device', device))
        if mode == 'pinned':
            self.pending_copies.wait()
        return self._buffer(purpose, size, dtype, mode)

    def _global_exponents(self, arrays):
        """fp16 scale exponents of ``arrays``, agreed by all ranks (one MAX
        all-reduce of one float per array)."""
        local = max_abs(arrays)
        total = numpy.empty_like(local)
        self.mpi_comm.Allreduce(local, total, op=MPI.MAX)
        self._count_allreduce(local.size, local.itemsize)
        return self._exponents(total)

    # --- collectives ------------------------------------------------------
    def allreduce_mean(self, arrays, comm_dtype='float32'):
        """Means over ranks of a list of arrays, through one packed buffer.

        Returns:
            list: new arrays (dtype, shape and device of the inputs).
        """
        if not arrays:
            return []
        dtype = comm_dtype_of(comm_dtype)
        fp16 = dtype == numpy.float16
        plan = self._plan([(a.shape, False) for a in arrays])
        send = self._staged_buffer('allreduce', plan.size, dtype, arrays,
                                   fp16)
        scales = 2.0 ** self._global_exponents(arrays) if fp16 else None
        self._pack(plan, arrays, send, scales, 'allreduce')
        self.mpi_comm.Allreduce(MPI.IN_PLACE, mpi_args(send),
                                op=sum_op(dtype))
        self._count_allreduce(plan.size, send.itemsize)
        divisors = self.size * (numpy.ones(len(plan)) if scales is None
                                else scales)
        return self._unpack(plan, send, divisors, arrays, 'allreduce')

    def start_reduce_scatter_v(self, arrays_per_rank, comm_dtype='float32',
                               blocking=False, purpose='rs'):
        """Non-blocking :meth:`reduce_scatter_v` (``MPI_Ireduce_scatter``);
        ``.wait()`` on the returned handle gives the arrays."""
        dtype = comm_dtype_of(comm_dtype)
        fp16 = dtype == numpy.float16
        layout = self._reduce_scatter_layout(arrays_per_rank)
        counts, r = layout.counts, self.rank
        if layout.total == 0:
            return PendingReduceScatter(None, lambda: [])
        send = self._staged_buffer(purpose + '_send', layout.total, dtype,
                                   layout.flat, fp16)
        recv = self._staged_buffer(purpose + '_recv', counts[r], dtype,
                                   layout.flat, fp16)
        scales = 2.0 ** self._global_exponents(layout.flat) if fp16 else None
        self._pack(self._plan(layout.flat_items), layout.flat, send, scales,
                   purpose + '_send')
        args = (mpi_args(send), mpi_args(recv), counts, sum_op(dtype))
        if blocking:
            self.mpi_comm.Reduce_scatter(*args)
            request = None
        else:
            request = self.mpi_comm.Ireduce_scatter(*args)
        self._count(ring_reduce_scatter(counts, r), send.itemsize)
        divisors = layout.own_divisors(self.size, scales)

        def finish():
            return self._unpack(layout.own_plan, recv, divisors,
                                layout.own_arrays, purpose + '_recv')
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
        plans, head, counts = self._all_gather_plans(arrays_per_rank, dtype)
        total = sum(counts)
        if total == 0:
            return [[] for _ in plans]
        r = self.rank
        own = arrays_per_rank[r]
        every = [a for seg in arrays_per_rank for a in seg]
        send = self._staged_buffer('ag_send', counts[r], dtype, every, False)
        scales = None
        if dtype == numpy.float16:
            ks = fp16_exponents(max_abs(own))
            _write(send[:head[r]], ks)
            scales = 2.0 ** ks
        self._pack(plans[r], own, send[head[r]:], scales, 'ag_send')
        recv = self._staged_buffer('ag_recv', total, dtype, every, False)
        displs = [0]
        for c in counts[:-1]:
            displs.append(displs[-1] + c)
        mpi_type = mpi_args(send)[1]
        self.mpi_comm.Allgatherv([send, mpi_type],
                                 [recv, counts, displs, mpi_type])
        self._count(ring_all_gather(counts, r), send.itemsize)
        out = []
        for q, plan in enumerate(plans):
            seg = recv[displs[q]:displs[q] + counts[q]]
            divisors = None
            if head[q]:
                divisors = 2.0 ** _to_numpy(seg[:head[q]]).astype(
                    numpy.float64)
            out.append(self._unpack(plan, seg[head[q]:], divisors,
                                    arrays_per_rank[q], 'ag_recv'))
        return out

    # --- helpers ----------------------------------------------------------
    def _pack(self, plan, arrays, buffer, scales, purpose):
        """Packs ``arrays`` (the whole plan) into ``buffer``, each where it
        lives: a run of device arrays is packed on the device by one launch
        into a kept device buffer and copied to the (pinned) host buffer
        once; host arrays are packed in place. A device ``buffer`` (CUDA-aware
        MPI) gets every array by one launch, and the stream is synchronised
        before MPI reads it.

        ``scales``: None or a float64 NumPy vector (powers of two).
        """
        if not isinstance(buffer, numpy.ndarray):  # pragma: no cover - GPU
            xp = backend.get_array_module(buffer)
            with buffer.device:
                on_device = [xp.asarray(a) for a in arrays]
                plan.pack(on_device, buffer, None if scales is None
                          else xp.asarray(scales, numpy.float32))
                xp.cuda.get_current_stream().synchronize()
            return
        for start, stop, xp in _runs(arrays):
            first, last = plan.bounds(start, stop)
            run_scales = None
            if scales is not None:
                run_scales = xp.asarray(scales[start:stop], numpy.float32)
            if xp is numpy:
                plan.pack(arrays[start:stop], buffer[first:last],
                          run_scales, start, stop)
            else:  # pragma: no cover - needs a GPU
                staging = self._buffer(
                    purpose + '_staging', plan.size, buffer.dtype,
                    ('device', arrays[start].device.id))[first:last]
                plan.pack(arrays[start:stop], staging, run_scales, start, stop)
                staging.get(out=buffer[first:last])

    def _unpack(self, plan, buffer, divisors, like, purpose):
        """New arrays with the dtypes, shapes and devices of ``like``, from
        ``buffer`` divided by ``divisors`` (None or a float64 NumPy vector):
        a run of device arrays is copied to a kept device buffer once
        (asynchronously: recorded in :attr:`pending_copies`) and unpacked
        by one launch; a device ``buffer`` is unpacked by one launch (host
        arrays of ``like`` are then copied back)."""
        if not isinstance(buffer, numpy.ndarray):  # pragma: no cover - GPU
            return _unpack_device(plan, buffer, divisors, like)
        outs = [backend.get_array_module(ref).empty(ref.shape, ref.dtype)
                for ref in like]
        for start, stop, xp in _runs(like):
            first, last = plan.bounds(start, stop)
            run_divisors = None
            if divisors is not None:
                run_divisors = xp.asarray(divisors[start:stop], numpy.float32)
            source = buffer[first:last]
            if xp is not numpy:  # pragma: no cover - needs a GPU
                staging = self._buffer(
                    purpose + '_staging', plan.size, buffer.dtype,
                    ('device', like[start].device.id))[first:last]
                # asynchronous from pinned memory: the buffer is read
                # after this returns; the next collective waits for it
                staging.set(source)
                self.pending_copies.started(xp.cuda.get_current_stream())
                source = staging
            plan.unpack(source, outs[start:stop], run_divisors, start, stop)
        return outs


def _unpack_device(plan, buffer, divisors, like):  # pragma: no cover - GPU
    """Unpacks a device buffer by one launch; host ``like`` arrays get host
    copies of their results."""
    xp = backend.get_array_module(buffer)
    with buffer.device:
        outs = [xp.empty(ref.shape, ref.dtype) for ref in like]
        plan.unpack(buffer, outs, None if divisors is None
                    else xp.asarray(divisors, numpy.float32))
        return [out.get() if isinstance(ref, numpy.ndarray) else out
                for out, ref in zip(outs, like)]


def _write(buffer, values):
    """``buffer[...] = values`` (a NumPy vector) wherever ``buffer`` is."""
    if isinstance(buffer, numpy.ndarray):
        buffer[...] = values
    else:  # pragma: no cover - needs a GPU
        buffer[...] = backend.get_array_module(buffer).asarray(
            values.astype(buffer.dtype))


def _to_numpy(array):
    if isinstance(array, numpy.ndarray):
        return array
    return array.get()  # pragma: no cover - needs a GPU


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
