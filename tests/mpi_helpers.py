"""Launching test scripts under mpiexec from pytest, with a timeout."""
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MPIEXEC = os.path.join(os.path.dirname(sys.executable), 'mpiexec')


def run_command(cmd, timeout, **env_extra):
    """Runs ``cmd`` (stdout and stderr merged, one BLAS thread, unbuffered,
    the repository on PYTHONPATH, plus ``env_extra``); a run that outlives
    ``timeout`` seconds fails the test instead of hanging it."""
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1',
               PYTHONPATH=ROOT)
    env.update(env_extra)
    try:
        return subprocess.run(cmd, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, env=env,
                              timeout=timeout, universal_newlines=True)
    except subprocess.TimeoutExpired as e:
        pytest.fail('{} timed out after {} s; output:\n{}'.format(
            ' '.join(cmd), timeout, e.output))


def run_python(n, script, args, timeout=240, **env_extra):
    """``python -W ignore SCRIPT ARGS``, under ``mpiexec -n N`` when ``n``."""
    cmd = ([MPIEXEC, '-n', str(n)] if n else []) + [
        sys.executable, '-W', 'ignore', script] + [str(a) for a in args]
    return run_command(cmd, timeout, **env_extra)


def run_mpi(n, script, *args, timeout=120):
    """Runs ``mpiexec -n N python tests/mpi_scripts/SCRIPT ARGS``.

    Returns the CompletedProcess (stdout and stderr merged). A run that
    outlives ``timeout`` seconds fails the test (a hung rank cannot hang CI).
    """
    if not os.path.exists(MPIEXEC):
        pytest.fail('mpiexec not found next to {}; run scripts/bootstrap.sh'
                    .format(sys.executable))
    cmd = [MPIEXEC, '-n', str(n), sys.executable,
           os.path.join(HERE, 'mpi_scripts', script)] + [str(a) for a in args]
    return run_command(cmd, timeout, OPENBLAS_NUM_THREADS='1',
                       PYTHONPATH=os.pathsep.join(
                           [ROOT, HERE, os.environ.get('PYTHONPATH', '')]))
