"""Training through the emulated CUDA kernels equals the NumPy references.

The kernels' own tests compare each op with its reference; here the
optimizer's and the communicator's *real* argument lists go through the
emulated builds (g++, the very .cu sources a GPU compiles): one process
inside ``chainerkfac.cuda.emulate()``, and 2 or 3 ranks under mpiexec with
``CHAINERKFAC_EMULATE_KERNELS=1``. Results must be bit for bit the same.
"""
import re

import chainer
import chainer.functions as F
import chainer.links as L
import numpy
import pytest

from chainerkfac import cuda
from chainerkfac.optimizers import KFAC
from mpi_helpers import run_mpi_records


def train(bn_fisher, dtype, steps=4):
    numpy.random.seed(3)
    model = chainer.Sequential(
        L.Convolution2D(1, 3, 3, pad=1), L.BatchNormalization(3), F.relu,
        L.Linear(None, 4))
    model.to_device('@numpy')
    for p in model.params():
        if p.array is not None:
            p.array = p.array.astype(dtype)
    opt = KFAC(lr=0.1, damping=1e-3, bn_fisher=bn_fisher, stale_warmup=2,
               cov_ema_decay=0.5)
    opt.setup(model)
    rng = numpy.random.RandomState(5)
    for _ in range(steps):
        x = rng.randn(6, 1, 5, 5).astype(dtype)
        t = rng.randint(0, 4, 6).astype(numpy.int32)
        opt.update(lambda x, t: F.softmax_cross_entropy(model(x), t), x, t)
    return [p.array.copy() for p in model.params()]


@pytest.mark.parametrize('bn_fisher', ['full', 'unit', 'diag'])
def test_single_process_training_is_bit_identical(bn_fisher):
    reference = train(bn_fisher, numpy.float32)
    with cuda.emulate():
        emulated = train(bn_fisher, numpy.float32)
    for a, b in zip(reference, emulated):
        numpy.testing.assert_array_equal(a, b)


def digests(n, monkeypatch, tmp_path, emulate, *args):
    if emulate:
        monkeypatch.setenv('CHAINERKFAC_EMULATE_KERNELS', '1')
    else:
        monkeypatch.delenv('CHAINERKFAC_EMULATE_KERNELS', raising=False)
    records = run_mpi_records(n, 'parameter_digest.py',
                              tmp_path / ('emulated' if emulate else 'numpy'),
                              *args, timeout=180)
    found = [r['digest'] for r in records]
    assert all(re.fullmatch('[0-9a-f]{64}', d) for d in found), found
    assert all(r['steps'] == 5 for r in records), records
    assert len(set(found)) == 1, found  # ranks agree
    return found[0]


@pytest.mark.parametrize('n, comm_dtype, overlap, bn_fisher', [
    (2, 'float32', '0', 'full'),
    (2, 'float16', '1', 'unit'),   # scaled fp16 packing, the overlap path
    (3, 'float16', '0', 'diag'),
])
def test_distributed_training_is_bit_identical(monkeypatch, tmp_path, n,
                                               comm_dtype, overlap,
                                               bn_fisher):
    args = (comm_dtype, overlap, bn_fisher)
    assert (digests(n, monkeypatch, tmp_path, True, *args)
            == digests(n, monkeypatch, tmp_path, False, *args))
