"""The small interface through which ``'pure_nccl'`` talks to NCCL.

:class:`~chainerkfac.communicators.nccl_communicator.PureNcclCommunicator`
never sees a pointer or an NCCL handle: it hands 1-D contiguous arrays and
stream objects to an implementation of :class:`NcclInterface`. Two exist:

- :class:`~chainerkfac.communicators.nccl_backend.NcclBackend`, over
  ``cupy.cuda.nccl.NcclCommunicator`` (CuPy arrays, CUDA streams);
- :class:`~chainerkfac.communicators.nccl_emulation.MpiNcclEmulation`, over
  mpi4py with NumPy arrays, so that everything above this interface runs
  under ``mpiexec`` on machines without a GPU.

Semantics are NCCL's. Every call is asynchronous: it is queued on
``stream`` after the work already queued there, and its output may be read
only by work ordered after it (queued later on the same stream, or on a
stream that waited for an event recorded after it). Every rank issues the
same calls in the same order with the same counts. Inside :meth:`group`
the calls are issued together when the group ends (NCCL's
``groupStart``/``groupEnd``).

Streams are objects with ``record()`` (returns an event recorded at the
stream's current end), ``wait_event(event)`` and ``synchronize()``; events
have ``synchronize()``: ``cupy.cuda.Stream`` and ``cupy.cuda.Event`` on a
GPU.
"""
import contextlib

import numpy

#: reduction operators of the interface
OPS = ('sum', 'max')
#: dtypes a collective may carry
DTYPES = (numpy.dtype(numpy.float16), numpy.dtype(numpy.float32),
          numpy.dtype(numpy.float64))


class NcclInterface(object):
    """What ``'pure_nccl'`` needs of NCCL (see the module docstring).

    Attributes:
        rank (int), size (int): this process in the communicator.
        xp: the array module of the buffers (``cupy`` or ``numpy``).
    """

    rank = 0
    size = 1
    xp = numpy

    # --- memory and streams -----------------------------------------------
    def empty(self, n, dtype):
        """A new 1-D buffer on the communicator's device."""
        raise NotImplementedError

    def zeros(self, n, dtype):
        """A new 1-D buffer of zeros on the communicator's device."""
        raise NotImplementedError

    def asarray(self, array):
        """``array`` on the communicator's device (no copy if it is)."""
        raise NotImplementedError

    def to_host(self, array, stream):
        """A NumPy copy of ``array`` once the work queued on ``stream``
        before this call is done (synchronises ``stream`` only)."""
        raise NotImplementedError

    def on_device(self, array):
        """Whether ``array`` lives where this interface's buffers do."""
        return isinstance(array, self.xp.ndarray)

    def current_stream(self):
        """The stream the caller's kernels run on."""
        raise NotImplementedError

    def new_stream(self):
        """A new stream (for communication overlapping other work)."""
        raise NotImplementedError

    def launch(self, stream, function):
        """Runs ``function()`` with its kernels queued on ``stream`` (after
        the work queued there); returns its result."""
        raise NotImplementedError

    # --- collectives ------------------------------------------------------
    def all_reduce(self, send, recv, op, stream):
        """``recv = op over ranks of send`` (same length; in place when
        ``recv is send``)."""
        raise NotImplementedError

    def reduce(self, send, recv, root, op, stream):
        """``recv = op over ranks of send`` on ``root``; ``recv`` is ignored
        (may be None) elsewhere."""
        raise NotImplementedError

    def bcast(self, buffer, root, stream):
        """``buffer`` of ``root`` into ``buffer`` of every rank."""
        raise NotImplementedError

    def reduce_scatter(self, send, recv, op, stream):
        """``recv = (op over ranks of send)[rank * n:(rank + 1) * n]`` with
        ``n = len(recv)``, ``len(send) = size * n``."""
        raise NotImplementedError

    def all_gather(self, send, recv, stream):
        """``recv[q * n:(q + 1) * n] = send of rank q`` (``n = len(send)``);
        ``send`` may be this rank's slot of ``recv`` (in place)."""
        raise NotImplementedError

    @contextlib.contextmanager
    def group(self):
        """Calls inside are issued together at the end (``groupStart`` /
        ``groupEnd``)."""
        raise NotImplementedError
        yield  # pragma: no cover

    def abort(self):
        """Ends the communicator without waiting for the other ranks."""


def _vector(what, array, dtype=None):
    if array.ndim != 1 or not array.flags.c_contiguous:
        raise ValueError('nccl: {} must be a 1-D contiguous array, got shape '
                         '{}'.format(what, array.shape))
    if array.dtype not in DTYPES:
        raise TypeError('nccl: {} has dtype {}; expected one of {}'.format(
            what, array.dtype, ', '.join(d.name for d in DTYPES)))
    if dtype is not None and array.dtype != dtype:
        raise TypeError('nccl: {} has dtype {}, send has {}'.format(
            what, array.dtype, dtype))


def check_op(op):
    if op not in OPS:
        raise ValueError('nccl: op must be one of {}, got {!r}'.format(
            OPS, op))


def check_root(root, size):
    if not isinstance(root, int) or not 0 <= root < size:
        raise ValueError('nccl: root {!r} is not a rank of {}'.format(
            root, size))


def check_call(kind, size, rank, send=None, recv=None, buffer=None, op=None,
               root=None):
    """Raises unless the arguments of a ``kind`` call fit (before anything
    reaches NCCL, which would read or write out of bounds)."""
    if op is not None:
        check_op(op)
    if root is not None:
        check_root(root, size)
    if kind == 'bcast':
        _vector('buffer', buffer)
        return
    _vector('send', send)
    if kind == 'reduce' and rank != root:
        if recv is not None:
            _vector('recv', recv, send.dtype)
        return
    if recv is None:
        raise ValueError('nccl: {} needs a recv buffer{}'.format(
            kind, ' on its root (rank {})'.format(root) if kind == 'reduce'
            else ''))
    _vector('recv', recv, send.dtype)
    n_send, n_recv = send.shape[0], recv.shape[0]
    expected = {'all_reduce': n_send, 'reduce': n_send,
                'reduce_scatter': n_send // size,
                'all_gather': n_send * size}[kind]
    if kind == 'reduce_scatter' and n_send != size * n_recv:
        raise ValueError('nccl: reduce_scatter sends {} values, which is not '
                         '{} ranks x {} received'.format(n_send, size, n_recv))
    if n_recv != expected:
        raise ValueError('nccl: {} of {} values needs a recv buffer of {}, '
                         'got {}'.format(kind, n_send, expected, n_recv))
