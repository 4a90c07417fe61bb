"""Batch reductions at batch 32768 on the CPU, against float64.

Chainer's BatchNormalization (patch 5 in ``chainerkfac/_compat.py``: only after
``chainerkfac.use_float64_bn_statistics()``; Chainer's own float32 sums after a
plain ``import chainerkfac``) and every
reduction our Fisher blocks make over the N (x T) rows of a batch: the forward
mean and variance, the backward pass's sums, ``input_second_moment``,
``output_second_moment`` and BN's ``per_example_gradients`` with the three BN
Fisher shapes. The arrays are small in every dimension but the batch, and the
convolution outputs are Chainer's own (channels rolled to axis 1, not
C-contiguous: the layout whose float32 reductions lose accuracy).
"""
import json
import os
import subprocess
import sys
import textwrap
import types

import numpy
import pytest

import chainerkfac  # (before chainer)
from chainerkfac import _compat
from chainerkfac import fisher_blocks
from chainerkfac.fisher_blocks import batch_normalization as bn_block
from chainerkfac.fisher_blocks import convolution_2d
from chainerkfac.fisher_blocks.base import batch_sum

import chainer  # noqa: E402
import chainer.functions as F  # noqa: E402
import chainer.links as L  # noqa: E402
from chainer.functions.normalization import batch_normalization as bn  # noqa: E402

N = 32768
TOL = 1e-5
EPS = 2e-5
AXIS = (0, 2, 3)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def float64_bn():
    """Float64 BN statistics for the test (as the entry points ask for
    them)."""
    previous = chainerkfac.use_float64_bn_statistics()
    yield
    chainerkfac.use_float64_bn_statistics(previous)


def _rel(got, ref):
    """Largest relative error, entry by entry."""
    return float(numpy.max(numpy.abs(got - ref) / numpy.abs(ref)))


def _scaled(got, ref):
    """Largest error of a second-moment matrix relative to its entries' scale
    ``sqrt(M_ii M_jj)`` (Cauchy-Schwarz bound on ``|M_ij|``)."""
    d = numpy.sqrt(numpy.diagonal(ref, axis1=-2, axis2=-1))
    scale = d[..., :, None] * d[..., None, :]
    return float(numpy.max(numpy.abs(got - ref) / scale))


@pytest.fixture(scope='module')
def conv_output():
    """(conv function node, its input, W, b, output): a 1->3 channel 3x3
    convolution at batch 32768 on 6x6 images, channel means far from 0."""
    rs = numpy.random.RandomState(0)
    conv = L.Convolution2D(1, 3, 3, pad=1,
                           initialW=rs.randn(3, 1, 3, 3).astype(numpy.float32),
                           initial_bias=numpy.array([1.5, -2.0, 0.7],
                                                    numpy.float32))
    x = (rs.rand(N, 1, 6, 6) * 2).astype(numpy.float32)
    y = conv(x)
    assert not y.array.flags.c_contiguous  # Chainer's CPU layout
    return y.creator, x, conv.W.array, conv.b.array, y.array


def _bn_reference(x64, gy64, gamma64):
    mean = x64.mean(AXIS)
    var = x64.var(AXIS)
    expand = (None, slice(None), None, None)
    x_hat = (x64 - mean[expand]) / numpy.sqrt(var + EPS)[expand]
    gbeta = gy64.sum(AXIS)
    ggamma = (gy64 * x_hat).sum(AXIS)
    m = x64.size // x64.shape[1]
    gx = (gamma64 / numpy.sqrt(var + EPS))[expand] * (
        gy64 - (x_hat * ggamma[expand] + gbeta[expand]) / m)
    return mean, var, x_hat, gbeta, ggamma, gx


def _gy(shape, seed=1, rolled=True):
    """A gradient with channel means far from 0; ``rolled``: in the layout of
    the convolution's output (channels last in memory), else C-contiguous (as
    it reaches BN in ``DemoCNN``, where NumPy's float32 sums are off by ~5e-6
    at this batch; by ~1e-4 in the rolled layout)."""
    n, c, h, w = shape
    rs = numpy.random.RandomState(seed)
    offset = numpy.array([0.3, -0.5, 0.2])
    gy = (rs.randn(n, h, w, c) + offset).astype(numpy.float32)
    gy = gy.transpose(0, 3, 1, 2)
    return gy if rolled else numpy.ascontiguousarray(gy)


# What `import chainerkfac` (and the modules the entry points import) leaves:
# Chainer's own methods, and a BN whose batch mean is Chainer's float32 one.
PLAIN_IMPORT = textwrap.dedent('''
    import json
    import numpy
    import chainerkfac, chainerkfac.training, chainerkfac.datasets
    from chainerkfac.training import example_support, allocator
    import chainer.links as L
    from chainer.functions.normalization import batch_normalization as bn
    impl = bn.GeneralBatchNormalizationImpl
    own = [not hasattr(vars(impl)[a], '__wrapped__')
           and vars(impl)[a].__module__ == bn.__name__
           for a in ('get_mean_and_var', 'get_ggamma_and_gbeta')]
    rs = numpy.random.RandomState(0)
    conv = L.Convolution2D(1, 3, 3, pad=1,
                           initialW=rs.randn(3, 1, 3, 3).astype(numpy.float32),
                           initial_bias=numpy.array([1.5, -2.0, 0.7],
                                                    numpy.float32))
    x = conv((rs.rand(%d, 1, 6, 6) * 2).astype(numpy.float32)).array
    layer = L.BatchNormalization(3, decay=0.0)
    layer(x)
    axis = (0, 2, 3)
    m = x.size // 3
    var64 = x.astype(numpy.float64).var(axis) * m / (m - 1)
    print(json.dumps(dict(
        own=own, enabled=chainerkfac._compat.float64_bn_statistics_enabled(),
        chainer_mean=bool(numpy.array_equal(
            layer.avg_mean, x.mean(axis=axis, dtype=numpy.float32))),
        var_error=float(numpy.max(numpy.abs(layer.avg_var - var64) / var64)))))
''' % N)


def test_import_leaves_chainer_batch_normalization_alone():
    """A fresh process: after ``import chainerkfac`` a plain Chainer model's BN
    statistics are Chainer's own float32 sums (off from float64 at this
    batch), from Chainer's own methods."""
    proc = subprocess.run([sys.executable, '-c', PLAIN_IMPORT], cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT),
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = json.loads(proc.stdout.splitlines()[-1])
    assert got['own'] == [True, True] and not got['enabled']
    assert got['chainer_mean']
    assert got['var_error'] > 10 * TOL


def _bn_statistics(x):
    """(running mean, running variance) of a fresh BN link after one training
    forward pass over `x` (decay 0: the batch's own statistics)."""
    layer = L.BatchNormalization(x.shape[1], decay=0.0)
    layer(x)
    return layer.avg_mean, layer.avg_var


def test_use_float64_bn_statistics_switches_and_restores(conv_output):
    x = conv_output[-1]
    m = x.size // x.shape[1]
    chainer_mean = x.mean(axis=AXIS, dtype=numpy.float32)
    var64 = x.astype(numpy.float64).var(AXIS) * m / (m - 1)
    impl = bn.GeneralBatchNormalizationImpl
    own = {a: vars(impl)[a] for a in _compat._BN_METHODS}
    assert not _compat.float64_bn_statistics_enabled()
    mean, var = _bn_statistics(x)
    assert (numpy.array_equal(mean, chainer_mean)
            and _rel(var, var64) > 10 * TOL)

    assert chainerkfac.use_float64_bn_statistics() is False
    assert _compat.float64_bn_statistics_enabled()
    mean, var = _bn_statistics(x)
    assert _rel(mean, x.astype(numpy.float64).mean(AXIS)) < TOL
    assert _rel(var, var64) < TOL
    assert chainerkfac.use_float64_bn_statistics() is True   # idempotent
    assert all(vars(impl)[a].__wrapped__ is own[a] for a in own)

    assert chainerkfac.use_float64_bn_statistics(False) is True
    assert {a: vars(impl)[a] for a in own} == own   # Chainer's own objects
    mean, var = _bn_statistics(x)
    assert (numpy.array_equal(mean, chainer_mean)
            and _rel(var, var64) > 10 * TOL)
    assert chainerkfac.use_float64_bn_statistics(False) is False


def test_patch_idempotent(float64_bn):
    impl = bn.GeneralBatchNormalizationImpl
    for attr in ('get_mean_and_var', 'get_ggamma_and_gbeta'):
        assert getattr(getattr(impl, attr), _compat._PATCHED)
        assert getattr(impl, attr).__wrapped__ is not None
    assert _compat.patch_batch_normalization() == []
    assert _compat.patch_batch_normalization(bn) == []


def test_unpatched_float32_is_off_at_this_batch(conv_output, float64_bn):
    """The data exercises the failure the patch removes."""
    x = conv_output[-1]
    x64 = x.astype(numpy.float64)
    original = bn.GeneralBatchNormalizationImpl.get_mean_and_var.__wrapped__
    mean, var = original(None, AXIS, None, x, numpy, numpy.float32)
    assert max(_rel(mean, x64.mean(AXIS)), _rel(var, x64.var(AXIS))) > 10 * TOL


@pytest.mark.parametrize('rolled', [True, False])
def test_batch_normalization_forward_and_backward(conv_output, rolled,
                                                  float64_bn):
    x = conv_output[-1]
    c = x.shape[1]
    rs = numpy.random.RandomState(2)
    gamma = (1 + rs.rand(c)).astype(numpy.float32)
    beta = rs.randn(c).astype(numpy.float32)
    running_mean = numpy.zeros(c, numpy.float32)
    running_var = numpy.zeros(c, numpy.float32)
    xv, gv, bv = (chainer.Variable(a) for a in (x, gamma, beta))
    # decay 0: the running statistics become the batch's own
    y = F.batch_normalization(xv, gv, bv, eps=EPS, running_mean=running_mean,
                              running_var=running_var, decay=0.0)
    gy = _gy(x.shape, rolled=rolled)
    y.grad = gy
    y.backward()

    mean, var, x_hat, _, _, gx = _bn_reference(
        x.astype(numpy.float64), gy.astype(numpy.float64),
        gamma.astype(numpy.float64))
    m = x.size // c
    assert _rel(running_mean, mean) < TOL
    assert _rel(running_var, var * m / (m - 1)) < TOL
    y64 = gamma[None, :, None, None] * x_hat + beta[None, :, None, None]
    assert (numpy.max(numpy.abs(y.array - y64))
            < TOL * numpy.max(numpy.abs(y64)))
    assert numpy.max(numpy.abs(xv.grad - gx)) < TOL * numpy.max(numpy.abs(gx))

    # The backward sums, against float64 sums of the normalised input the
    # backward pass itself uses (Chainer's, from its float32 mean and 1/std).
    # Not against x_hat in float64: ggamma's own sensitivity to the float32
    # rounding of the mean is -gbeta * d(mean) * inv_std, which is 1e-4
    # relative here, and no reduction can remove it.
    node = y.creator
    expand = (None, slice(None), None, None)
    x_hat32 = (x - node.mean[expand]) * node.inv_std[expand]
    gy64 = gy.astype(numpy.float64)
    gbeta = gy64.sum(AXIS)
    ggamma = (gy64 * x_hat32).sum(AXIS)
    assert _rel(bv.grad, gbeta) < TOL
    assert _rel(gv.grad, ggamma) < TOL
    original = \
        bn.GeneralBatchNormalizationImpl.get_ggamma_and_gbeta.__wrapped__
    gbeta32, ggamma32 = original(None, AXIS, gamma, gy, x_hat32, numpy)
    if rolled:  # unpatched, the sums are off
        assert max(_rel(gbeta32, gbeta), _rel(ggamma32, ggamma)) > TOL


def test_batch_sum_accumulates_in_float64():
    x = (numpy.random.RandomState(3).rand(N, 16) + 0.5).astype(numpy.float32)
    ref = x.astype(numpy.float64).sum(0)
    got = batch_sum(x, 0)
    assert got.dtype == numpy.float32 and _rel(got, ref) < 1e-6
    assert batch_sum(x, 0, keepdims=True).shape == (1, 16)


def test_convolution_block_statistics(conv_output):
    function, x, w, b, y = conv_output
    block = fisher_blocks.Convolution2DBlock('/conv', L.Convolution2D(1, 3, 3))
    block.forward(function, (x, w, b))
    gy = _gy(y.shape) / N  # dL/dy of a batch-mean loss
    block.backward(function, (x, w, b), gy, 1.0)
    stats = block.take_statistics()

    p64 = convolution_2d.patches_matrix(x, 3, 3, function).astype(
        numpy.float64)
    d = p64.shape[0]
    a64 = numpy.empty((d + 1, d + 1))
    a64[:d, :d] = p64 @ p64.T
    a64[:d, d] = a64[d, :d] = p64.sum(1)
    a64[d, d] = p64.shape[1]
    a64 /= N
    g = gy.astype(numpy.float64).transpose(1, 0, 2, 3).reshape(3, -1) * N
    g64 = g @ g.T / g.shape[1]
    assert _scaled(stats['A'], a64) < TOL
    assert _scaled(stats['G'], g64) < TOL


def test_linear_block_statistics():
    rs = numpy.random.RandomState(4)
    x = (rs.rand(N, 5) + numpy.arange(5)).astype(numpy.float32)
    gy = ((rs.randn(N, 3) + 0.5) / N).astype(numpy.float32)
    block = fisher_blocks.LinearBlock('/fc', L.Linear(5, 3))
    block.forward(None, (x,))
    block.backward(None, (x,), gy, 1.0)
    stats = block.take_statistics()
    x64 = numpy.concatenate([x.astype(numpy.float64), numpy.ones((N, 1))], 1)
    g = gy.astype(numpy.float64) * N
    assert _scaled(stats['A'], x64.T @ x64 / N) < TOL
    assert _scaled(stats['G'], g.T @ g / N) < TOL


@pytest.mark.parametrize('mode', ['full', 'unit', 'diag'])
def test_batch_normalization_block_statistics(conv_output, mode):
    x = conv_output[-1]
    c = x.shape[1]
    gy = _gy(x.shape) / N
    _, _, x_hat, _, _, _ = _bn_reference(
        x.astype(numpy.float64), gy.astype(numpy.float64), numpy.ones(c))
    g_gamma64 = (gy * x_hat).sum((2, 3)) * N
    g_beta64 = gy.astype(numpy.float64).sum((2, 3)) * N

    g_gamma, g_beta = bn_block.per_example_gradients(x, gy, AXIS, EPS, 1.0)
    scale = numpy.abs(g_gamma64).max(0)  # per channel
    assert numpy.max(numpy.abs(g_gamma - g_gamma64).max(0) / scale) < TOL
    scale = numpy.abs(g_beta64).max(0)
    assert numpy.max(numpy.abs(g_beta - g_beta64).max(0) / scale) < TOL

    block = fisher_blocks.BatchNormalizationBlock(
        '/bn', L.BatchNormalization(c), mode=mode)
    function = types.SimpleNamespace(axis=AXIS, eps=EPS)
    block.forward(function, (x,))
    block.backward(function, (x,), gy, 1.0)
    got = block.take_statistics()['F']
    f = numpy.concatenate([g_gamma64, g_beta64], axis=1)
    full = f.T @ f / N
    if mode == 'full':
        assert _scaled(got, full) < TOL
    elif mode == 'unit':
        unit = numpy.empty((c, 2, 2))
        for i in range(c):
            unit[i] = full[numpy.ix_([i, c + i], [i, c + i])]
        assert _scaled(got, unit) < TOL
    else:
        assert _rel(got, numpy.diagonal(full)) < TOL


def _function_source(path, name):
    with open(os.path.join(ROOT, path)) as f:
        source = f.read()
    start = source.index('\ndef {}('.format(name))
    ends = [i for i in (source.find('\ndef ', start + 1),
                        source.find('\nclass ', start + 1)) if i > 0]
    return source[start:min(ends) if ends else None]


@pytest.mark.parametrize('path, function, call', [
    ('train_imagenet.py', 'main', 'chainerkfac.use_float64_bn_statistics()'),
    ('examples/train_fashion_mnist.py', 'main',
     'chainerkfac.use_float64_bn_statistics()'),
    ('chainerkfac/training/example_support.py', 'setup_processes',
     'chainerkfac.use_float64_bn_statistics()'),
    ('examples/mnist/train.py', 'main', 'support.setup_processes('),
    ('examples/cifar10/train.py', 'main', 'support.setup_processes('),
    ('benchmarks/step_time.py', 'main',
     'chainerkfac.use_float64_bn_statistics()'),
    ('benchmarks/stale_accuracy.py', 'main',
     'chainerkfac.use_float64_bn_statistics()'),
    ('benchmarks/scaling.py', 'worker',
     'chainerkfac.use_float64_bn_statistics()'),
])
def test_entry_points_ask_for_float64_bn_statistics(path, function, call):
    """What import used to do for every model, the entry points that train
    on the CPU now ask for (the mnist/cifar10 examples through
    example_support.setup_processes)."""
    assert call in _function_source(path, function)
