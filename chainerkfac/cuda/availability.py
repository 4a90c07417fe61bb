"""Whether CuPy, and the CUDA libraries chainerkfac calls through it, load
here, with the reason in one line when not.

Shared by everything that must stop with one clear line on a machine
without a usable CuPy (``--gpu`` in the entry points, the ``'pure_nccl'``
communicator), before training starts rather than at the first call that
needs a library: CuPy 14 loads cuBLAS, cuSOLVER and NCCL only when a
module first needs them, and CuPy 13 links them when that module is
imported, so ``import cupy`` succeeds without any of them.
"""
import importlib

from chainerkfac.errors import one_line  # NOQA: F401 (importers use it)

#: CuPy's module name of each CUDA library -> (its name, what needs it)
LIBRARIES = {
    'cublas': ('cuBLAS', 'matrix products'),
    'cusolver': ('cuSOLVER', "K-FAC's Cholesky inverses"),
    'nvrtc': ('NVRTC', "chainerkfac's CUDA kernels"),
    'nccl': ('NCCL', "the 'pure_nccl' communicator"),
}
#: the libraries K-FAC training on a GPU calls, in the order checked
TRAINING_LIBRARIES = ('cublas', 'cusolver', 'nvrtc')


def import_cupy():
    """``(cupy, None)``, or ``(None, why)`` when CuPy cannot be imported
    (not installed, or a broken install: CUDA libraries, driver, ...)."""
    try:
        import cupy
    except ImportError as e:
        return None, 'CuPy is not installed ({})'.format(one_line(e))
    except Exception as e:
        return None, 'CuPy failed to import ({})'.format(one_line(e))
    return cupy, None


def load_library(name):
    """CuPy's module of a CUDA library, ``cupy_backends.cuda.libs.<name>``,
    loaded the way CuPy loads it: on CuPy 14 the package's ``__getattr__``
    first loads the library through cuda-pathfinder (ImportError naming the
    missing file otherwise); on CuPy 13 importing the module links it."""
    package = importlib.import_module('cupy_backends.cuda.libs')
    try:
        return getattr(package, name)
    except AttributeError:
        return importlib.import_module('cupy_backends.cuda.libs.' + name)


def _check_cublas():
    load_library('cublas')  # its functions need a device (a handle)


def _check_cusolver():
    load_library('cusolver')._getVersion()   # cusolverGetProperty: no device


def _check_nvrtc():
    from chainerkfac.cuda import launcher
    nvrtc = load_library('nvrtc')
    nvrtc.getVersion()                       # loads libnvrtc
    launcher.check_nvrtc(nvrtc)              # and its builtins, the headers


def _check_nccl():
    from cupy.cuda import nccl      # what NcclBackend uses
    if getattr(nccl, 'available', False):
        return
    load_library('nccl')            # raises, naming the missing file
    raise ImportError('cupy.cuda.nccl.available is False')


_CHECKS = {'cublas': _check_cublas, 'cusolver': _check_cusolver,
           'nvrtc': _check_nvrtc, 'nccl': _check_nccl}


def library_problem(names=TRAINING_LIBRARIES, cupy_version='?'):
    """None when CuPy loads every library of ``names`` (keys of
    :data:`LIBRARIES`), else one line naming the first it cannot load and
    why. Needs no device: libraries are loaded (cuSOLVER asked its version,
    NVRTC made to compile a kernel with the GPU build's options), not
    called on a GPU."""
    for name in names:
        label, use = LIBRARIES[name]
        try:
            _CHECKS[name]()
        except Exception as e:
            return 'CuPy {} cannot load {} (needed for {}): {}'.format(
                cupy_version, label, use, one_line(e))
    return None
