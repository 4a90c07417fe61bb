"""What :mod:`~chainerkfac.training.checkpoint` and
:mod:`~chainerkfac.training.resharding` share: the names and metadata keys of
a sharded snapshot's files, :class:`CheckpointError` and the agreement on it
across ranks. Import the public names from ``checkpoint``."""
import os

import numpy

from chainerkfac import errors

FORMAT = 'chainerkfac-sharded-snapshot'
VERSION = 1
SHARED = 'shared.npz'
META = '_checkpoint/'
EXTRA = '_checkpoint/rank_arrays/'


class CheckpointError(Exception):
    """A snapshot cannot be written or resumed; one line, the same on every
    rank (every rank raises it)."""


def rank_file(rank):
    """Name of rank ``rank``'s file inside a snapshot directory."""
    return 'rank{}.npz'.format(rank)


def mpi_of(comm):
    """The mpi4py communicator of ``comm`` (a ChainerMN or chainerkfac
    communicator, an mpi4py one), or None for one process."""
    if comm is None:
        return None
    mpi = getattr(comm, 'mpi_comm', comm)
    return mpi if mpi.Get_size() > 1 else None


def rank_size(comm):
    """``(rank, size)`` of this process (``(0, 1)`` for None)."""
    mpi = mpi_of(comm)
    return (0, 1) if mpi is None else (mpi.Get_rank(), mpi.Get_size())


def agree(comm, error):
    """Raises :class:`CheckpointError` on every rank when any rank passes an
    error message (the lowest such rank's message); returns otherwise."""
    message = errors.agreed_error(mpi_of(comm), error)
    if message:
        raise CheckpointError(message)


def scalar(npz, key, kind=int):
    """``kind`` of the 0-d array ``npz[key]``."""
    return kind(npz[key][()])


def open_rank_file(directory, rank):
    """``numpy.load`` of rank ``rank``'s file in ``directory`` (close it)."""
    return numpy.load(os.path.join(directory, rank_file(rank)),
                      allow_pickle=True)
