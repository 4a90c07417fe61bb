"""Errors that stop every rank with one line.

The package's rule for a problem found on some ranks only (a missing file, no
GPU, a snapshot that does not match): the ranks first agree on it, so that no
rank is left waiting in a collective, then every rank raises or exits with the
same one line. The pieces, kept here once:

* :func:`one_line`: ``ExceptionType: first line of its message``;
* :func:`first_error`: every rank's message (or None) in, the lowest rank
  that has one and its message out, on every rank (one ``allgather``);
* :func:`agreed_error`: the message alone;
* :func:`exit_on_every_rank`: rank 0 prints ``PROG: error: MESSAGE``, every
  rank exits with :data:`EXIT_STATUS` after a barrier.

A communicator here is a ChainerMN or chainerkfac communicator (its
``mpi_comm`` is used), an mpi4py one, or None for one process; nothing here
imports mpi4py.
"""
import sys

#: exit status of a run stopped by a usage, data or device problem
EXIT_STATUS = 2


class ForeignSnapshotError(ValueError):
    """A snapshot loaded into :class:`~chainerkfac.DistributedKFAC` held the
    momentum and curvature of Fisher blocks other ranks own, not of this
    rank's (one rank's file loaded on every rank); raised on every rank, its
    message one line saying how to resume."""


def one_line(error):
    """``ExceptionType: first line of its message`` (the message's other
    lines, a traceback's, say where, not what)."""
    text = str(error).strip().splitlines()
    return '{}: {}'.format(type(error).__name__, text[0] if text else '')


def _size(comm):
    return 1 if comm is None else int(comm.size)


def first_error(comm, error):
    """``(rank, message)`` of the lowest rank whose ``error`` is a message,
    or ``(None, None)`` when no rank has one; the same on every rank.

    Collective on a communicator of several processes (one ``allgather`` of
    each rank's message or None): every rank must call it.
    """
    if _size(comm) == 1:
        return (0, error) if error else (None, None)
    errors = getattr(comm, 'mpi_comm', comm).allgather(error)
    for rank, message in enumerate(errors):
        if message:
            return rank, message
    return None, None


def agreed_error(comm, error):
    """The lowest rank's error message (None when no rank has one); see
    :func:`first_error`."""
    return first_error(comm, error)[1]


def exit_on_every_rank(prog, message, comm=None, label='error',
                       stream=None):
    """Rank 0 writes ``PROG: LABEL: MESSAGE`` (one line, on ``stream``,
    default stderr); every rank exits with :data:`EXIT_STATUS`, after a
    barrier so that rank 0's line is out before any rank ends.

    Every rank must call it with the same message: the ranks have agreed on
    the error first (:func:`first_error`).
    """
    if comm is None or comm.rank == 0:
        out = stream or sys.stderr
        out.write('{}: {}: {}\n'.format(prog, label, message))
        out.flush()
    if _size(comm) > 1:
        getattr(comm, 'mpi_comm', comm).Barrier()
    sys.exit(EXIT_STATUS)
