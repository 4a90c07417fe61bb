"""Run Chainer 7.8.1 on NumPy 2 (needed by CuPy 14) without editing installed files.

Import this module before ``chainer`` (``chainerkfac/__init__.py`` does). On NumPy 1.x
:func:`patch_numpy_for_chainer` changes nothing. On NumPy 2 it restores only what
Chainer 7.8.1 itself needs (found by grepping and running Chainer on NumPy 2.0-2.4):

* ``numpy.sctypes`` (removed in NumPy 2.0): ``chainer/functions/array/as_strided.py``
  reads ``np.sctypes['int']`` at import time, so ``import chainer`` fails without it,
  and ``np.sctypes['float']`` in ``F.as_strided``'s backward. Rebuilt exactly as
  NumPy 1.x built it (a dict of lists of scalar types).
* ``numpy.distutils.system_info`` (NumPy ships no ``numpy.distutils`` for
  Python >= 3.12): ``chainer/_environment_check.py`` imports it at import time and
  calls ``get_info('blas_opt')`` only on macOS. Only when the real module cannot be
  imported, a stub module whose ``get_info`` returns ``{}`` ("nothing found") is put
  in ``sys.modules``.

Not restored: ``numpy.float`` (read by ``F.resize_images``; removed in NumPy 1.24, so
broken on NumPy 1.26 too), the ``numpy.Inf``/``NaN``/... aliases (read only by
``chainerx``, which a pure-Python Chainer build disables), and behaviour changes that no
attribute can bring back: ``numpy.meshgrid`` returns a tuple, so
``chainer.distributions.Categorical.log_prob`` raises ``TypeError``; and
``xp.array(v, copy=False, dtype=other)`` in ``chainermn/communicators/_memory_utility.py``
(only with an ``allreduce_grad_dtype`` other than the parameters' dtype) raises
``ValueError`` under NumPy 2 copy semantics.

``pkg_resources`` is not shimmed: ``import chainer`` (``_environment_check.py``) and
``chainer.testing``/``chainer.gradient_check`` import it and use its API, so
``setuptools<82`` (82 removed ``pkg_resources``) must be installed; a clear
``ImportError`` says so. Chainer other than 7.8.x is refused on NumPy 2 (only 7.8.1 was
checked).
"""

import importlib.machinery
import importlib.util
import sys
import types

import numpy

_SUPPORTED_CHAINER = '7.8.'


def _numpy_major():
    return int(numpy.__version__.split('.')[0])


def _sctypes():
    """``numpy.sctypes`` as NumPy 1.x's ``numerictypes._set_array_types`` built it."""
    sctypes = {'int': [], 'uint': [], 'float': [], 'complex': [],
               'others': [bool, object, bytes, str, numpy.void]}
    for nbytes in (1, 2, 4, 8, 16, 32, 64):
        for kind in ('int', 'uint'):
            t = getattr(numpy, '%s%d' % (kind, 8 * nbytes), None)
            if t is not None:
                sctypes[kind].append(t)
    for nbytes in (2, 4, 8, 10, 12, 16, 32, 64):
        for kind, bits in (('float', 8 * nbytes), ('complex', 16 * nbytes)):
            t = getattr(numpy, '%s%d' % (kind, bits), None)
            if t is not None and t not in sctypes[kind]:
                sctypes[kind].append(t)
    intp = numpy.dtype('p').type
    if intp not in sctypes['int']:  # only where intp is none of the sized types
        ints = sctypes['int']
        i = 0
        while i < len(ints) and intp(0).itemsize >= ints[i](0).itemsize:
            i += 1
        ints.insert(i, intp)
        sctypes['uint'].insert(i, numpy.dtype('P').type)
    return sctypes


def _importable(name):
    """Whether `import name` can succeed, without importing it."""
    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


def _stub_module(name, doc):
    module = types.ModuleType(name, 'chainerkfac._compat stub: ' + doc)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    return module


def _stub_numpy_distutils_system_info():
    """Stub numpy.distutils.system_info where NumPy ships none; True if stubbed."""
    if 'numpy.distutils.system_info' in sys.modules or _importable('numpy.distutils'):
        return False  # the real one (Python <= 3.11): Chainer imports it itself
    distutils = sys.modules.get('numpy.distutils')
    if distutils is None:
        distutils = _stub_module('numpy.distutils', 'only system_info, for Chainer.')
        distutils.__path__ = []
        distutils.__spec__.submodule_search_locations = []
        sys.modules['numpy.distutils'] = distutils
        numpy.distutils = distutils
    info = _stub_module('numpy.distutils.system_info', 'get_info() finds nothing.')
    info.get_info = lambda name, notfound_action=0: {}
    distutils.system_info = info
    sys.modules['numpy.distutils.system_info'] = info
    return True


def _check_chainer_version():
    try:
        from importlib.metadata import PackageNotFoundError, version
        found = version('chainer')
    except (ImportError, PackageNotFoundError):
        return  # not installed: `import chainer` gives its own error
    if not found.startswith(_SUPPORTED_CHAINER):
        raise ImportError(
            'chainerkfac runs Chainer on NumPy %s only for Chainer 7.8.1, found '
            'Chainer %s: install chainer==7.8.1' % (numpy.__version__, found))


def _check_pkg_resources():
    if not _importable('pkg_resources'):
        raise ImportError(
            "Chainer 7.8.1 imports pkg_resources (chainer/_environment_check.py, "
            "chainer.testing), which setuptools 82 removed: "
            "pip install 'setuptools<82'")


def patch_numpy_for_chainer():
    """Restore what Chainer 7.8.1 needs from NumPy 1 (see the module docstring).

    Idempotent; does nothing on NumPy 1.x. Returns the names it added.
    """
    _check_pkg_resources()
    if _numpy_major() < 2:
        return []
    _check_chainer_version()
    added = []
    if 'sctypes' not in vars(numpy):
        numpy.sctypes = _sctypes()
        added.append('numpy.sctypes')
    if _stub_numpy_distutils_system_info():
        added.append('numpy.distutils.system_info')
    return added


patch_numpy_for_chainer()
