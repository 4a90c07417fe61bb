"""chainerkfac._compat: Chainer 7.8.1 and ChainerMN on NumPy 2, Python 3.12,
CuPy 14.

scripts/test.sh runs this file in every venv of the import matrix: .venv
(Python 3.11, NumPy 1.26), .venv-numpy2 (3.11, NumPy 2, CuPy 14 without a GPU),
.venv-py312 (3.12, NumPy 1.26: no numpy.distutils) and .venv-py312-numpy2.
"""
import copy
import os
import shutil
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
    """Run code in a fresh interpreter (nothing imported yet); return
    stdout."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep
               + os.environ.get('PYTHONPATH', ''))
    proc = subprocess.run([sys.executable, '-c', textwrap.dedent(code)],
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _sized(prefix, bits):
    return [getattr(numpy, '%s%d' % (prefix, b)) for b in bits]


# --- (a) what is patched -----------------------------------------------------

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
def test_sctypes_untouched_on_numpy1():
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


def test_numpy_distutils_stub_when_numpy_ships_none():
    # Python >= 3.12: NumPy (1.26 included) has no numpy.distutils, which
    # Chainer's _environment_check.py imports. Simulate that here by hiding it.
    out = _python('''
        import sys, importlib.abc
        class Hide(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if (name == 'numpy.distutils'
                        or name.startswith('numpy.distutils.')):
                    raise ModuleNotFoundError(name)
        sys.meta_path.insert(0, Hide())
        import chainerkfac, chainer
        info = sys.modules['numpy.distutils.system_info']
        assert not hasattr(info, '__file__')
        assert info.get_info('blas_opt') == {}
        print('OK')
    ''')
    assert out.split() == ['OK']


def test_numpy_distutils_stub_exactly_where_numpy_ships_none():
    # The real case on Python 3.12 (.venv-py312*), the real module elsewhere.
    ships = os.path.isdir(os.path.join(os.path.dirname(numpy.__file__),
                                       'distutils'))
    out = _python('''
        import sys, chainerkfac
        info = sys.modules['numpy.distutils.system_info']
        print(hasattr(info, '__file__'), callable(info.get_info))
    ''')
    assert out.split() == [str(ships), 'True']


def test_real_numpy_distutils_left_alone():
    if not os.path.isdir(os.path.join(os.path.dirname(numpy.__file__),
                                      'distutils')):
        pytest.skip('this NumPy ships no numpy.distutils (Python >= 3.12)')
    out = _python('''
        import sys, chainerkfac, chainer
        print(sys.modules['numpy.distutils.system_info'].__file__)
    ''')
    assert out.strip().endswith(os.path.join('numpy', 'distutils',
                                             'system_info.py'))


def test_missing_pkg_resources_gives_clear_error():
    # Load _compat.py by path so that chainerkfac/__init__.py cannot mask the
    # error.
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


# --- (b) Chainer works -------------------------------------------------------

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
            assert (p.array.dtype == numpy.float32
                    and grads[n].dtype == numpy.float32)
            assert numpy.isfinite(grads[n]).all()
            v = momentum * velocity.get(n, 0) - lr * grads[n]
            velocity[n] = v
            numpy.testing.assert_allclose(p.array, before[n] + v, rtol=1e-5,
                                          atol=1e-6)
    assert losses[-1] < losses[0]
    bn = model.predictor.bn
    assert (bn.avg_mean.dtype == numpy.float32
            and numpy.isfinite(bn.avg_var).all())
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
    numpy.testing.assert_allclose(bn.avg_mean, 0.1 * mean, rtol=1e-5,
                                  atol=1e-7)
    numpy.testing.assert_allclose(bn.avg_var, 0.9 + 0.1 * var * m / (m - 1),
                                  rtol=1e-5)
    expect = ((x - mean[:, None, None])
              / numpy.sqrt(var[:, None, None] + bn.eps))
    numpy.testing.assert_allclose(y.array, expect, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('dtype',
                         [numpy.float16, numpy.float32, numpy.float64])
def test_as_strided_forward_backward(dtype):
    x = chainer.Variable(numpy.arange(10).astype(dtype))
    # overlapping windows: the backward path
    y = F.as_strided(x, (4, 4), (1, 1))
    numpy.testing.assert_array_equal(
        y.array, numpy.arange(4)[:, None] + numpy.arange(4))
    F.sum(y).backward()
    counts = numpy.bincount(
        (numpy.arange(4)[:, None] + numpy.arange(4)).ravel(), minlength=10)
    assert x.grad.dtype == dtype
    numpy.testing.assert_array_equal(x.grad, counts)


def test_as_strided_gradient_check(rng):
    from chainer import gradient_check
    x = rng.randn(12)
    gy = rng.randn(3, 4)
    gradient_check.check_backward(
        lambda a: F.as_strided(a, (3, 4), (2, 1), 1), x, gy,
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
    numpy.testing.assert_array_equal(F.im2col(x, 3, 1, 1).array,
                                     col.reshape(2, 27, 5, 5))
    expect = numpy.tensordot(col, w, ((1, 2, 3), (1, 2, 3))).transpose(
        0, 3, 1, 2)
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
    it = chainer.iterators.SerialIterator(
        chainer.datasets.TupleDataset(x, t), 3)
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
    for (n, p), (n2, q) in zip(sorted(model.namedparams()),
                               sorted(other.namedparams())):
        assert n == n2
        numpy.testing.assert_array_equal(p.array, q.array)
    numpy.testing.assert_array_equal(model.predictor.bn.avg_var,
                                     other.predictor.bn.avg_var)


# --- (c) ChainerMN's _memory_utility: `half` kernels and copy=False ----------

from chainermn.communicators import _memory_utility as memory_utility  # noqa: E402

KERNELS = ['_cupy_batched_pack_params', '_cupy_batched_unpack_params']
NVCC = shutil.which('nvcc')
HALF_UNDEFINED = 'identifier "half" is undefined'


def _cupy_or_none():
    try:
        import cupy
        return cupy
    except Exception:
        return None


def _sources(kernel):
    """(unpatched, patched) (source, name) of one of ChainerMN's kernel
    builders."""
    patched = getattr(memory_utility, kernel)
    return (_compat.kernel_source(patched.__wrapped__),
            _compat.kernel_source(patched))


@pytest.mark.parametrize('kernel', KERNELS)
def test_kernel_sources_include_cuda_fp16(kernel):
    (code, name), (patched_code, patched_name) = _sources(kernel)
    assert name == patched_name == kernel[1:]
    assert 'half' in code and 'cuda_fp16.h' not in code
    assert code.lstrip().startswith('#include <cupy/carray.cuh>')
    assert patched_code == '#include <cuda_fp16.h>\n' + code


@pytest.mark.parametrize('kernel', KERNELS)
def test_patched_source_is_what_chainer_compiles(kernel, monkeypatch):
    # What ChainerMN's _batched_pack_params/_batched_unpack_params hand to
    # chainer.cuda.raw (which builds the cupy.RawKernel), recorded.
    import chainer.backends.cuda
    calls = []
    monkeypatch.setattr(chainer.backends.cuda, 'raw',
                        lambda code, name, *a, **k: calls.append((code, name)))
    getattr(memory_utility, kernel)()
    assert calls == [_sources(kernel)[1]]


def test_chainermn_patches_applied_on_import_and_idempotent():
    assert _compat.patch_chainermn_memory_utility() == []
    out = _python('''
        import chainerkfac, sys
        from chainermn.communicators import _memory_utility as m
        print(all(getattr(f, '_chainerkfac_compat_patched', False) for f in
                  (m._cupy_batched_pack_params, m._cupy_batched_unpack_params,
                   m.unpack_params)))
        print(chainerkfac._compat.patch_chainermn_memory_utility())
    ''')
    assert out.split() == ['True', '[]']


@pytest.mark.skipif(NUMPY2 or sys.version_info >= (3, 12),
                    reason='ChainerMN imports before chainerkfac only where '
                           'Chainer runs unpatched (NumPy 1, Python <= 3.11)')
def test_chainermn_imported_first_is_patched_at_chainerkfac_import():
    out = _python('''
        from chainermn.communicators import _memory_utility as m
        before = m.unpack_params
        import chainerkfac
        print(m.unpack_params is not before,
              m.unpack_params.__wrapped__ is before)
    ''')
    assert out.split() == ['True', 'True']


def _write_carray(tmp_path, label, text):
    include = tmp_path / label
    (include / 'cupy').mkdir(parents=True)
    (include / 'cupy' / 'carray.cuh').write_text('#pragma once\n' + text)
    return str(include)


def _cupy_include():
    cupy = _cupy_or_none()
    if cupy is None:
        pytest.skip('CuPy is not installed (its headers are tested in '
                    '.venv-numpy2)')
    return (os.path.join(os.path.dirname(cupy.__file__), '_core', 'include'),
            cupy)


def _carray_include(tmp_path, header):
    """(include dir, whether its carray.cuh defines half) for one header
    kind."""
    if header == 'cupy14-stand-in':  # CuPy 14: fp16 moved out of carray.cuh
        return _write_carray(tmp_path, header, ''), False
    if header == 'cupy13-stand-in':  # CuPy <= 13: carray.cuh includes it
        return (_write_carray(tmp_path, header, '#include <cuda_fp16.h>\n'),
                True)
    include, cupy = _cupy_include()
    return include, int(cupy.__version__.split('.')[0]) < 14


def _nvcc(tmp_path, source, include):
    cu = tmp_path / 'kernel.cu'
    cu.write_text(source)
    # NVRTC (what CuPy compiles with) has assert() built in; nvcc needs
    # assert.h.
    return subprocess.run(
        [NVCC, '-arch=sm_80', '-ptx', '-include', 'assert.h', '-I', include,
         str(cu), '-o', str(tmp_path / 'kernel.ptx')],
        capture_output=True, text=True, timeout=240)


@pytest.mark.skipif(NVCC is None, reason='nvcc is not on PATH')
@pytest.mark.parametrize('header', ['cupy14-stand-in', 'cupy13-stand-in',
                                    'installed-cupy'])
@pytest.mark.parametrize('kernel', KERNELS)
def test_kernel_compiles_with_nvcc(kernel, header, tmp_path):
    include, defines_half = _carray_include(tmp_path, header)
    (code, _), (patched_code, _) = _sources(kernel)
    patched = _nvcc(tmp_path, patched_code, include)
    assert patched.returncode == 0, patched.stderr
    assert (tmp_path / 'kernel.ptx').stat().st_size > 0
    unpatched = _nvcc(tmp_path, code, include)
    if defines_half:  # the patch is harmless where carray.cuh defines half
        assert unpatched.returncode == 0, unpatched.stderr
    else:  # the failure the patch removes, as NVRTC reports it under CuPy 14
        assert unpatched.returncode != 0 and HALF_UNDEFINED in unpatched.stderr


def _cuda_include_dirs():
    """Where CuPy's NVRTC compiles find the CUDA headers (cuda_fp16.h)."""
    try:  # CuPy 14: cuda-pathfinder (pip wheels, conda, CUDA_PATH, system)
        from cuda.pathfinder import find_nvidia_header_directory
        found = find_nvidia_header_directory('cudart')
        return [found] if found else []
    except ImportError:  # CuPy 13: the nvidia-cuda-runtime-cu12 wheel's
        from cupy import _environment
        from cupy.cuda import nvrtc
        return _environment._get_include_dir_from_conda_or_wheel(
            *nvrtc.getVersion())


def _nvrtc_compile(source, include):
    """Compile with CuPy's NVRTC binding as CuPy does for sm_80 (needs no
    GPU)."""
    from cupy.cuda import compiler
    options = ['-I' + include, '--gpu-architecture=sm_80',
               '--device-as-default-execution-space']
    options += ['-I' + d for d in _cuda_include_dirs()]
    prog = compiler._NVRTCProgram(source, 'kernel.cu', (), (), method='cubin')
    try:
        cubin, _ = prog.compile(tuple(options))
        return cubin, ''
    except compiler.CompileException as e:
        return None, str(e)


@pytest.mark.parametrize('kernel', KERNELS)
def test_kernel_compiles_with_cupys_nvrtc(kernel):
    include, cupy = _cupy_include()
    try:
        from cupy.cuda import nvrtc
        version = nvrtc.getVersion()
    except Exception as e:
        pytest.skip('CuPy %s finds no NVRTC (%s)' % (cupy.__version__, e))
    (code, _), (patched_code, _) = _sources(kernel)
    cubin, log = _nvrtc_compile(patched_code, include)
    assert cubin, log
    cubin, log = _nvrtc_compile(code, include)
    if int(cupy.__version__.split('.')[0]) >= 14:
        assert cubin is None and HALF_UNDEFINED in log, (version, log)
    else:
        assert cubin, log


class _Buffer(object):
    """ChainerMN's DeviceMemory for NumPy arrays: to_device copies bytes
    out."""

    def __init__(self, data):
        self.data = data

    def to_device(self, dst, size, offset=0, stream=None):
        assert size == dst.nbytes
        dst.reshape(-1).view(numpy.uint8)[...] = \
            self.data[offset:offset + size]


@pytest.mark.parametrize('transfer',
                         [numpy.float16, numpy.float32, numpy.float64])
def test_unpack_params_with_another_transfer_dtype(transfer, rng):
    dtypes = [numpy.float32, numpy.float64, numpy.float16]
    params = [chainer.Parameter(numpy.zeros((2, 3), d)) for d in dtypes]
    for p in params:
        p.grad = numpy.full_like(p.array, -7)
    sent = [rng.uniform(-2, 2, p.array.shape).astype(transfer) for p in params]
    buffer = _Buffer(numpy.concatenate([s.reshape(-1).view(numpy.uint8)
                                        for s in sent]))
    memory_utility.unpack_params(params, 'grad', buffer,
                                 numpy.dtype(transfer), False)
    for p, s in zip(params, sent):
        assert p.grad.dtype == p.array.dtype
        numpy.testing.assert_array_equal(p.grad, s.astype(p.array.dtype))
    # ChainerMN's own code: the same on NumPy 1, ValueError on NumPy 2
    # (copy=False).
    for p in params:
        p.grad[...] = -7
    unpatched = memory_utility.unpack_params.__wrapped__
    if NUMPY2:
        with pytest.raises(ValueError, match='copy'):
            unpatched(params, 'grad', buffer, numpy.dtype(transfer), False)
    else:
        unpatched(params, 'grad', buffer, numpy.dtype(transfer), False)
        for p, s in zip(params, sent):
            numpy.testing.assert_array_equal(p.grad, s.astype(p.array.dtype))


def test_copy_only_if_needed_array_module():
    xp = _compat._CopyOnlyIfNeeded(numpy)
    a = numpy.arange(4, dtype=numpy.float32)
    assert xp.array(a, copy=False) is a  # no copy needed: none made
    b = xp.array(a, copy=False, dtype=numpy.float16)
    assert b.dtype == numpy.float16 and not numpy.shares_memory(a, b)
    assert xp.array(a) is not a and xp.float32 is numpy.float32


# --- (d) the import matrix: a K-FAC step -------------------------------------

def test_kfac_step_conv_bn_linear(rng):
    import nets
    from chainerkfac.optimizers import KFAC
    model = nets.make(nets.ConvNet, use_bn=True, dtype=numpy.float32)
    x, t = nets.conv_batch(rng, n=8, dtype=numpy.float32)
    x = x[:, :, :5, :5]
    opt = KFAC(lr=0.05, momentum=0.9, damping=1e-2)
    opt.setup(model)
    before = nets.params_of(model)
    losses = []
    for _ in range(3):
        opt.update(model, x, t)
        losses.append(float(model(x, t).array))
    after = nets.params_of(model)
    assert all(numpy.isfinite(a).all() for a in after.values())
    assert all(not numpy.array_equal(before[n], after[n]) for n in before)
    assert losses[-1] < float(nets.make(nets.ConvNet, use_bn=True,
                                        dtype=numpy.float32)(x, t).array)


# --- (e) GPU-marked tests skip without a device ------------------------------

def test_gpu_skip_reason_names_what_is_missing():
    import conftest
    reason = conftest.gpu_unavailable_reason()
    cupy = _cupy_or_none()
    if cupy is None:
        assert reason.startswith('no CuPy (import cupy: ')
    elif reason is None:  # pragma: no cover (a GPU machine)
        assert cupy.is_available()
    elif int(cupy.__version__.split('.')[0]) >= 14:  # no driver: False
        assert reason == ('no CUDA device (CuPy %s imports, '
                          'cupy.is_available() is False)' % cupy.__version__)
    else:  # CuPy 13 without a driver: raises at the first call (False after)
        assert reason.startswith('no CUDA device (CuPy %s: '
                                 'cupy.is_available() raised '
                                 % cupy.__version__)


def test_chainer_cuda_backend_accepts_the_installed_cupy():
    """Where CuPy and its CUDA libraries are installed (the CI NumPy-2 leg:
    CuPy 14, no GPU), Chainer 7.8.1's CUDA backend must load: an API it
    imports that the CuPy release lacks would show here, not on a GPU."""
    pytest.importorskip('cupy')
    from chainer.backends import cuda
    error = getattr(cuda, '_resolution_error', None)
    if error is not None and 'libcublas' in str(error):
        pytest.skip('cuBLAS is not installed next to CuPy: %s' % error)
    assert cuda.available, error
    assert not cuda.cudnn_enabled or hasattr(cuda.cupy, 'cudnn')
