#!/usr/bin/env python
"""Checks an installed chainerkfac, as a new user would use it (issue 19).

    python install_check.py without-mpi [--hide-mpi4py]
    mpiexec -n 2 python install_check.py with-mpi

``without-mpi`` (one process, mpi4py absent: a venv with only the package's
required dependencies, or ``--hide-mpi4py``): ``import chainerkfac`` works
and leaves Chainer's BatchNormalization alone (no float64 BN statistics until
``use_float64_bn_statistics()``); the package's CUDA sources were installed;
single-process ``KFAC`` takes steps on a tiny model (Linear, BN, Linear);
``create_communicator('mpi')``, ``DistributedKFAC(...)`` and
``chainerkfac.communicators.MpiCommunicator`` stop with one line naming
``pip install 'chainerkfac[mpi]'``.

``with-mpi`` (under ``mpiexec -n 2``): ``DistributedKFAC`` over
``create_communicator('mpi')`` takes steps on the tiny model, each rank on its
own batches, and every rank ends with parameters bit-identical to rank 0's.

Run by ``scripts/wheel_check.sh`` (the clean-venv leg of ``scripts/test.sh``)
with the venv's own interpreter and without PYTHONPATH, so that the package
comes from the installed wheel, and by ``tests/test_install.py``. Exits 0 and
prints ``OK ...`` (rank 0) when every check passed; anything else is a failure.
"""
import glob
import hashlib
import os
import sys

MPI_LINE = "pip install 'chainerkfac[mpi]'"
STEPS = 4


def tiny_model():
    import chainer
    import chainer.functions as F
    import chainer.links as L

    class Net(chainer.Chain):
        def __init__(self):
            super(Net, self).__init__()
            with self.init_scope():
                self.l1 = L.Linear(5, 8)
                self.bn = L.BatchNormalization(8)
                self.l2 = L.Linear(8, 3)

        def forward(self, x, t):
            h = F.relu(self.bn(self.l1(x)))
            return F.softmax_cross_entropy(self.l2(h), t)

    return Net()


def batches(seed, n=16):
    import numpy
    rng = numpy.random.RandomState(seed)
    for _ in range(STEPS):
        yield (rng.randn(n, 5).astype(numpy.float32),
               rng.randint(0, 3, n).astype(numpy.int32))


def parameters(model):
    return {name: p.array.copy() for name, p in sorted(model.namedparams())}


def digest(model):
    h = hashlib.sha256()
    for name, array in parameters(model).items():
        h.update(name.encode())
        h.update(array.tobytes())
    return h.hexdigest()


def one_line_error(call, what):
    """`call()` must raise chainerkfac.MissingDependency whose message is one
    line naming the extra."""
    import chainerkfac
    try:
        call()
    except chainerkfac.MissingDependency as e:
        message = str(e)
        assert '\n' not in message and MPI_LINE in message, (what, message)
        return message
    raise AssertionError('{} did not stop without mpi4py'.format(what))


def without_mpi(hide):
    if hide:
        sys.modules['mpi4py'] = None   # `import mpi4py` now fails as if absent
    try:
        import mpi4py  # NOQA: F401
    except ImportError:
        pass
    else:
        raise AssertionError('mpi4py is importable here: this check needs a '
                             'venv without it (or --hide-mpi4py)')

    import chainerkfac
    from chainerkfac import _compat
    import numpy
    print('chainerkfac {} from {}'.format(chainerkfac.__version__,
                                          os.path.dirname(chainerkfac.__file__)))
    here = os.path.dirname(chainerkfac.__file__)
    kernels = glob.glob(os.path.join(here, 'cuda', 'kernels', '*.cu'))
    assert kernels and os.path.exists(
        os.path.join(here, 'cuda', 'emulation.h')), \
        'the CUDA sources were not installed with the package'
    assert not _compat.float64_bn_statistics_enabled(), \
        'import chainerkfac switched on float64 BN statistics'

    numpy.random.seed(0)
    model = tiny_model()
    before = parameters(model)
    optimizer = chainerkfac.KFAC(lr=0.05, damping=1e-2, cov_ema_decay=0.5)
    optimizer.setup(model)
    losses = []
    for x, t in batches(0):
        optimizer.update(model, x, t)
        losses.append(float(model(x, t).array))
    after = parameters(model)
    assert all(numpy.isfinite(a).all() for a in after.values())
    assert any(not numpy.array_equal(before[k], after[k]) for k in before)
    assert optimizer.t == STEPS, optimizer.t
    print('KFAC: {} steps, losses {}'.format(
        STEPS, ' '.join('{:.4f}'.format(v) for v in losses)))

    for what, call in (
            ("create_communicator('mpi')",
             lambda: chainerkfac.create_communicator('mpi')),
            ('DistributedKFAC(...)',
             lambda: chainerkfac.DistributedKFAC(None)),
            ('chainerkfac.communicators.MpiCommunicator',
             lambda: chainerkfac.communicators.MpiCommunicator)):
        print('{}: {}'.format(what, one_line_error(call, what)))
    print('OK without mpi4py')


def with_mpi():
    import chainerkfac
    comm = chainerkfac.create_communicator('mpi')
    import numpy
    numpy.random.seed(0)   # the same initial model on every rank
    model = tiny_model()
    optimizer = chainerkfac.DistributedKFAC(comm, lr=0.05, damping=1e-2,
                                            cov_ema_decay=0.5)
    optimizer.setup(model)
    for x, t in batches(1 + comm.rank):   # each rank its own batches
        optimizer.update(model, x, t)
    digests = comm.mpi_comm.allgather(digest(model))
    assert numpy.isfinite(float(model(x, t).array))
    if comm.rank == 0:
        assert len(set(digests)) == 1, 'ranks differ: {}'.format(digests)
        assert comm.size == 2, comm.size
        print('OK with mpi4py: DistributedKFAC, {} steps on {} ranks, '
              'parameters identical ({})'.format(STEPS, comm.size,
                                                 digests[0][:12]))


def main(argv):
    if argv[:1] == ['without-mpi'] and set(argv[1:]) <= {'--hide-mpi4py'}:
        without_mpi('--hide-mpi4py' in argv)
    elif argv == ['with-mpi']:
        with_mpi()
    else:
        sys.exit(__doc__.split('\n\n')[1])


if __name__ == '__main__':
    main(sys.argv[1:])
