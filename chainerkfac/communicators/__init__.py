"""Communicators: ChainerMN MPI communicators with K-FAC's packed collectives."""
from chainerkfac.communicators.mpi_communicator import MpiCommunicator  # NOQA
from chainerkfac.communicators.packing import PackingPlan  # NOQA

COMMUNICATOR_NAMES = ('mpi', 'pure_nccl')


def create_communicator(name='mpi', mpi_comm=None, abort_on_exception=True):
    """Creates a communicator for :class:`~chainerkfac.optimizers.DistributedKFAC`.

    Args:
        name (str): ``'mpi'``: NumPy buffers through mpi4py (CPU; CuPy arrays
            are staged through host memory). ``'pure_nccl'``: CuPy + NCCL.
        mpi_comm: an ``mpi4py.MPI.Comm`` (default ``COMM_WORLD``).
        abort_on_exception (bool): with more than one process, install
            ChainerMN's global except hook: an uncaught exception on any rank
            prints that rank's traceback and calls ``MPI_Abort``, so every
            rank ends with a non-zero exit instead of hanging in a collective.

    Returns:
        a subclass of ChainerMN's ``MpiCommunicatorBase``, so
        ``chainermn.scatter_dataset``, ``create_multi_node_evaluator`` and
        ``bcast_data`` accept it.
    """
    if mpi_comm is None:
        from mpi4py import MPI
        mpi_comm = MPI.COMM_WORLD
    if name not in COMMUNICATOR_NAMES:
        raise ValueError('chainerkfac: unknown communicator {!r}; choose one '
                         'of {}'.format(name, COMMUNICATOR_NAMES))
    if abort_on_exception and mpi_comm.size > 1:
        from chainermn import global_except_hook
        global_except_hook.add_hook()
    if name == 'mpi':
        return MpiCommunicator(mpi_comm)
    if name == 'pure_nccl':
        raise NotImplementedError(
            "chainerkfac: the 'pure_nccl' communicator needs CuPy with NCCL "
            "and is not available in this version; use 'mpi', which stages "
            "CuPy arrays through host memory")
