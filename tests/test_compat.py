"""chainerkfac._compat: Chainer 7.8.1 on NumPy 2 (and a no-op on NumPy 1).

Run in both environments: the project's .venv (NumPy 1.26) and
`bash scripts/numpy2_env.sh tests/test_compat.py` (NumPy 2).
"""
import copy
import os
import subprocess
import sys
import textwrap

import numpy
import pytest

import chainerkfac  # noqa: F401  (applies the patch, before chainer)
from chainerkfac import _compat

import chainer  # noqa: E402
import chainer.functions as F  # noqa: E402
import chainer.links as L  # noqa: E402

NUMPY2 = int(numpy.__version__.split('.')[0]) >= 2
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPAT_PY = os.path.join(ROOT, 'chainerkfac', '_compat.py')


def _python(code):
    """Run code in a fresh interpreter (nothing imported yet); return stdout."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
    proc = subprocess.run([sys.executable, '-c', textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _sized(prefix, bits):
    return [getattr(numpy, '%s%d' % (prefix, b)) for b in bits]


# --- (a) what is patched ----------------------------------------------------------

@pytest.mark.skipif(not NUMPY2, reason='NumPy 2 only')
def test_sctypes_restored_on_numpy2():
    st = numpy.sctypes
    assert set(st) == {'int', 'uint', 'float', 'complex', 'others'}
    assert st['int'] == _sized('int', (8, 16, 32, 64))
    assert st['uint'] == _sized('uint', (8, 16, 32, 64))
    floats = _sized('float', (16, 32, 64))
    complexes = _sized('complex', (64, 128))
    if numpy.dtype(numpy.longdouble).itemsize > 8:  # x86-64 Linux: float128
        floats.append(numpy.longdouble)
        complexes.append(numpy.clongdouble)
    assert st['float'] == floats
    assert st['complex'] == complexes
    assert st['others'] == [bool, object, bytes, str, numpy.void]
    # What chainer/functions/array/as_strided.py builds from it.
    assert {t().itemsize: t for t in st['int']} == {
        1: numpy.int8, 2: numpy.int16, 4: numpy.int32, 8: numpy.int64}
    assert numpy.dtype(numpy.float32) in st['float']
    assert numpy.dtype(numpy.int32) not in st['float']


@pytest.mark.skipif(NUMPY2, reason='NumPy 1 only')
def test_noop_on_numpy1():
    import numpy.core.numerictypes as nt
    assert numpy.sctypes is nt.sctypes  # NumPy's own object, not a copy
    before = copy.deepcopy(numpy.sctypes)
    assert _compat.patch_numpy_for_chainer() == []
    assert numpy.sctypes is nt.sctypes
    assert numpy.sctypes == before


def test_import_chainerkfac_then_chainer_in_fresh_interpreter():
    out = _python('''
        import copy, sys, numpy
        np1 = numpy.__version__.startswith('1.')
        if np1:
            orig, content = numpy.sctypes, copy.deepcopy(numpy.sctypes)
        import chainerkfac
        import chainer, chainer.functions, chainer.links
        if np1:
            assert numpy.sctypes is orig and numpy.sctypes == content
        else:
            assert 'sctypes' in vars(numpy)
        print('OK', chainer.__version__)
    ''')
    assert out.split() == ['OK', '7.8.1']


def test_patch_is_idempotent():
    sctypes = getattr(numpy, 'sctypes', None)
    assert _compat.patch_numpy_for_chainer() == []
    assert _compat.patch_numpy_for_chainer() == []
    assert getattr(numpy, 'sctypes', None) is sctypes


@pytest.mark.skipif(not NUMPY2, reason='NumPy 2 only')
def test_numpy_distutils_stub_when_numpy_ships_none():
    # Python >= 3.12: NumPy has no numpy.distutils, which Chainer's
    # _environment_check.py imports. Simulate that here by hiding it.
    out = _python('''
        import sys, importlib.abc
        class Hide(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == 'numpy.distutils' or name.startswith('numpy.distutils.'):
                    raise ModuleNotFoundError(name)
        sys.meta_path.insert(0, Hide())
        import chainerkfac, chainer
        info = sys.modules['numpy.distutils.system_info']
        assert not hasattr(info, '__file__') and info.get_info('blas_opt') == {}
        print('OK')
    ''')
    assert out.split() == ['OK']


def test_real_numpy_distutils_left_alone():
    if not os.path.isdir(os.path.join(os.path.dirname(numpy.__file__), 'distutils')):
        pytest.skip('this NumPy ships no numpy.distutils (Python >= 3.12)')
    out = _python('''
        import sys, chainerkfac, chainer
        print(sys.modules['numpy.distutils.system_info'].__file__)
    ''')
    assert out.strip().endswith(os.path.join('numpy', 'distutils', 'system_info.py'))


def test_missing_pkg_resources_gives_clear_error():
    # Load _compat.py by path so that chainerkfac/__init__.py cannot mask the error.
    out = _python('''
        import sys, importlib.util
        sys.modules['pkg_resources'] = None  # `import pkg_resources` now fails
        spec = importlib.util.spec_from_file_location('compat_under_test', %r)
        try:
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
        except ImportError as e:
            print('ERR', e)
    ''' % COMPAT_PY)
    assert out.startswith('ERR') and "setuptools<82" in out


@pytest.mark.skipif(not NUMPY2, reason='the check runs on NumPy 2 only')
def test_unsupported_chainer_version_refused(monkeypatch):
    import importlib.metadata
    monkeypatch.setattr(importlib.metadata, 'version', lambda name: '6.7.0')
    with pytest.raises(ImportError, match='chainer==7.8.1'):
        _compat._check_chainer_version()
    monkeypatch.setattr(importlib.metadata, 'version', lambda name: '7.8.1')
    _compat._check_chainer_version()


# --- (b) Chainer works ---------------------------------------------------------------

class _Net(chainer.Chain):
    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.conv = L.Convolution2D(3, 4, 3, pad=1)
            self.bn = L.BatchNormalization(4)
            self.fc = L.Linear(4 * 5 * 5, 3)

    def forward(self, x):
        return self.fc(F.relu(self.bn(self.conv(x))))


def _data(rng):
    x = rng.uniform(-1, 1, (6, 3, 5, 5)).astype(numpy.float32)
    t = numpy.array([0, 1, 2, 0, 1, 2], numpy.int32)
    return x, t


def test_conv_bn_linear_momentum_sgd(rng):
    numpy.random.seed(0)
    model = L.Classifier(_Net())
    x, t = _data(rng)
    lr, momentum = 0.05, 0.9
    opt = chainer.optimizers.MomentumSGD(lr=lr, momentum=momentum)
    opt.setup(model)
    velocity = {}
    losses = []
    for step in range(5):
        before = {n: p.array.copy() for n, p in model.namedparams()}
        model.cleargrads()
        loss = model(x, t)
        loss.backward()
        grads = {n: p.grad.copy() for n, p in model.namedparams()}
        opt.update()
        losses.append(float(loss.array))
        assert loss.dtype == numpy.float32
        for n, p in model.namedparams():
            assert p.array.dtype == numpy.float32 and grads[n].dtype == numpy.float32
            assert numpy.isfinite(grads[n]).all()
            v = momentum * velocity.get(n, 0) - lr * grads[n]
            velocity[n] = v
            numpy.testing.assert_allclose(p.array, before[n] + v, rtol=1e-5, atol=1e-6)
    assert losses[-1] < losses[0]
    bn = model.predictor.bn
    assert bn.avg_mean.dtype == numpy.float32 and numpy.isfinite(bn.avg_var).all()
    with chainer.using_config('train', False):
        y = model.predictor(x)
    assert y.shape == (6, 3) and y.dtype == numpy.float32


def test_batch_normalization_statistics(rng):
    x = rng.uniform(-1, 1, (8, 3, 4, 4)).astype(numpy.float32)
    bn = L.BatchNormalization(3, decay=0.9)
    y = bn(x)
    mean = x.mean(axis=(0, 2, 3))
    var = x.var(axis=(0, 2, 3))
    m = x.size // 3
    numpy.testing.assert_allclose(bn.avg_mean, 0.1 * mean, rtol=1e-5, atol=1e-7)
    numpy.testing.assert_allclose(bn.avg_var, 0.9 + 0.1 * var * m / (m - 1), rtol=1e-5)
    expect = (x - mean[:, None, None]) / numpy.sqrt(var[:, None, None] + bn.eps)
    numpy.testing.assert_allclose(y.array, expect, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('dtype', [numpy.float16, numpy.float32, numpy.float64])
def test_as_strided_forward_backward(dtype):
    x = chainer.Variable(numpy.arange(10).astype(dtype))
    y = F.as_strided(x, (4, 4), (1, 1))  # overlapping windows: the backward path
    numpy.testing.assert_array_equal(y.array, numpy.arange(4)[:, None] + numpy.arange(4))
    F.sum(y).backward()
    counts = numpy.bincount((numpy.arange(4)[:, None] + numpy.arange(4)).ravel(), minlength=10)
    assert x.grad.dtype == dtype
    numpy.testing.assert_array_equal(x.grad, counts)


def test_as_strided_gradient_check(rng):
    from chainer import gradient_check
    x = rng.randn(12)
    gy = rng.randn(3, 4)
    gradient_check.check_backward(lambda a: F.as_strided(a, (3, 4), (2, 1), 1), x, gy,
                                  dtype=numpy.float64)


def test_as_strided_grad_rejects_non_float():
    from chainer.functions.array import as_strided as mod
    geometry = mod.TensorGeometry(numpy.zeros(4, numpy.float32))
    grad = mod.AsStridedGrad(geometry, (2, 2), (1, 1), 0)
    with pytest.raises(TypeError, match='Only float'):
        grad.forward((numpy.zeros((2, 2), numpy.int32),))


def test_im2col_and_convolution(rng):
    from chainer.utils import conv
    x = rng.uniform(-1, 1, (2, 3, 5, 5)).astype(numpy.float32)
    w = rng.uniform(-1, 1, (4, 3, 3, 3)).astype(numpy.float32)
    col = conv.im2col_cpu(x, 3, 3, 1, 1, 1, 1)
    numpy.testing.assert_array_equal(F.im2col(x, 3, 1, 1).array, col.reshape(2, 27, 5, 5))
    expect = numpy.tensordot(col, w, ((1, 2, 3), (1, 2, 3))).transpose(0, 3, 1, 2)
    numpy.testing.assert_allclose(F.convolution_2d(x, w, pad=1).array, expect,
                                  rtol=1e-5, atol=1e-5)


def test_npz_round_trip_and_trainer(rng, tmp_path):
    from chainer import training
    from chainer.training import extensions
    numpy.random.seed(1)
    model = L.Classifier(_Net())
    x, t = _data(rng)
    opt = chainer.optimizers.MomentumSGD(0.01)
    opt.setup(model)
    it = chainer.iterators.SerialIterator(chainer.datasets.TupleDataset(x, t), 3)
    trainer = training.Trainer(training.updaters.StandardUpdater(it, opt),
                               (2, 'iteration'), out=str(tmp_path))
    trainer.extend(extensions.LogReport(trigger=(1, 'iteration')))
    trainer.run()
    log = trainer.get_extension('LogReport').log
    assert [e['iteration'] for e in log] == [1, 2]
    assert all(numpy.isfinite(e['main/loss']) for e in log)
    path = str(tmp_path / 'model.npz')
    chainer.serializers.save_npz(path, model)
    other = L.Classifier(_Net())
    other(x, t)
    chainer.serializers.load_npz(path, other)
    for (n, p), (n2, q) in zip(sorted(model.namedparams()), sorted(other.namedparams())):
        assert n == n2
        numpy.testing.assert_array_equal(p.array, q.array)
    numpy.testing.assert_array_equal(model.predictor.bn.avg_var, other.predictor.bn.avg_var)
