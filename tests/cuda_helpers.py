"""Shared by the kernel tests: whether the emulated kernels can be built
here."""
import shutil

import pytest

from chainerkfac.cuda import launcher


def emulation_missing():
    """Why g++ emulation of the kernels cannot run here, or None."""
    if shutil.which(launcher.compiler()) is None:
        return 'no C++ compiler ({})'.format(launcher.compiler())
    try:
        launcher.cuda_include_dirs(with_cupy=False)
    except launcher.CudaIncludeError:
        return 'no cuda_fp16.h'
    return None


#: marks a test that runs kernels through the emulated build
emulated = pytest.mark.skipif(emulation_missing() is not None,
                              reason=str(emulation_missing()))


def stand_in_libraries(monkeypatch, broken=(), compile_error=None,
                       nccl_available=True):
    """Puts stand-ins for CuPy's CUDA library modules
    (``cupy_backends.cuda.libs.<name>``) in ``sys.modules``, loading the way
    CuPy 14's do: the package's ``__getattr__`` raises ImportError for a
    library in ``broken`` (as cuda-pathfinder does for a missing file).
    ``compile_error``: the log of a failing NVRTC compilation. The GPU
    build's options are fixed (the header search is tested on its own).

    Returns:
        list: the options the stand-in NVRTC was asked to compile with.
    """
    import sys
    import types

    compiled = []
    nvrtc = types.ModuleType('cupy_backends.cuda.libs.nvrtc')
    nvrtc.getVersion = lambda: (99, 0)
    nvrtc.createProgram = lambda source, name, headers, names: 7
    nvrtc.destroyProgram = lambda program: None
    nvrtc.getProgramLog = lambda program: compile_error or ''

    def compile_program(program, options):
        compiled.append(list(options))
        if compile_error is not None:
            raise RuntimeError('NVRTC_ERROR_COMPILATION (6)')
    nvrtc.compileProgram = compile_program
    cusolver = types.ModuleType('cupy_backends.cuda.libs.cusolver')
    cusolver._getVersion = lambda: (11, 6, 1)
    modules = {'nvrtc': nvrtc, 'cusolver': cusolver,
               'cublas': types.ModuleType('cupy_backends.cuda.libs.cublas'),
               'nccl': types.ModuleType('cupy_backends.cuda.libs.nccl')}
    libs = types.ModuleType('cupy_backends.cuda.libs')

    def load(name):
        if name in broken:
            raise ImportError('lib{}.so.99: cannot open shared object file: '
                              'No such file or directory\nmore'.format(name))
        if name in modules:
            return modules[name]
        raise AttributeError(name)
    libs.__getattr__ = load
    backends, cuda = (types.ModuleType('cupy_backends'),
                      types.ModuleType('cupy_backends.cuda'))
    backends.cuda, cuda.libs = cuda, libs
    for name, module in (('cupy_backends', backends),
                         ('cupy_backends.cuda', cuda),
                         ('cupy_backends.cuda.libs', libs)):
        monkeypatch.setitem(sys.modules, name, module)
    nccl = types.ModuleType('cupy.cuda.nccl')
    nccl.available = nccl_available
    cupy = sys.modules.get('cupy')
    if cupy is not None and getattr(cupy, 'cuda', None) is not None:
        monkeypatch.setattr(cupy.cuda, 'nccl', nccl, raising=False)
    monkeypatch.setitem(sys.modules, 'cupy.cuda.nccl', nccl)
    monkeypatch.setattr(launcher, 'nvrtc_options',
                        lambda: ('--fmad=false', '-I/stand-in'))
    return compiled
