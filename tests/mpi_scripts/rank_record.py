"""Each rank's record for the test that launched it: ``OUT/rank<r>.json``.

A script takes ``--out OUT`` (anywhere among its arguments; without it,
nothing is written and the script only prints its summary line for a
person). The test reads every rank's file
(``tests/mpi_helpers.py``, :func:`run_mpi_records`) and asserts on the
checks and numbers each rank recorded, not on their shared stdout.
"""
import json
import os

import numpy


def split_out(argv):
    """``(argv without '--out OUT', OUT or None)``."""
    argv = list(argv)
    if '--out' not in argv:
        return argv, None
    i = argv.index('--out')
    out = argv[i + 1]
    return argv[:i] + argv[i + 2:], out


def plain(value):
    """``value`` with NumPy scalars and arrays made JSON's own types."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (numpy.ndarray, numpy.generic)):
        return value.tolist()
    return value


def write(out, comm, **record):
    """Writes ``record`` with this rank's ``rank`` and ``size`` to
    ``OUT/rank<r>.json`` (whole or not at all: a partly written file is
    never read); nothing when ``out`` is None."""
    if out is None:
        return
    record = plain(dict(record, rank=comm.rank, size=comm.size))
    path = os.path.join(out, 'rank{}.json'.format(comm.rank))
    with open(path + '.tmp', 'w') as f:
        json.dump(record, f, indent=1, sort_keys=True)
    os.replace(path + '.tmp', path)
