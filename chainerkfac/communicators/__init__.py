"""Communicators: ChainerMN MPI communicators with K-FAC's packed
collectives."""
from chainerkfac import _optional
# the package's communicator classes (F401: imported to be re-exported)
try:  # mpi4py: the [mpi] extra; without it these names say what to install
    from chainerkfac.communicators.base import CommunicatorUnavailable  # NOQA: F401
    from chainerkfac.communicators.mpi_communicator import MpiCommunicator
    from chainerkfac.communicators.nccl_communicator import \
        PureNcclCommunicator
except ImportError as e:
    _optional.reraise_unless_mpi4py_missing(e)
    __getattr__ = _optional.attributes_needing_mpi4py(
        __name__, 'CommunicatorUnavailable', 'MpiCommunicator',
        'PureNcclCommunicator')
from chainerkfac.communicators.packing import PackingPlan  # NOQA: F401

COMMUNICATOR_NAMES = ('mpi', 'pure_nccl')


@_optional.needs_mpi4py('create_communicator')
def create_communicator(name='mpi', mpi_comm=None, abort_on_exception=True,
                        blas_threads='auto', **options):
    """Creates a communicator for
    :class:`~chainerkfac.optimizers.DistributedKFAC`.

    Args:
        name (str): ``'mpi'``: NumPy buffers through mpi4py; CuPy arrays are
            packed on the device and staged through pinned host memory, or
            handed to MPI on the device when MPI is CUDA-aware (option
            ``cuda_aware``: True, False or None to ask the library).
            ``'pure_nccl'``: CuPy + NCCL, one GPU per rank (options
            ``mapping``: ``'auto'``, ``'grouped'`` or ``'padded'``, see
            :mod:`~chainerkfac.communicators.nccl_mapping`; ``nccl_backend``:
            ``'nccl'``, or ``'mpi_emulation'`` to run the same logic over
            mpi4py on the CPU).
        mpi_comm: an ``mpi4py.MPI.Comm`` (default ``COMM_WORLD``).
        abort_on_exception (bool): with more than one process, install
            ChainerMN's global except hook: an uncaught exception on any rank
            prints that rank's traceback and calls ``MPI_Abort``, so every
            rank ends with a non-zero exit instead of hanging in a collective.
        blas_threads: passed to :func:`chainerkfac.configure_threads` with
            ``mpi_comm`` on every rank, once the communicator can be made:
            ``'auto'`` (each process gets its share of its node's cores, unless
            ``OPENBLAS_NUM_THREADS``, ``OMP_NUM_THREADS``, ... is set), an int
            (that many threads per BLAS library), or None (leave them alone).

    Returns:
        a subclass of ChainerMN's ``MpiCommunicatorBase``, so
        ``chainermn.scatter_dataset``, ``create_multi_node_evaluator`` and
        ``bcast_data`` accept it.

    Raises:
        CommunicatorUnavailable: ``'pure_nccl'`` with NCCL on a rank without
            CuPy, without NCCL in CuPy, without a usable GPU, or with two
            ranks of a node on one GPU; raised on every rank (they agree
            first), one line naming the first such rank and what it lacks.
    """
    if mpi_comm is None:
        from mpi4py import MPI
        mpi_comm = MPI.COMM_WORLD
    if name not in COMMUNICATOR_NAMES:
        raise ValueError('chainerkfac: unknown communicator {!r}; choose one '
                         'of {}'.format(name, COMMUNICATOR_NAMES))
    allowed = {'mpi': ('cuda_aware',),
               'pure_nccl': ('mapping', 'nccl_backend')}[name]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError('chainerkfac: create_communicator({!r}) takes no '
                        'option {}; its options: {}'.format(
                            name, ', '.join(unknown), ', '.join(allowed)))
    from chainerkfac import threads
    threads._checked(blas_threads)   # a bad value fails before any collective
    if abort_on_exception and mpi_comm.size > 1:
        from chainermn import global_except_hook
        global_except_hook.add_hook()
    if name == 'pure_nccl' and options.get('nccl_backend', 'nccl') == 'nccl':
        from chainerkfac.communicators import nccl_backend
        nccl_backend.agree(mpi_comm, nccl_backend.nccl_problem(),
                           "create_communicator('pure_nccl')")
    threads.configure_threads(blas_threads, comm=mpi_comm)
    if name == 'mpi':
        return MpiCommunicator(mpi_comm, **options)
    return PureNcclCommunicator(mpi_comm, **options)
