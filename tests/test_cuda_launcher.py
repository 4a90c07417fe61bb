"""The kernel launcher: signature parsing, argument checks (all on the CPU),
the emulated build, and the argument lists the ops hand to the GPU."""
import os
import subprocess
import sys

import numpy
import pytest

from chainerkfac import cuda
from chainerkfac.cuda import launcher
from chainerkfac.cuda import ops
from cuda_helpers import emulated  # NOQA: I100


I32, I64, F32 = numpy.int32, numpy.int64, numpy.float32


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh, private cache of emulated builds."""
    path = tmp_path / 'cache'
    monkeypatch.setenv('CHAINERKFAC_CACHE_DIR', str(path))
    return path


# --------------------------------------------------------------------------
# Parsing


EXPECTED_KERNELS = {
    'pack.cu': {'pack_f32', 'pack_f16', 'unpack_f32', 'unpack_f16'},
    'nonfinite.cu': {'flag_nonfinite_f16', 'flag_nonfinite_f32',
                     'flag_nonfinite_f64'},
    'momentum.cu': {'momentum_update_f16', 'momentum_update_f32',
                    'momentum_update_f64'},
    'unit_fisher.cu': {'unit_fisher_inverse_f32', 'unit_fisher_inverse_f64'},
}


def test_every_kernel_file_parses():
    found = {os.path.basename(f): set(launcher.Module.from_file(f).kernels)
             for f in launcher.kernel_files()}
    assert found == EXPECTED_KERNELS


def _describe(params):
    return [(p.name, p.ctype, p.pointer, p.const, p.size, p.nullable)
            for p in params]


def test_pack_signatures():
    m = launcher.module('pack')
    assert _describe(m['pack_f16'].params) == [
        ('table', 'long long', True, True, '4 * n_arrays', False),
        ('n_arrays', 'int', False, False, None, False),
        ('scales', 'float', True, True, 'n_arrays', True),
        ('buffer', '__half', True, False, 'total', False),
        ('total', 'long long', False, False, None, False)]
    assert _describe(m['unpack_f32'].params) == [
        ('buffer', 'float', True, True, 'total', False),
        ('total', 'long long', False, False, None, False),
        ('table', 'long long', True, True, '4 * n_arrays', False),
        ('n_arrays', 'int', False, False, None, False),
        ('divisors', 'float', True, True, 'n_arrays', True)]


def test_other_signatures():
    k = launcher.kernel('momentum', 'momentum_update_f16')
    assert [(p.name, p.ctype, p.pointer) for p in k.params] == [
        ('param', '__half', True), ('velocity', '__half', True),
        ('direction', '__half', True), ('fallback', '__half', True),
        ('flags', 'int', True), ('n', 'long long', False),
        ('n_flags', 'int', False), ('slot', 'int', False),
        ('lr', 'float', False), ('momentum', 'float', False)]
    k = launcher.kernel('unit_fisher', 'unit_fisher_inverse_f64')
    assert _describe(k.params)[:4] == [
        ('fisher', 'double', True, True, '4 * n', False),
        ('inverse', 'double', True, False, '4 * n', False),
        ('n', 'long long', False, False, None, False),
        ('damping', 'double', False, False, None, False)]
    k = launcher.kernel('nonfinite', 'flag_nonfinite_f64')
    assert [p.dtype for p in k.params] == [
        numpy.float64, numpy.int64, numpy.int32, numpy.int32, numpy.int32]


INLINE = r'''
// extern "C" __global__ void commented_out(float* x) {}
/* extern "C" __global__ void also_commented(float* x) {} */
#define SOMETHING "extern \"C\" /* not a comment */"
extern "C" __global__ void first(
    const unsigned long long* __restrict__ keys /* [2 * (n + 1) - m] */,
    double* out /* [n] or null */, // trailing comment
    long long n, int m, unsigned long long seed, double scale) {}
extern "C"   __global__
void second(/* nothing */) {}
extern "C" __global__ void third(int* const q /* [n % 3 + n / 2] */, int n) {}
'''


def test_inline_signatures():
    sigs = launcher.parse_signatures(INLINE)
    assert list(sigs) == ['first', 'second', 'third']
    assert _describe(sigs['first']) == [
        ('keys', 'unsigned long long', True, True, '2 * (n + 1) - m', False),
        ('out', 'double', True, False, 'n', True),
        ('n', 'long long', False, False, None, False),
        ('m', 'int', False, False, None, False),
        ('seed', 'unsigned long long', False, False, None, False),
        ('scale', 'double', False, False, None, False)]
    assert sigs['second'] == []
    keys = sigs['first'][0]
    assert keys.count({'n': 4, 'm': 3}) == 7
    assert keys.dtype == numpy.uint64
    assert sigs['third'][0].count({'n': 7}) == 1 + 3


@pytest.mark.parametrize('source, message', [
    ('extern "C" __global__ void k(float* x, int n) {}',
     'needs one size annotation'),
    ('extern "C" __global__ void k(float* x /* [m] */, int n) {}',
     "names 'm'"),
    ('extern "C" __global__ void k(float* x /* [s] */, float s) {}',
     'not an integer'),
    ('extern "C" __global__ void k(float* x /* [n ** 2] */, int n) {}',
     'may only use'),
    ('extern "C" __global__ void k(float* x /* [n * 1.5] */, int n) {}',
     'non-integer'),
    ('extern "C" __global__ void k(float* x /* [n) */, int n) {}',
     'needs one size annotation'),
    ('extern "C" __global__ void k(short* x /* [n] */, int n) {}',
     "type 'short'"),
    ('extern "C" __global__ void k(float** x /* [n] */, int n) {}',
     'pointer to a pointer'),
    ('extern "C" __global__ void k(__half h, float* x /* [1] */) {}',
     'not supported'),
    ('extern "C" __global__ void k(int n, int n) {}', 'repeats'),
    ('extern "C" __global__ void k(int n, ) {}', 'empty parameter'),
    ('extern "C" __global__ void k(int n {}', 'unclosed'),
    ('extern "C" __global__ void k(int n) {}\n'
     'extern "C" __global__ void k(int m) {}', 'defined twice'),
])
def test_signature_errors(source, message):
    with pytest.raises(ValueError, match=message) as info:
        launcher.parse_signatures(source, 'inline.cu')
    assert 'inline.cu:' in str(info.value)


# --------------------------------------------------------------------------
# Argument checks (no build, no launch: they raise before)


@pytest.fixture
def flag_kernel():
    return launcher.kernel('nonfinite', 'flag_nonfinite_f32')


def _flag_args(n=4):
    return [numpy.ones(n, F32), I64(n), numpy.zeros(2, I32), I32(2), I32(1)]


def _no_launch(monkeypatch):
    def fail(*args):
        raise AssertionError('launched')
    monkeypatch.setattr(launcher.Kernel, '_launch_emulated', fail)
    monkeypatch.setattr(launcher, '_launch_gpu', fail)


@pytest.mark.parametrize('index, value, error, message', [
    (1, 4, TypeError, r'n \(long long\): needs numpy.int64, got int'),
    (4, 1, TypeError, r'slot \(int\): needs numpy.int32, got int'),
    (4, I64(1), TypeError, 'slot .* needs numpy.int32, got numpy.int64'),
    (3, 2.0, TypeError, 'n_flags .* got float'),
    (4, True, TypeError, 'slot .* got bool'),
    (0, numpy.ones(4, numpy.float64), TypeError,
     r'x \(float\*\): needs dtype float32, got float64'),
    (0, numpy.ones(5, F32), ValueError, r'x .* needs \[n\] = 4 elements, '
                                        r'got 5'),
    (0, numpy.ones(8, F32)[::2], ValueError, 'x .* C-contiguous'),
    (0, None, TypeError, r'x .* got None; an absent pointer is '
                         r'launcher.NULL \(CuPy 13.6 passes None as garbage'),
    (0, launcher.NULL, TypeError, 'x .* got NULL, but the annotation does '
                                  'not allow null'),
    (0, numpy.uintp(64), TypeError, 'x .* needs a NumPy or CuPy array, got '
                                    'numpy.uint64'),
    (0, [1.0, 1.0, 1.0, 1.0], TypeError, 'x .* NumPy or CuPy array'),
    (2, numpy.zeros(2, numpy.int64), TypeError, 'flags .* dtype int32'),
    (2, numpy.zeros(3, I32), ValueError, r'flags .* \[n_flags\] = 2'),
])
def test_rejections(flag_kernel, monkeypatch, index, value, error, message):
    _no_launch(monkeypatch)
    args = _flag_args()
    args[index] = value
    with pytest.raises(error, match='^kernel flag_nonfinite_f32: parameter '
                       + message):
        flag_kernel(1, 32, args)


def test_read_only_output_is_rejected(flag_kernel, monkeypatch):
    _no_launch(monkeypatch)
    args = _flag_args()
    args[2].flags.writeable = False
    with pytest.raises(ValueError, match='flags .* read-only'):
        flag_kernel(1, 32, args)
    args = _flag_args()
    args[0].flags.writeable = False  # const input: fine
    assert flag_kernel.check(1, 32, args) == 'cpu'


@pytest.mark.parametrize('grid, block, error', [
    (0, 32, ValueError), (1, 0, ValueError), (1, 1025, ValueError),
    (1.0, 32, TypeError), (1, 32.0, TypeError), (True, 32, TypeError),
    (-3, 32, ValueError), (2 ** 31, 32, ValueError)])
def test_grid_and_block(flag_kernel, monkeypatch, grid, block, error):
    _no_launch(monkeypatch)
    with pytest.raises(error, match='kernel flag_nonfinite_f32: (grid|block)'):
        flag_kernel(grid, block, _flag_args())


def test_argument_count_and_container(flag_kernel, monkeypatch):
    _no_launch(monkeypatch)
    with pytest.raises(TypeError, match='takes 5 arguments'):
        flag_kernel(1, 32, _flag_args()[:4])
    with pytest.raises(TypeError, match='tuple or list'):
        flag_kernel(1, 32, iter(_flag_args()))
    assert flag_kernel.check(1, 1024, tuple(_flag_args())) == 'cpu'
    assert flag_kernel.check(numpy.int64(7), I32(1), _flag_args()) == 'cpu'


def test_null_where_annotated(monkeypatch):
    _no_launch(monkeypatch)
    k = launcher.kernel('pack', 'pack_f32')
    args = [numpy.zeros(8, I64), I32(2), launcher.NULL, numpy.zeros(5, F32),
            I64(5)]
    assert k.check(2, 64, args) == 'cpu'
    assert k.check(2, 64, args[:2] + [numpy.uint64(0)] + args[3:]) == 'cpu'
    args[2] = None  # a nullable pointer still refuses None
    with pytest.raises(TypeError, match=r'scales \(float\*\): got None'):
        k(2, 64, args)
    with pytest.raises(TypeError, match=r'scales .* NumPy or CuPy array or '
                                        r'launcher.NULL, got numpy.int64'):
        k(2, 64, args[:2] + [I64(0)] + args[3:])
    args[2] = numpy.ones(3, F32)
    with pytest.raises(ValueError, match=r'scales .* \[n_arrays\] = 2'):
        k(2, 64, args)
    args[2] = numpy.ones(2, F32)
    args[0] = numpy.zeros(9, I64)
    with pytest.raises(ValueError, match=r'table .* \[4 \* n_arrays\] = 8'):
        k(2, 64, args)


def test_mixed_or_missing_devices(monkeypatch):
    _no_launch(monkeypatch)
    source = ('extern "C" __global__ void k(float* a /* [n] */, '
              'float* b /* [n] or null */, int n) {}')
    k = launcher.Module(source, 'mixed.cu')['k']
    a = numpy.zeros(3, F32)
    b = numpy.zeros(3, F32)
    real_kind = launcher._array_kind
    monkeypatch.setattr(launcher, '_array_kind', lambda v: 'gpu' if v is b
                        else real_kind(v))
    monkeypatch.setattr(launcher, '_gpu_device_error', lambda v: None)
    with pytest.raises(TypeError, match='NumPy and CuPy arrays mixed'):
        k(1, 32, [a, b, I32(3)])
    with pytest.raises(TypeError, match='does not allow null'):
        k(1, 32, [launcher.NULL, launcher.NULL, I32(3)])
    source = ('extern "C" __global__ void k(float* a /* [n] or null */, '
              'int n) {}')
    k = launcher.Module(source, 'nothing.cu')['k']
    with pytest.raises(TypeError, match='no array argument'):
        k(1, 32, [launcher.NULL, I32(3)])


# --------------------------------------------------------------------------
# Emulated build


GRID_KERNEL = r'''
extern "C" __global__ void visit(int* count /* [n] */,
                                 long long* who /* [3 * n] */, long long n,
                                 float step, double scale) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)blockDim.x * gridDim.x) {
    count[i] += 1;
    who[3 * i] = blockIdx.x;
    who[3 * i + 1] = threadIdx.x;
    who[3 * i + 2] = (long long)(gridDim.x * 10000 + blockDim.x) +
                     (long long)(step * (float)scale);
  }
}
'''


@emulated
@pytest.mark.parametrize('grid, block', [(1, 1), (1, 7), (3, 5), (64, 32),
                                         (1000, 1024)])
def test_emulation_runs_every_block_and_thread(cache, grid, block):
    k = launcher.Module(GRID_KERNEL, 'visit.cu')['visit']
    n = 1000
    count = numpy.zeros(n, I32)
    who = numpy.zeros((n, 3), I64)
    k(grid, block, (count, who, I64(n), F32(0.5), numpy.float64(4.0)))
    numpy.testing.assert_array_equal(count, 1)
    thread = numpy.arange(n) % (grid * block)
    numpy.testing.assert_array_equal(who[:, 0], thread // block)
    numpy.testing.assert_array_equal(who[:, 1], thread % block)
    numpy.testing.assert_array_equal(who[:, 2], grid * 10000 + block + 2)


@emulated
def test_build_is_cached_and_keyed(cache):
    m = launcher.Module(GRID_KERNEL, 'visit.cu')
    path = launcher.build_emulated(m.source, m.signatures, m.filename, 'v')
    assert os.path.dirname(path) == str(cache)
    stamp = os.stat(path).st_mtime_ns
    again = launcher.build_emulated(m.source, m.signatures, m.filename, 'v')
    assert again == path and os.stat(path).st_mtime_ns == stamp
    changed = launcher.Module(GRID_KERNEL.replace('+= 1', '+= 2'), 'visit.cu')
    other = launcher.build_emulated(changed.source, changed.signatures,
                                    changed.filename, 'v')
    assert other != path
    assert sorted(os.listdir(cache)) == sorted(
        os.path.basename(p) for p in (path, other))  # no temporary left


@emulated
def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv('CHAINERKFAC_CACHE_DIR', raising=False)
    monkeypatch.setenv('HOME', str(tmp_path))
    assert launcher.cache_dir() == os.path.join(
        str(tmp_path), '.cache', 'chainerkfac')


@emulated
def test_two_processes_build_at_once(cache):
    script = (
        'import numpy, sys\n'
        'from chainerkfac.cuda import launcher\n'
        'm = launcher.Module(sys.argv[1], "race.cu")\n'
        'count = numpy.zeros(10, numpy.int32)\n'
        'who = numpy.zeros(30, numpy.int64)\n'
        'm["visit"](2, 4, (count, who, numpy.int64(10), numpy.float32(1),\n'
        '                  numpy.float64(1)))\n'
        'assert (count == 1).all()\n')
    source = GRID_KERNEL.replace('+= 1', '+= 1 + 0')
    env = dict(os.environ, PYTHONPATH=os.path.dirname(
        os.path.dirname(os.path.abspath(__file__))))
    procs = [subprocess.Popen([sys.executable, '-c', script, source], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for _ in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out.decode()
    assert len([f for f in os.listdir(cache) if f.endswith('.so')]) == 1
    assert not [f for f in os.listdir(cache) if not f.endswith('.so')]


@emulated
def test_compile_error_carries_the_compiler_message(cache):
    source = ('extern "C" __global__ void broken(float* x /* [n] */, '
              'int n) { x[0] = undefined_name; }')
    k = launcher.Module(source, 'broken.cu')['broken']
    with pytest.raises(launcher.KernelCompileError,
                       match='(?s)broken.cu.*undefined_name'):
        k(1, 1, (numpy.zeros(3, F32), I32(3)))


def test_generated_launcher_source():
    m = launcher.Module(INLINE, 'inline.cu')
    text = launcher.emulation_source(m.source, m.signatures, 'inline.cu')
    assert text.startswith('#line 1 "inline.cu"\n' + INLINE)
    assert ('extern "C" void emu_first(unsigned int grid, unsigned int block, '
            'const unsigned long long* p0, double* p1, long long p2, int p3, '
            'unsigned long long p4, double p5) {') in text
    assert 'first(p0, p1, p2, p3, p4, p5);' in text
    assert 'extern "C" void emu_second(unsigned int grid, unsigned int ' \
           'block) {' in text
    assert 'second();' in text


def test_missing_compiler_is_reported(cache, monkeypatch):
    monkeypatch.setenv('CXX', 'no-such-compiler-chainerkfac')
    m = launcher.Module(GRID_KERNEL, 'visit.cu')
    with pytest.raises(launcher.KernelCompileError, match='not on the PATH'):
        launcher.build_emulated(m.source, m.signatures, m.filename, 'v')


def test_missing_cuda_headers_are_reported(monkeypatch, tmp_path):
    monkeypatch.setattr(launcher, 'include_candidates',
                        lambda with_cupy=True: [str(tmp_path)])
    with pytest.raises(launcher.CudaIncludeError,
                       match='cuda_fp16.h .* none of: ' + str(tmp_path)):
        launcher.cuda_include_dirs()


def test_include_dirs_pick_the_first_with_fp16(monkeypatch, tmp_path):
    names = ('empty', 'fp16', 'vector', 'full', 'crt')
    empty, fp16, vector, full, crt = (tmp_path / n for n in names)
    for folder in (empty, fp16, vector, full, crt / 'crt'):
        folder.mkdir(parents=True)
    for folder in (fp16, full):
        (folder / 'cuda_fp16.h').write_text('')
    for folder in (vector, full):
        (folder / 'vector_types.h').write_text('')
    (full / 'crt').mkdir()
    (full / 'crt' / 'host_defines.h').write_text('')
    (crt / 'crt' / 'host_defines.h').write_text('')
    monkeypatch.setenv('CHAINERKFAC_CUDA_INCLUDE', str(empty))
    monkeypatch.setenv('CUDA_PATH', str(tmp_path / 'nowhere'))
    assert launcher.include_candidates(False)[:2] == [
        str(empty), str(tmp_path / 'nowhere' / 'include')]

    def use(*folders):
        monkeypatch.setattr(launcher, 'include_candidates',
                            lambda with_cupy=True: [str(f) for f in folders])

    use(empty, fp16, crt, vector, full)
    assert launcher.cuda_include_dirs() == [str(fp16), str(vector), str(crt)]
    use(full, fp16, crt)
    assert launcher.cuda_include_dirs() == [str(full)]
    use(fp16)  # incomplete: the compiler will say what is missing
    assert launcher.cuda_include_dirs() == [str(fp16)]


# --------------------------------------------------------------------------
# The ops: checks, and what the GPU path receives


def test_op_argument_checks():
    x = numpy.zeros((2, 3), F32)
    with pytest.raises(ValueError, match='buffer must have shape \\(6,\\)'):
        ops.pack([x], [False], numpy.zeros(5, F32))
    with pytest.raises(ValueError, match='must be square'):
        ops.pack([x], [True], numpy.zeros(6, F32))
    with pytest.raises(TypeError, match='buffer has dtype float64'):
        ops.pack([x], [False], numpy.zeros(6))
    with pytest.raises(TypeError, match='array 0 has dtype int32'):
        ops.pack([x.astype(I32)], [False], numpy.zeros(6, F32))
    with pytest.raises(TypeError, match='scales must be float32'):
        ops.pack([x], [False], numpy.zeros(6, F32), numpy.ones(1))
    with pytest.raises(ValueError, match='scales must be 1-D of length 1'):
        ops.pack([x], [False], numpy.zeros(6, F32), numpy.ones(2, F32))
    with pytest.raises(ValueError, match='1 arrays but 2 symmetric'):
        ops.pack([x], [False, True], numpy.zeros(6, F32))
    with pytest.raises(ValueError, match='output 0 .* C-contiguous'):
        ops.unpack(numpy.zeros(6, F32), [x.T], [False])
    with pytest.raises(TypeError, match='expected NumPy or CuPy'):
        ops.unpack([0.0] * 6, [x], [False])
    flags = numpy.zeros(2, I32)
    with pytest.raises(IndexError, match='slot 2 is outside flags'):
        ops.flag_nonfinite(x, flags, 2)
    with pytest.raises(IndexError, match='slot -1'):
        ops.flag_nonfinite(x, flags, -1)
    with pytest.raises(TypeError, match='slot must be an int'):
        ops.flag_nonfinite(x, flags, True)
    with pytest.raises(TypeError, match='flags must be int32'):
        ops.flag_nonfinite(x, flags.astype(I64), 0)
    with pytest.raises(TypeError, match='direction has dtype float64'):
        ops.momentum_update(x, x.copy(), x.astype(float), x, flags, 0, 1, 1)
    with pytest.raises(ValueError, match='fallback has shape'):
        ops.momentum_update(x, x.copy(), x, x.T, flags, 0, 1, 1)
    with pytest.raises(ValueError, match=r'fisher must have shape \(C, 2'):
        ops.unit_fisher_inverse(numpy.zeros((3, 2, 3), F32), 0.0, flags, 0)
    with pytest.raises(TypeError, match='fisher has dtype float16'):
        ops.unit_fisher_inverse(numpy.zeros((3, 2, 2), numpy.float16), 0.0,
                                flags, 0)
    with pytest.raises(ValueError, match='damping must be finite'):
        ops.unit_fisher_inverse(numpy.zeros((3, 2, 2)), numpy.nan, flags, 0)
    with pytest.raises(ValueError, match='grid must be a positive int'):
        with cuda.emulate():
            ops.flag_nonfinite(x, flags, 0, grid=0)


def test_grid_size():
    assert ops.grid_size(0) == 1
    assert ops.grid_size(1) == 1
    assert ops.grid_size(256) == 1
    assert ops.grid_size(257) == 2
    assert ops.grid_size(10 ** 9) == ops.MAX_GRID
    assert ops.grid_size(10 ** 9, grid=3) == 3


def test_emulate_is_a_nestable_switch():
    assert not cuda.emulating()
    with cuda.emulate():
        with cuda.emulate():
            assert cuda.emulating()
        assert cuda.emulating()
    assert not cuda.emulating()


def _snapshot(args):
    return tuple(a.copy() if isinstance(a, numpy.ndarray) else a
                 for a in args)


class FakeGPUFunction(object):
    """Stands for ``RawModule.get_function(name)``: records the call (a
    snapshot of the arguments) and runs the emulated kernel with exactly the
    arguments it received."""

    def __init__(self, kernel, calls):
        self.kernel = kernel
        self.calls = calls

    def __call__(self, grid, block, args):
        assert isinstance(grid, tuple) and isinstance(block, tuple)
        assert isinstance(args, tuple)
        self.calls.append((self.kernel, grid, block, _snapshot(args)))
        self.kernel._launch_emulated(grid[0], block[0], args)


def _op_cases(rng):
    sym = rng.randn(5, 5).astype(F32)
    sym = sym + sym.T
    arrays = [sym, rng.randn(3, 2).astype(numpy.float64),
              rng.randn(4).astype(numpy.float16)]
    flags = numpy.array([0, 1], I32)

    def pack():
        buffer = numpy.zeros(15 + 6 + 4, numpy.float16)
        ops.pack(arrays, [True, False, False], buffer,
                 numpy.array([2.0, 0.5, 4.0], F32))
        return [buffer]

    def unpack():
        buffer = rng.randn(15 + 6 + 4).astype(F32)
        outs = [numpy.zeros_like(a) for a in arrays]
        ops.unpack(buffer, outs, [True, False, False],
                   numpy.array([1.0, 3.0, 7.0], F32), grid=2)
        return outs

    def pack_unscaled():
        buffer = numpy.zeros(15 + 6 + 4, F32)
        ops.pack(arrays, [True, False, False], buffer)
        return [buffer]

    def unpack_undivided():
        buffer = rng.randn(15 + 6 + 4).astype(numpy.float16)
        outs = [numpy.zeros_like(a) for a in arrays]
        ops.unpack(buffer, outs, [True, False, False])
        return outs

    def flag():
        f = numpy.zeros(3, I32)
        bad = arrays[1].copy()
        bad[1, 1] = numpy.inf
        ops.flag_nonfinite(bad, f, 2)
        return [f]

    def momentum():
        p, v, d, g = (rng.randn(7, 3).astype(F32) for _ in range(4))
        ops.momentum_update(p, v, d, g, flags, 1, 0.1, 0.9)
        return [p, v]

    def fisher():
        status = numpy.zeros(2, I32)
        m = rng.randn(6, 2, 2)
        m[0] = [[-1, 0], [0, 1]]
        inv = ops.unit_fisher_inverse(m, 1e-3, status, 1)
        return [inv, status]

    return {'pack': pack, 'unpack': unpack, 'pack_unscaled': pack_unscaled,
            'unpack_undivided': unpack_undivided, 'flag': flag,
            'momentum': momentum, 'fisher': fisher}


OP_CASES = ['pack', 'unpack', 'pack_unscaled', 'unpack_undivided', 'flag',
            'momentum', 'fisher']


@emulated
@pytest.mark.parametrize('case', OP_CASES)
def test_absent_pointers_are_null_never_none(monkeypatch, case):
    """Every op hands the launcher arrays, NumPy scalars and, for an
    absent optional pointer (no fp16 scales, no divisors), launcher.NULL:
    never None, which CuPy 13.6 would pass as garbage. (The launcher's
    check refuses None too, so any emulated test of an op passing one
    fails.)"""
    seen = []
    real_check = launcher.Kernel.check

    def check(self, grid, block, args):
        seen.append((self, tuple(args)))
        return real_check(self, grid, block, args)

    monkeypatch.setattr(launcher.Kernel, 'check', check)
    with cuda.emulate():
        _op_cases(numpy.random.RandomState(1))[case]()
    assert len(seen) == 1
    kernel, args = seen[0]
    assert not any(a is None for a in args)
    nulls = [p.name for p, a in zip(kernel.params, args)
             if launcher.is_null(a)]
    assert nulls == {'pack_unscaled': ['scales'],
                     'unpack_undivided': ['divisors']}.get(case, [])
    for p, a in zip(kernel.params, args):
        if p.pointer and p.name not in nulls:
            assert isinstance(a, numpy.ndarray), p.name
        elif not p.pointer:
            assert type(a) is p.dtype.type, p.name


def test_null_is_a_pointer_sized_zero():
    import ctypes
    assert type(launcher.NULL) is numpy.uintp and int(launcher.NULL) == 0
    assert launcher.NULL.nbytes == ctypes.sizeof(ctypes.c_void_p)
    assert launcher.is_null(numpy.uintp(0))
    for value in (None, 0, numpy.uintp(1), numpy.int64(0), numpy.zeros(1)):
        assert not launcher.is_null(value)


def test_cupy_passes_null_as_eight_zero_bytes():
    """Where CuPy 14 is installed (the NumPy-2 leg), its kernel-argument
    wrapper takes NULL as an 8-byte unsigned scalar. (CuPy 13.6 has no
    CScalar: its _pointer makes a CInt64 of any 8-byte NumPy scalar.)"""
    scalar = pytest.importorskip('cupy._core._scalar',
                                 reason='no CuPy 14 here')
    if not hasattr(scalar, 'CScalar'):
        pytest.skip('CuPy {} has no CScalar (CuPy 13)'.format(
            __import__('cupy').__version__))
    wrapped = scalar.CScalar(launcher.NULL)
    assert wrapped.dtype == numpy.dtype(numpy.uint64)
    assert wrapped.dtype.itemsize == 8


@emulated
@pytest.mark.parametrize('case', OP_CASES)
def test_gpu_path_receives_the_emulated_arguments(monkeypatch, case):
    """With the device faked, each op takes the GPU branch of the launcher,
    ``get_function(name)((grid,), (block,), args)``. Its arguments equal, in
    type and value, those of the emulated launch of the same op (but for
    the addresses in a descriptor table: the arrays are new), and running
    them gives the NumPy reference's result."""
    emulated_calls, gpu_calls = [], []
    real_emulated = launcher.Kernel._launch_emulated

    def record(self, grid, block, args):
        emulated_calls.append((self, (grid,), (block,), _snapshot(args)))
        real_emulated(self, grid, block, args)

    monkeypatch.setattr(launcher.Kernel, '_launch_emulated', record)
    expected = _op_cases(numpy.random.RandomState(1))[case]()
    assert emulated_calls == []  # the reference path
    with cuda.emulate():
        emulated = _op_cases(numpy.random.RandomState(1))[case]()
    assert len(emulated_calls) == 1

    monkeypatch.setattr(launcher.Kernel, '_launch_emulated', real_emulated)
    monkeypatch.setattr(launcher, '_array_kind', lambda v: (
        'gpu' if isinstance(v, numpy.ndarray) else None))
    monkeypatch.setattr(launcher, '_gpu_device_error', lambda v: None)
    monkeypatch.setattr(launcher, 'cupy', numpy)  # the ops' array module
    monkeypatch.setattr(launcher.Kernel, '_gpu_function',
                        lambda self: FakeGPUFunction(self, gpu_calls))
    with cuda.emulate():
        on_gpu = _op_cases(numpy.random.RandomState(1))[case]()
    assert len(gpu_calls) == 1
    kernel, grid, block, args = gpu_calls[0]
    assert (kernel, grid, block) == emulated_calls[0][:3]
    for p, g, e in zip(kernel.params, args, emulated_calls[0][3]):
        assert type(g) is type(e), p.name
        if p.name == 'table':  # addresses, then offset, d, dtype code
            numpy.testing.assert_array_equal(g.reshape(-1, 4)[:, 1:],
                                             e.reshape(-1, 4)[:, 1:])
        elif isinstance(g, numpy.ndarray):
            assert g.dtype == e.dtype and g.shape == e.shape, p.name
            if p.name != 'inverse':  # uninitialised (empty) output
                numpy.testing.assert_array_equal(g, e, err_msg=p.name)
        else:
            assert g == e and g is not None, p.name
    for a, b, c in zip(on_gpu, emulated, expected):
        numpy.testing.assert_array_equal(a, c)
        numpy.testing.assert_array_equal(b, c)
