"""The package without mpi4py (issue 19): import, KFAC, one-line errors."""
import inspect
import os
import subprocess
import sys

import pytest

import chainerkfac
from chainerkfac import _optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECK = os.path.join(ROOT, 'scripts', 'install_check.py')


def test_without_mpi4py_import_kfac_and_one_line_errors():
    """``install_check.py without-mpi`` with mpi4py hidden: import, a KFAC
    step, the one-line errors (the leg's first check, here in .venv)."""
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, CHECK, 'without-mpi', '--hide-mpi4py'],
                          cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'OK without mpi4py' in proc.stdout
    assert proc.stdout.count(_optional.MPI_EXTRA) == 3


def test_a_broken_mpi4py_is_not_taken_for_a_missing_one():
    missing = ModuleNotFoundError("No module named 'mpi4py'", name='mpi4py')
    assert _optional.is_mpi4py_missing(missing)
    _optional.reraise_unless_mpi4py_missing(missing)   # swallowed
    for other in (ImportError('libmpi.so.12: cannot open shared object file',
                              name='mpi4py.MPI'),
                  ModuleNotFoundError("No module named 'cupy'", name='cupy')):
        assert not _optional.is_mpi4py_missing(other)
        with pytest.raises(ImportError) as e:
            _optional.reraise_unless_mpi4py_missing(other)
        assert e.value is other


def test_the_checked_entry_points_keep_their_signatures():
    assert list(inspect.signature(chainerkfac.create_communicator).parameters) \
        == ['name', 'mpi_comm', 'abort_on_exception', 'options']
    assert 'DistributedKFAC' in chainerkfac.create_communicator.__doc__
    init = chainerkfac.DistributedKFAC.__init__
    assert list(inspect.signature(init).parameters)[:3] == [
        'self', 'communicator', 'comm_dtype']
