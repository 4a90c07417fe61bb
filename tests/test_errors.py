"""chainerkfac.errors: one-line error text and agreeing on an error across
ranks (the multi-rank paths with stand-in communicators recording their
collectives; under mpiexec through the checkpoint and entry-point tests)."""
import io

import pytest

from chainerkfac import errors


class StandIn(object):
    """A communicator of ``len(messages)`` ranks seen from rank ``rank``: its
    ``allgather`` returns the other ranks' ``messages``."""

    def __init__(self, rank, messages, nested=True):
        self.rank, self.size = rank, len(messages)
        self.messages = messages
        self.calls = []
        if nested:   # ChainerMN's shape: the mpi4py communicator inside
            self.mpi_comm = self

    def allgather(self, mine):
        self.calls.append('allgather')
        return [mine if r == self.rank else m
                for r, m in enumerate(self.messages)]

    def Barrier(self):
        self.calls.append('Barrier')


def test_one_line_keeps_the_type_and_the_first_line():
    assert errors.one_line(OSError('disk full\n  more')) == \
        'OSError: disk full'
    assert errors.one_line(KeyError()) == 'KeyError: '


def test_first_error_without_a_communicator():
    assert errors.first_error(None, None) == (None, None)
    assert errors.first_error(None, 'bad') == (0, 'bad')
    assert errors.first_error(StandIn(0, [None]), 'bad') == (0, 'bad')


@pytest.mark.parametrize('nested', [True, False])
def test_first_error_is_the_lowest_rank_on_every_rank(nested):
    messages = [None, 'rank 1 failed', 'rank 2 failed']
    for rank in range(3):
        comm = StandIn(rank, messages, nested)
        assert errors.first_error(comm, messages[rank]) == (1, 'rank 1 failed')
        assert comm.calls == ['allgather']
    comm = StandIn(2, [None] * 3)
    assert errors.first_error(comm, None) == (None, None)


def test_agreed_error_is_the_message():
    assert errors.agreed_error(StandIn(0, [None, 'x']), None) == 'x'
    assert errors.agreed_error(None, None) is None


@pytest.mark.parametrize('rank', [0, 1])
def test_exit_on_every_rank(rank):
    comm = StandIn(rank, [None, None])
    out = io.StringIO()
    with pytest.raises(SystemExit) as e:
        errors.exit_on_every_rank('p.py', 'no data', comm, stream=out)
    assert e.value.code == errors.EXIT_STATUS == 2
    assert comm.calls == ['Barrier']
    assert out.getvalue() == ('p.py: error: no data\n' if rank == 0 else '')


def test_exit_on_every_rank_one_process(capsys):
    with pytest.raises(SystemExit):
        errors.exit_on_every_rank('p.py', 'bad', label='error (rank 3)')
    assert capsys.readouterr().err == 'p.py: error (rank 3): bad\n'
