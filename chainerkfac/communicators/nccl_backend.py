"""The NCCL interface over ``cupy.cuda.nccl`` (GPU), and its preconditions.

:func:`nccl_problem` says, in one line, why this process cannot use NCCL
(CuPy missing, CuPy without NCCL, no CUDA device, a CUDA library CuPy cannot
load); :func:`gpu_of_rank` picks this rank's GPU from its node-local rank
and refuses, on every rank and before NCCL is called, two ranks of one node
on one GPU (which NCCL refuses, or hangs on). :class:`NcclBackend` is the thin
adapter: arrays in, pointers out, nothing else. It has not run on a GPU from
this repository's machines (``tests/test_nccl_backend.py`` holds its ``gpu``
tests).
"""
import contextlib

import numpy
from mpi4py import MPI

from chainerkfac import errors
from chainerkfac.communicators import nccl_interface
from chainerkfac.communicators.base import CommunicatorUnavailable
from chainerkfac.cuda import availability


def nccl_problem():
    """Why ``'pure_nccl'`` cannot run in this process, or None.

    Checked in order: CuPy imports; CuPy has NCCL
    (``cupy.cuda.nccl.available``, else the loader's reason); a CUDA device
    is usable; CuPy loads the other libraries K-FAC's GPU training calls
    (cuBLAS, cuSOLVER, NVRTC:
    :func:`chainerkfac.cuda.availability.library_problem`).
    """
    cupy, problem = availability.import_cupy()
    if problem:
        return problem
    version = getattr(cupy, '__version__', '?')
    problem = availability.library_problem(('nccl',), version)
    if problem:
        return problem + ('; install the nvidia-nccl-cu12 or -cu13 wheel '
                          'matching its CUDA')
    try:
        if not cupy.is_available():
            return ('CuPy {} finds no usable CUDA device (no GPU, no driver, '
                    'or CUDA_VISIBLE_DEVICES hides them)'.format(version))
        count = int(cupy.cuda.runtime.getDeviceCount())
    except Exception as e:
        return 'CuPy {} cannot query CUDA devices ({})'.format(
            version, availability.one_line(e))
    if count < 1:  # pragma: no cover - is_available() says so first
        return 'CuPy {} sees no CUDA device'.format(version)
    return availability.library_problem(availability.TRAINING_LIBRARIES,
                                        version)


def agree(mpi_comm, problem, what):
    """Raises :class:`CommunicatorUnavailable` on every rank when any rank
    has a problem (one allgather), naming the first such rank."""
    rank, p = errors.first_error(mpi_comm, problem)
    if p is not None:
        where = ' (rank {})'.format(rank) if mpi_comm.size > 1 else ''
        raise CommunicatorUnavailable('chainerkfac: {}{}: {}'.format(
            what, where, p))


def shared_gpu_problem(placements):
    """Two ranks on one GPU of one node, in one line, or None.

    Args:
        placements: per rank, ``(host name, local rank, GPU id, PCI bus id)``.
    """
    seen = {}
    for rank, (host, local, device, bus) in enumerate(placements):
        key = (host, bus)
        if key in seen:
            other = seen[key]
            return ('ranks {} and {} (local ranks {} and {} on {}) would both '
                    'use GPU {} (PCI {}); NCCL needs one GPU per rank: start '
                    'at most as many ranks per node as it has GPUs, or use '
                    "the 'mpi' communicator".format(
                        other[0], rank, other[1], local, host, device, bus))
        seen[key] = (rank, local)
    return None


def gpu_of_rank(mpi_comm, intra_rank):
    """This rank's CUDA device id: ``intra_rank % device count`` (each rank
    sees one device when CUDA_VISIBLE_DEVICES differs per rank), after every
    rank has checked that no two ranks of a node share a GPU (by PCI bus
    id). Raises :class:`CommunicatorUnavailable` on every rank otherwise;
    NCCL is not called."""
    import cupy
    count = int(cupy.cuda.runtime.getDeviceCount())
    device = intra_rank % count
    bus = cupy.cuda.Device(device).pci_bus_id
    mine = (MPI.Get_processor_name(), intra_rank, device, bus)
    placements = (mpi_comm.allgather(mine) if mpi_comm.size > 1
                  else [mine])
    problem = shared_gpu_problem(placements)
    if problem is not None:
        raise CommunicatorUnavailable(
            "chainerkfac: create_communicator('pure_nccl'): " + problem)
    return device


class NcclBackend(nccl_interface.NcclInterface):  # pragma: no cover - GPU
    """:class:`~chainerkfac.communicators.nccl_interface.NcclInterface` over
    ``cupy.cuda.nccl.NcclCommunicator``.

    Bootstrap: rank 0's ``nccl.get_unique_id()`` is broadcast over MPI and
    every rank joins with ``NcclCommunicator(size, id, rank)`` on its GPU
    (:func:`gpu_of_rank`, made current).

    Args:
        mpi_comm: the ranks.
        intra_rank (int): this rank's node-local rank.
    """

    def __init__(self, mpi_comm, intra_rank):
        import cupy
        from cupy.cuda import nccl
        self.xp, self._nccl = cupy, nccl
        self.rank, self.size = mpi_comm.rank, mpi_comm.size
        self.device_id = gpu_of_rank(mpi_comm, intra_rank)
        self.device = cupy.cuda.Device(self.device_id)
        self.device.use()
        uid = nccl.get_unique_id() if mpi_comm.rank == 0 else None
        uid = mpi_comm.bcast(uid, root=0)
        with self.device:
            self._comm = nccl.NcclCommunicator(self.size, uid, self.rank)
        self._dtypes = {numpy.dtype(numpy.float16): nccl.NCCL_FLOAT16,
                        numpy.dtype(numpy.float32): nccl.NCCL_FLOAT32,
                        numpy.dtype(numpy.float64): nccl.NCCL_FLOAT64}
        self._ops = {'sum': nccl.NCCL_SUM, 'max': nccl.NCCL_MAX}

    # --- memory and streams -----------------------------------------------
    def empty(self, n, dtype):
        with self.device:
            return self.xp.empty(n, dtype)

    def zeros(self, n, dtype):
        with self.device:
            return self.xp.zeros(n, dtype)

    def asarray(self, array):
        with self.device:
            return self.xp.asarray(array)

    def to_host(self, array, stream):
        host = numpy.empty(array.shape, array.dtype)
        array.get(stream=stream, out=host)
        stream.synchronize()
        return host

    def current_stream(self):
        return self.xp.cuda.get_current_stream()

    def new_stream(self):
        with self.device:
            return self.xp.cuda.Stream(non_blocking=True)

    def launch(self, stream, function):
        with self.device, stream:
            return function()

    # --- collectives ------------------------------------------------------
    def _check(self, kind, **kwargs):
        nccl_interface.check_call(kind, self.size, self.rank, **kwargs)

    def all_reduce(self, send, recv, op, stream):
        self._check('all_reduce', send=send, recv=recv, op=op)
        self._comm.allReduce(send.data.ptr, recv.data.ptr, send.size,
                             self._dtypes[send.dtype], self._ops[op],
                             stream.ptr)

    def reduce(self, send, recv, root, op, stream):
        self._check('reduce', send=send, recv=recv, op=op, root=root)
        target = recv if (recv is not None and self.rank == root) else send
        self._comm.reduce(send.data.ptr, target.data.ptr, send.size,
                          self._dtypes[send.dtype], self._ops[op], root,
                          stream.ptr)

    def bcast(self, buffer, root, stream):
        self._check('bcast', buffer=buffer, root=root)
        self._comm.bcast(buffer.data.ptr, buffer.size,
                         self._dtypes[buffer.dtype], root, stream.ptr)

    def reduce_scatter(self, send, recv, op, stream):
        self._check('reduce_scatter', send=send, recv=recv, op=op)
        self._comm.reduceScatter(send.data.ptr, recv.data.ptr, recv.size,
                                 self._dtypes[send.dtype], self._ops[op],
                                 stream.ptr)

    def all_gather(self, send, recv, stream):
        self._check('all_gather', send=send, recv=recv)
        self._comm.allGather(send.data.ptr, recv.data.ptr, send.size,
                             self._dtypes[send.dtype], stream.ptr)

    @contextlib.contextmanager
    def group(self):
        self._nccl.groupStart()
        try:
            yield
        finally:
            self._nccl.groupEnd()

    def abort(self):
        self._comm.abort()
