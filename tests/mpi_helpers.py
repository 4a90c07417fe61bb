"""Launching test scripts under mpiexec from pytest, with a timeout, and
reading what each rank of them recorded."""
import json
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


def read_rank_records(directory, n, output=''):
    """The records ``rank0.json`` ... ``rank<n-1>.json`` that the ranks of
    a script wrote to ``directory`` (``mpi_scripts/rank_record.py``), in
    rank order; each must exist, name its rank (and, when it has one, the
    world size ``n``), and no other rank may have written one. ``output``
    (the run's stdout) goes into the failure messages."""
    names = sorted(f for f in os.listdir(str(directory))
                   if f.startswith('rank') and f.endswith('.json'))
    assert names == sorted('rank{}.json'.format(r) for r in range(n)), (
        names, output)
    records = []
    for rank in range(n):
        with open(os.path.join(str(directory),
                               'rank{}.json'.format(rank))) as f:
            records.append(json.load(f))
    assert [r['rank'] for r in records] == list(range(n)), output
    assert all(r['size'] == n for r in records), output
    return records


def run_mpi_records(n, script, out, *args, timeout=120):
    """:func:`run_mpi` with ``--out OUT`` (a directory, made if missing)
    appended: the run must succeed, and every rank must have written its
    record there. Returns the records, one per rank in rank order."""
    out = str(out)
    os.makedirs(out, exist_ok=True)
    result = run_mpi(n, script, *args, '--out', out, timeout=timeout)
    assert result.returncode == 0, result.stdout
    return read_rank_records(out, n, result.stdout)
