"""chainerkfac.cuda.availability: CuPy's import and the CUDA libraries it
loads, or the reason in one line."""
import builtins
import sys
import types

import pytest

from chainerkfac.cuda import availability
from chainerkfac.cuda import launcher
from cuda_helpers import stand_in_libraries  # NOQA: I100


def test_one_line_keeps_the_type_and_the_first_line():
    error = RuntimeError('libcublas.so.13: cannot open\nsecond line\n')
    assert availability.one_line(error) == (
        'RuntimeError: libcublas.so.13: cannot open')
    assert availability.one_line(ValueError()) == 'ValueError: '


def _failing_import(monkeypatch, error):
    real = builtins.__import__

    def fake(name, *args, **kwargs):
        if name == 'cupy' or name.startswith('cupy.'):
            raise error
        return real(name, *args, **kwargs)
    monkeypatch.delitem(sys.modules, 'cupy', raising=False)
    monkeypatch.setattr(builtins, '__import__', fake)


def test_missing_cupy_is_named(monkeypatch):
    _failing_import(monkeypatch, ImportError("No module named 'cupy'"))
    cupy, why = availability.import_cupy()
    assert cupy is None
    assert why == "CuPy is not installed (ImportError: No module named 'cupy')"


def test_broken_cupy_is_named(monkeypatch):
    _failing_import(monkeypatch, OSError('libcudart.so.13: cannot open\nmore'))
    cupy, why = availability.import_cupy()
    assert cupy is None
    assert why == ('CuPy failed to import (OSError: libcudart.so.13: cannot '
                   'open)')


def test_importable_cupy_is_returned(monkeypatch):
    fake = type(sys)('cupy')
    monkeypatch.setitem(sys.modules, 'cupy', fake)
    assert availability.import_cupy() == (fake, None)


# --------------------------------------------------------------------------
# the CUDA libraries (stand-ins loading as CuPy 14's modules do)


def test_every_library_loads(monkeypatch):
    compiled = stand_in_libraries(monkeypatch)
    assert availability.library_problem(cupy_version='99.0') is None
    assert compiled == [['--fmad=false', '-I/stand-in']]   # NVRTC compiled


@pytest.mark.parametrize('name,label,use', [
    ('cublas', 'cuBLAS', 'matrix products'),
    ('cusolver', 'cuSOLVER', "K-FAC's Cholesky inverses"),
    ('nvrtc', 'NVRTC', "chainerkfac's CUDA kernels")])
def test_the_first_missing_library_is_named(monkeypatch, name, label, use):
    stand_in_libraries(monkeypatch, broken=(name, 'cusolver'))
    first = 'cuBLAS' if name == 'cublas' else 'cuSOLVER'
    assert availability.library_problem(('cublas', 'cusolver'), '99.0') == (
        'CuPy 99.0 cannot load {} (needed for {}): ImportError: lib{}.so.99: '
        'cannot open shared object file: No such file or directory'.format(
            first, availability.LIBRARIES[first.lower()][1], first.lower()))
    problem = availability.library_problem((name,), '99.0')
    assert problem.startswith('CuPy 99.0 cannot load {} (needed for {}): '
                              'ImportError: lib{}.so.99'.format(label, use,
                                                                name))
    assert '\n' not in problem


def test_nvrtc_that_cannot_compile_is_one_line(monkeypatch):
    stand_in_libraries(monkeypatch, compile_error=(
        'chainerkfac_probe.cu(1): catastrophic error: cannot open source file '
        '"cuda_fp16.h"\n\n1 catastrophic error detected\n'))
    assert availability.library_problem(('nvrtc',), '99.0') == (
        "CuPy 99.0 cannot load NVRTC (needed for chainerkfac's CUDA kernels)"
        ': RuntimeError: NVRTC cannot compile a kernel with --fmad=false '
        '-I/stand-in: chainerkfac_probe.cu(1): catastrophic error: cannot '
        'open source file "cuda_fp16.h"')


def test_nccl_is_cupys_own_flag_or_the_loaders_reason(monkeypatch):
    stand_in_libraries(monkeypatch, broken=('nccl',))
    cupy = types.ModuleType('cupy')
    cupy.cuda = types.ModuleType('cupy.cuda')
    nccl = types.ModuleType('cupy.cuda.nccl')
    cupy.cuda.nccl = nccl
    for name, module in (('cupy', cupy), ('cupy.cuda', cupy.cuda),
                         ('cupy.cuda.nccl', nccl)):
        monkeypatch.setitem(sys.modules, name, module)
    nccl.available = True
    assert availability.library_problem(('nccl',)) is None
    nccl.available = False
    assert availability.library_problem(('nccl',)) == (
        "CuPy ? cannot load NCCL (needed for the 'pure_nccl' communicator): "
        'ImportError: libnccl.so.99: cannot open shared object file: No such '
        'file or directory')
    stand_in_libraries(monkeypatch, nccl_available=False)   # loads; CuPy: no
    assert availability.library_problem(('nccl',)).endswith(
        'ImportError: cupy.cuda.nccl.available is False')


def test_cupy_13_modules_are_imported_as_submodules(monkeypatch):
    """CuPy 13's package has no __getattr__: importing the module links the
    library (ImportError from the dynamic loader when it is missing)."""
    libs = types.ModuleType('cupy_backends.cuda.libs')
    cusolver = types.ModuleType('cupy_backends.cuda.libs.cusolver')
    for name, module in (('cupy_backends', types.ModuleType('cupy_backends')),
                         ('cupy_backends.cuda',
                          types.ModuleType('cupy_backends.cuda')),
                         ('cupy_backends.cuda.libs', libs),
                         ('cupy_backends.cuda.libs.cusolver', cusolver)):
        monkeypatch.setitem(sys.modules, name, module)
    assert availability.load_library('cusolver') is cusolver
    monkeypatch.setitem(sys.modules, 'cupy_backends.cuda.libs.cublas', None)
    with pytest.raises(ImportError):
        availability.load_library('cublas')


def test_the_gpu_builds_nvrtc_options():
    assert launcher.nvrtc_options()[:len(launcher.NVRTC_OPTIONS)] == \
        launcher.NVRTC_OPTIONS
    assert all(o.startswith('-I') for o in
               launcher.nvrtc_options()[len(launcher.NVRTC_OPTIONS):])


def _cusolver_installed():
    """Whether a cuSOLVER library is installed (a pip wheel or the
    system's)."""
    import ctypes.util
    import importlib.metadata
    for dist in ('nvidia-cusolver', 'nvidia-cusolver-cu12'):
        try:
            importlib.metadata.distribution(dist)
            return True
        except importlib.metadata.PackageNotFoundError:
            pass
    return ctypes.util.find_library('cusolver') is not None


def test_real_cupy_without_a_device():
    """With CuPy installed and no driver (the NumPy-2 leg: CuPy 14 with
    NVRTC, the runtime and cuBLAS, no cuSOLVER): the libraries load or not
    without a device, cuBLAS and NVRTC (which compiles) load, and with no
    cuSOLVER installed the line names it."""
    pytest.importorskip('cupy_backends.cuda.libs', reason='no CuPy here')
    import cupy
    assert availability.library_problem(('cublas', 'nvrtc'),
                                        cupy.__version__) is None
    problem = availability.library_problem(cupy_version=cupy.__version__)
    if _cusolver_installed():  # pragma: no cover - a GPU stack
        assert problem is None
    else:
        assert problem.startswith('CuPy {} cannot load cuSOLVER (needed for '
                                  "K-FAC's Cholesky inverses): ImportError: "
                                  .format(cupy.__version__)), problem
        assert '\n' not in problem
