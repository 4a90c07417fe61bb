"""Launching test scripts under mpiexec from pytest, with a timeout."""
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
MPIEXEC = os.path.join(os.path.dirname(sys.executable), 'mpiexec')


def run_mpi(n, script, *args, timeout=120):
    """Runs ``mpiexec -n N python tests/mpi_scripts/SCRIPT ARGS``.

    Returns the CompletedProcess (stdout and stderr merged). A run that
    outlives ``timeout`` seconds fails the test (a hung rank cannot hang CI).
    """
    if not os.path.exists(MPIEXEC):
        pytest.fail('mpiexec not found next to {}; run scripts/bootstrap.sh'
                    .format(sys.executable))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(HERE), HERE, os.environ.get('PYTHONPATH', '')]),
        OMP_NUM_THREADS='1', OPENBLAS_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    cmd = [MPIEXEC, '-n', str(n), sys.executable,
           os.path.join(HERE, 'mpi_scripts', script)] + [str(a) for a in args]
    try:
        return subprocess.run(cmd, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, env=env,
                              timeout=timeout, universal_newlines=True)
    except subprocess.TimeoutExpired as e:
        pytest.fail('{} timed out after {} s; output:\n{}'.format(
            ' '.join(cmd), timeout, e.output))
