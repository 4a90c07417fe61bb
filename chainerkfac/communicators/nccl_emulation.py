"""The NCCL interface over mpi4py with NumPy buffers (CPU).

:class:`MpiNcclEmulation` implements
:class:`~chainerkfac.communicators.nccl_interface.NcclInterface` with MPI
non-blocking collectives, so that ``PureNcclCommunicator`` -- segmenting,
mapping, padding, fp16 scaling, stream ordering, byte counters -- runs
under ``mpiexec`` without a GPU::

    comm = chainerkfac.create_communicator('pure_nccl',
                                           nccl_backend='mpi_emulation')

Streams are emulated. A call is started (``MPI_I...``) when it is made,
after the calls already queued on its stream have completed; it completes
when its stream is synchronised, when an event recorded after it is waited
for (``stream.wait_event``, ``event.synchronize``), when host work is
launched on its stream, or when a later call is made on its stream. Until
then its output buffer holds NaN: a result read out of stream order is NaN,
not a stale value, so ordering mistakes above the interface show in the
results. Inputs are copied when a call is made, so a call may be in place.

Summation order. NCCL does not specify the order in which ranks' values
are added, and neither does this emulation; it picks MPICH's, so that
``'pure_nccl'`` can be compared bit for bit with ``'mpi'``:

- a group of ``reduce`` calls with increasing roots, one op, dtype and
  stream -- what the grouped mapping issues for a ReduceScatterV, and what
  NCCL runs as one fused launch -- is started as ONE
  ``MPI_Ireduce_scatter`` whose counts are the reduces' (0 for a rank that
  is no root). ``'mpi'`` calls ``MPI_Reduce_scatter`` (or
  ``MPI_Ireduce_scatter``) on the same packed buffer and counts, and MPICH
  4.3 adds every element in the same order in both (measured for 3 and 4
  ranks from 1 to 300 000 values per rank, fp32 and the fp16 op);
  reduces issued one by one (``MPI_Ireduce`` per root) would not: MPICH's
  binomial reduce adds the root's values first, its reduce-scatter adds
  rank 0's first (recursive halving), so 3 ranks differ in the last bit;
- ``reduce_scatter`` (the padded mapping) is ``MPI_Ireduce_scatter`` with
  equal counts: the same order as long as the padded and the unpadded
  totals fall on the same side of MPICH's algorithm switch
  (``MPIR_CVAR_REDUCE_SCATTER_COMMUTATIVE_LONG_MSG_SIZE``, 512 KiB:
  recursive halving below, pairwise exchange above).
  ``MPI_Ireduce_scatter_block`` switches elsewhere (measured: ~40 000 fp32
  values per rank at 3 and 4 ranks), so it is not used;
- ``all_reduce`` is ``MPI_Iallreduce`` in place (the same order as
  ``'mpi'``'s ``MPI_Allreduce``, measured);
- fp16 sums use ``'mpi'``'s op: each addition in fp32, rounded to fp16 --
  as NCCL adds fp16 (one rounding per addition).

Real NCCL adds in ring or tree order, so on GPUs ``'pure_nccl'`` and
``'mpi'`` agree to round-off, not bit for bit.
"""
import collections
import contextlib

import numpy
from mpi4py import MPI

from chainerkfac.communicators import nccl_interface
from chainerkfac.communicators.mpi_communicator import mpi_args
from chainerkfac.communicators.mpi_communicator import sum_op


class HostEvent(object):
    """The calls queued on a :class:`HostStream` when it was recorded."""

    def __init__(self, calls):
        self._calls = calls

    def synchronize(self):
        for call in self._calls:
            call.complete()

    def query(self):
        """Whether every call before the event has completed."""
        return all(call.done for call in self._calls)


class HostStream(object):
    """An emulated stream: the started calls not yet completed, in order."""

    def __init__(self, name):
        self.name = name
        self._calls = []

    def __repr__(self):
        return '<HostStream {}>'.format(self.name)

    def _enqueue(self, call):
        self._calls.append(call)

    def record(self):
        return HostEvent([c for c in self._calls if not c.done])

    def wait_event(self, event):
        # the host runs what follows on this stream right away, so what the
        # event stands for has to be complete now
        event.synchronize()

    def synchronize(self):
        calls, self._calls = self._calls, []
        for call in calls:
            call.complete()


class _Call(object):
    """A started MPI request, what completes it (copy-out), and the buffers
    MPI may touch until then (kept alive here)."""

    def __init__(self, request, finish, keep):
        self.request, self._finish, self.done = request, finish, False
        self._keep = keep

    def complete(self):
        if not self.done:
            self.request.Wait()
            self._finish()
            self.done = True
            self._keep = None


def _poison(array):
    if array is not None and array.size:
        array[...] = numpy.nan


class _Pending(object):
    """A call made (inputs copied), not yet started."""

    def __init__(self, kind, stream, send, recv, root, op, dtype):
        self.kind, self.stream = kind, stream
        self.send, self.recv, self.root, self.op = send, recv, root, op
        self.dtype = dtype


class MpiNcclEmulation(nccl_interface.NcclInterface):
    """:class:`~chainerkfac.communicators.nccl_interface.NcclInterface`
    over mpi4py and NumPy (see the module docstring).

    Args:
        mpi_comm: the ranks; the emulation works on a duplicate of it, as
            NCCL has a communicator of its own.

    Attributes:
        started (collections.Counter): MPI calls started, by name.
    """

    xp = numpy

    def __init__(self, mpi_comm):
        self._comm = mpi_comm.Dup()
        self.rank, self.size = self._comm.rank, self._comm.size
        self._null = HostStream('null')
        self._streams = 0
        self._group_depth = 0
        self._grouped = []
        self.started = collections.Counter()

    # --- memory and streams -----------------------------------------------
    def empty(self, n, dtype):
        return numpy.empty(n, dtype)

    def zeros(self, n, dtype):
        return numpy.zeros(n, dtype)

    def asarray(self, array):
        return numpy.asarray(array)

    def to_host(self, array, stream):
        stream.synchronize()
        return numpy.array(array, copy=True)

    def current_stream(self):
        return self._null

    def new_stream(self):
        self._streams += 1
        return HostStream('side {}'.format(self._streams))

    def launch(self, stream, function):
        stream.synchronize()
        return function()

    # --- collectives ------------------------------------------------------
    def _make(self, kind, stream, send, recv, root=None, op=None):
        nccl_interface.check_call(kind, self.size, self.rank, send=send,
                                  recv=recv, buffer=send if kind == 'bcast'
                                  else None, op=op, root=root)
        if op is not None:
            self._mpi_op(op, send.dtype)
        stream.synchronize()        # stream order: earlier calls first
        call = _Pending(kind, stream, send.copy(), recv, root, op,
                        send.dtype)
        if self._group_depth:
            self._grouped.append(call)
        else:
            self._start([call])

    def all_reduce(self, send, recv, op, stream):
        self._make('all_reduce', stream, send, recv, op=op)

    def reduce(self, send, recv, root, op, stream):
        if self.rank != root:
            recv = None
        self._make('reduce', stream, send, recv, root=root, op=op)

    def bcast(self, buffer, root, stream):
        self._make('bcast', stream, buffer, buffer, root=root)

    def reduce_scatter(self, send, recv, op, stream):
        self._make('reduce_scatter', stream, send, recv, op=op)

    def all_gather(self, send, recv, stream):
        self._make('all_gather', stream, send, recv)

    @contextlib.contextmanager
    def group(self):
        self._group_depth += 1
        try:
            yield
        except BaseException:
            if self._group_depth == 1:
                self._grouped = []     # nothing of a failed group starts
            raise
        finally:
            self._group_depth -= 1
        if self._group_depth == 0:
            calls, self._grouped = self._grouped, []
            self._start(calls, grouped=True)

    # --- starting calls ---------------------------------------------------
    def _mpi_op(self, op, dtype):
        if op == 'sum':
            return sum_op(dtype)
        if numpy.dtype(dtype) == numpy.float16:
            raise ValueError('nccl emulation: max of float16 values is not '
                             'emulated')
        return MPI.MAX

    def _start(self, calls, grouped=False):
        """Starts the calls of a group (or one call), fusing a group of
        reduces into one reduce-scatter (see the module docstring)."""
        if not calls:
            return
        if grouped and self._fusable(calls):
            self._start_fused(calls)
            return
        for call in calls:
            if call.kind != 'bcast' or call.root != self.rank:
                _poison(call.recv)
        for call in calls:
            self._start_one(call)

    @staticmethod
    def _fusable(calls):
        first = calls[0]
        roots = [c.root for c in calls]
        return (all(c.kind == 'reduce' for c in calls)
                and all((c.op, c.dtype, c.stream) ==
                        (first.op, first.dtype, first.stream) for c in calls)
                and all(a < b for a, b in zip(roots, roots[1:])))

    def _start_fused(self, calls):
        counts = [0] * self.size
        for call in calls:
            counts[call.root] = call.send.size
        own = [c for c in calls if c.root == self.rank]
        target = own[0].recv if own else None
        _poison(target)
        send = numpy.concatenate([c.send for c in calls])
        out = numpy.empty(counts[self.rank], calls[0].dtype)
        request = self._comm.Ireduce_scatter(
            mpi_args(send), mpi_args(out), counts,
            self._mpi_op(calls[0].op, calls[0].dtype))
        self.started['Ireduce_scatter (fused reduces)'] += 1

        def finish():
            if target is not None:
                target[...] = out
        calls[0].stream._enqueue(_Call(request, finish, (send, out, counts)))

    def _start_one(self, call):
        kind, work, recv = call.kind, call.send, call.recv
        comm = self._comm
        out, counts = None, None
        if kind == 'all_reduce':
            request = comm.Iallreduce(MPI.IN_PLACE, mpi_args(work),
                                      self._mpi_op(call.op, call.dtype))
            out = work
            name = 'Iallreduce'
        elif kind == 'reduce':
            if recv is not None:
                out = numpy.empty_like(work)
            request = comm.Ireduce(
                mpi_args(work), None if out is None else mpi_args(out),
                self._mpi_op(call.op, call.dtype), root=call.root)
            name = 'Ireduce'
        elif kind == 'bcast':
            request = comm.Ibcast(mpi_args(work), root=call.root)
            out = work if call.root != self.rank else None
            name = 'Ibcast'
        elif kind == 'reduce_scatter':
            n = recv.size
            out = numpy.empty(n, call.dtype)
            counts = [n] * self.size
            request = comm.Ireduce_scatter(
                mpi_args(work), mpi_args(out), counts,
                self._mpi_op(call.op, call.dtype))
            name = 'Ireduce_scatter'
        else:
            out = numpy.empty(recv.size, call.dtype)
            request = comm.Iallgather(mpi_args(work), mpi_args(out))
            name = 'Iallgather'
        self.started[name] += 1

        def finish():
            if out is not None and recv is not None:
                recv[...] = out
        call.stream._enqueue(_Call(request, finish, (work, out, counts)))

    def abort(self):
        self._comm.Abort(1)  # pragma: no cover - ends the job
