"""scripts/compile_kernels.sh: every kernel compiles with nvcc for sm_80 and
sm_90, warnings as errors, with no register spills."""
import os
import re
import shutil
import subprocess

import pytest

from chainerkfac.cuda import launcher

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'scripts', 'compile_kernels.sh')
LINE = re.compile(r'^(\S+\.cu) (sm_\d+) (\w+) registers=(\d+) '
                  r'spill_stores=(\d+) spill_loads=(\d+)$')

needs_nvcc = pytest.mark.skipif(shutil.which('nvcc') is None,
                                reason='nvcc is not on the PATH')


def _run(tmp_path, **env):
    return subprocess.run(
        ['bash', SCRIPT], cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, timeout=600,
        env=dict(os.environ, BUILD_DIR=str(tmp_path / 'build'), **env))


@needs_nvcc
def test_every_kernel_compiles_without_spills(tmp_path):
    proc = _run(tmp_path)
    out = proc.stdout.decode()
    assert proc.returncode == 0, out + proc.stderr.decode()
    rows = [LINE.match(line) for line in out.splitlines()]
    assert all(rows), out
    seen = {(m.group(1), m.group(2), m.group(3)) for m in rows}
    expected = {(os.path.basename(f), arch, name)
                for f in launcher.kernel_files()
                for name in launcher.Module.from_file(f).kernels
                for arch in ('sm_80', 'sm_90')}
    assert seen == expected
    for m in rows:
        assert int(m.group(4)) > 0
        assert (m.group(5), m.group(6)) == ('0', '0'), m.group(0)
    for f in launcher.kernel_files():
        name = os.path.splitext(os.path.basename(f))[0]
        for arch in ('sm_80', 'sm_90'):
            report = tmp_path / 'build' / 'ptxas' / '{}.{}.txt'.format(
                name, arch)
            assert 'spill stores' in report.read_text()


@needs_nvcc
def test_a_warning_fails_the_script(tmp_path):
    kernels = tmp_path / 'kernels'
    kernels.mkdir()
    (kernels / 'warn.cu').write_text(
        'extern "C" __global__ void k(float* x /* [n] */, long long n) {\n'
        '  int unused;\n  x[0] = 1.0f;\n}\n')
    proc = _run(tmp_path, KERNEL_DIR=str(kernels))
    assert proc.returncode != 0
    assert 'unused' in proc.stderr.decode()


def _nvrtc():
    try:
        from cupy_backends.cuda.libs import nvrtc
        nvrtc.getVersion()
    except Exception:
        return None
    return nvrtc


@pytest.mark.skipif(_nvrtc() is None, reason='no NVRTC (cupy_backends)')
@pytest.mark.parametrize('arch', ['sm_80', 'sm_90'])
def test_nvrtc_builds_every_kernel_with_the_launcher_options(arch):
    """What a GPU run compiles (no device needed): the launcher's NVRTC
    options and include folders; every kernel is an entry, and every
    floating-point multiply is ``.rn`` so ptxas cannot fuse it into an FMA
    (that keeps GPU results equal to the emulation's)."""
    nvrtc = _nvrtc()
    options = list(launcher.NVRTC_OPTIONS) + [
        '-I' + d for d in launcher.cuda_include_dirs(with_cupy=True)]
    for path in launcher.kernel_files():
        module = launcher.Module.from_file(path)
        program = nvrtc.createProgram(module.source,
                                      os.path.basename(path), [], [])
        try:
            try:
                nvrtc.compileProgram(program,
                                     options + ['--gpu-architecture=' + arch])
            except Exception:
                pytest.fail('{}: {}'.format(path,
                                            nvrtc.getProgramLog(program)))
            ptx = nvrtc.getPTX(program)
        finally:
            nvrtc.destroyProgram(program)
        ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
        entries = set(re.findall(r'\.entry (\w+)\(', ptx))
        assert entries == set(module.kernels)
        assert not re.search(r'\b(mul|fma)\.f(32|64)\b', ptx)
        assert not re.search(r'\bfma\.rn\.f(32|64)\b', ptx)
