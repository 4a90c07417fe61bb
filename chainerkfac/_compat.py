"""Run Chainer 7.8.1 and ChainerMN on NumPy 2, Python 3.12 and CuPy 14.

The one place that patches Chainer; nothing installed is edited. Import this
module before ``chainer`` (``chainerkfac/__init__.py`` does). Patches 1-4 are
compatibility patches, applied automatically: each mends one breakage, applies
only where that breakage can occur (or is a no-op elsewhere, as said), is
idempotent, and is tested in ``tests/test_compat.py``. Patch 5 changes
numerics, so it is applied only on request (:func:`use_float64_bn_statistics`;
``tests/test_bn_precision.py``).

NumPy, patched at once (before Chainer is imported), by
:func:`patch_numpy_for_chainer`:

1. ``numpy.sctypes`` (removed in NumPy 2.0):
   ``chainer/functions/array/as_strided.py`` reads ``np.sctypes['int']`` at
   import time, so ``import chainer`` fails without it, and
   ``np.sctypes['float']`` in ``F.as_strided``'s backward. Rebuilt exactly as
   NumPy 1.x built it (a dict of lists of scalar types). NumPy 2 only.
2. ``numpy.distutils.system_info``: ``chainer/_environment_check.py`` imports
   it at import time and calls ``get_info('blas_opt')`` only on macOS. NumPy
   ships no ``numpy.distutils`` for Python >= 3.12, NumPy 1.26 included.
   Whenever the real module cannot be imported, a stub module whose
   ``get_info`` returns ``{}`` ("nothing found") is put in ``sys.modules``;
   where it can (Python 3.11), it is imported here, its deprecation warning
   silenced, and left alone.

ChainerMN's ``chainermn.communicators._memory_utility``, patched when that
module is imported (an import hook installed here; at once if it already was),
by :func:`patch_chainermn_memory_utility`:

3. ``half`` in the batched pack/unpack kernels (``_cupy_batched_pack_params``
   and ``_cupy_batched_unpack_params``, CUDA sources compiled by
   ``chainer.cuda.raw``): they use ``half`` and include only
   ``<cupy/carray.cuh>``. CuPy <= 13's carray.cuh includes ``<cuda_fp16.h>``
   (which defines ``half``); CuPy 14's moved it to ``cupy/float16.cuh``, so
   NVRTC fails with ``identifier "half" is undefined``. The sources get
   ``#include <cuda_fp16.h>`` in front. Unconditional, because
   harmless: the header has include guards, CuPy <= 13 includes it anyway, and
   CuPy 14 resolves it for its own float16.cuh. Used by ChainerMN's flat and
   pure-NCCL communicators (batched copies), not by chainerkfac's own
   communicator.
4. ``copy=False`` in ``unpack_params``:
   ``xp.array(v, copy=False, dtype=other)`` (only with a transfer dtype other
   than the parameter's, e.g. an fp16 ``allreduce_grad_dtype``) meant "copy
   only if needed" in NumPy 1 / CuPy 13 and raises ``ValueError`` in NumPy 2 /
   CuPy 14, where a copy is needed (it always is
   here: the dtype differs). ``unpack_params`` is rebuilt from its own code
       with a
   view of ``chainer`` whose ``backend.get_array_module`` returns the array
   module with ``array(..., copy=False)`` mapped to ``asarray(...)``, the
   NumPy-1 meaning.
   Unconditional: identical behaviour where the old call worked.

Not applied at import: a numerics choice, not a compatibility fix. Chainer's
``chainer.functions.normalization.batch_normalization``, patched only when
:func:`use_float64_bn_statistics` (``chainerkfac.use_float64_bn_statistics()``,
which the project's entry points call) asks for it, and restored by
``use_float64_bn_statistics(False)``; ``import chainerkfac`` leaves every
model's BatchNormalization as Chainer computes it:

5. BatchNormalization's batch statistics on the CPU, accumulated in float64.
   ``GeneralBatchNormalizationImpl`` (the implementation used on NumPy arrays
   without iDeep) reduces over the batch axes (0, 2, 3) in float32:
   ``x.mean``/``x.var`` in the forward pass, ``gy.sum`` and
   ``(gy * x_hat).sum`` in the backward pass. Chainer's CPU convolution returns
   its output with the channels rolled to axis 1 (a C-contiguous (N, H, W, C)
   array seen as (N, C, H, W)), and NumPy reduces such an array by adding whole
   rows in order (no pairwise summation): at batch 32768 (4 channels of 7x7)
   the mean and variance are off by ~1e-4 and ~1e-3 relative, the normalised
   output by ~3e-3 absolute, and the error grows with the batch (C-contiguous
   inputs: ~2e-6 to 5e-6). ``get_mean_and_var`` and ``get_ggamma_and_gbeta``
       are replaced by the same sums accumulated in float64
   (``sum(..., dtype=float64)``; the variance as the sum of squared float32
   deviations from the rounded mean), returned in Chainer's dtypes: within
   ~1e-7 relative of a float64 computation (``tests/test_bn_precision.py``).
   Measured on the DemoCNN's three BN layers at batch 4096: a forward and
   backward pass takes the same time as unpatched to within 10% (either way);
   reducing a per-channel contiguous float32 copy instead was slower (the copy:
   1.5-2x the float64 mean and variance on the rolled layout) and less exact
   (~5e-7). NumPy only: on CuPy arrays the original methods run. Not covered
   (not used by a training step): iDeep's implementation and
   ``FixedBatchNormalizationGrad`` (the gradient through fixed, running
   statistics).

Not restored: ``numpy.float`` (read by ``F.resize_images``; removed in NumPy
1.24, so broken on NumPy 1.26 too), the ``numpy.Inf``/``NaN``/... aliases (read
only by ``chainerx``, which a pure-Python Chainer build disables), and
``numpy.meshgrid`` returning a tuple
(``chainer.distributions.Categorical.log_prob`` raises ``TypeError``). CuPy 14
has no ``cupy.cudnn``: Chainer then convolves without cuDNN and warns once, at
its first GPU use (``CHAINER_CUDNN=0`` silences it); nothing to patch.

``pkg_resources`` is not shimmed: ``import chainer``
(``_environment_check.py``) and ``chainer.testing``/``chainer.gradient_check``
import it and use its API, so ``setuptools<82`` (82 removed ``pkg_resources``)
must be installed; a clear ``ImportError`` says so. Chainer other than 7.8.x is
refused on NumPy 2 (only 7.8.1 was checked).
"""

import functools
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
import warnings

import numpy

_SUPPORTED_CHAINER = '7.8.'
_MEMORY_UTILITY = 'chainermn.communicators._memory_utility'
_BATCH_NORMALIZATION = 'chainer.functions.normalization.batch_normalization'
_FP16_INCLUDE = '#include <cuda_fp16.h>\n'
_HALF_KERNELS = ('_cupy_batched_pack_params', '_cupy_batched_unpack_params')
_PATCHED = '_chainerkfac_compat_patched'
_BN_METHODS = ('get_mean_and_var', 'get_ggamma_and_gbeta')


def _numpy_major():
    return int(numpy.__version__.split('.')[0])


# --- 1. numpy.sctypes --------------------------------------------------------

def _sctypes():
    """``numpy.sctypes`` as NumPy 1.x's ``numerictypes._set_array_types`` built
    it."""
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
    # only where intp is none of the sized types
    if intp not in sctypes['int']:
        ints = sctypes['int']
        i = 0
        while i < len(ints) and intp(0).itemsize >= ints[i](0).itemsize:
            i += 1
        ints.insert(i, intp)
        sctypes['uint'].insert(i, numpy.dtype('P').type)
    return sctypes


# --- 2. numpy.distutils.system_info ------------------------------------------

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


def _imports(name):
    """Import `name` as Chainer will (warnings silenced); whether that
    worked."""
    if sys.modules.get(name) is not None:
        return True
    try:
        with warnings.catch_warnings():
            # numpy.distutils' deprecation warning
            warnings.simplefilter('ignore')
            importlib.import_module(name)
        return True
    # ImportError; or a numpy.distutils broken some other way
    except Exception:
        return False


def _stub_numpy_distutils_system_info():
    """Stub numpy.distutils.system_info where it cannot be imported; True if
    stubbed."""
    if _imports('numpy.distutils.system_info'):
        # the real one (Python <= 3.11): Chainer imports it itself
        return False
    distutils = sys.modules.get('numpy.distutils')
    if distutils is None:
        distutils = _stub_module('numpy.distutils',
                                 'only system_info, for Chainer.')
        distutils.__path__ = []
        distutils.__spec__.submodule_search_locations = []
        sys.modules['numpy.distutils'] = distutils
        numpy.distutils = distutils
    info = _stub_module('numpy.distutils.system_info',
                        'get_info() finds nothing.')
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
            'chainerkfac runs Chainer on NumPy %s only for Chainer 7.8.1, '
            'found Chainer %s: install chainer==7.8.1'
            % (numpy.__version__, found))


def _check_pkg_resources():
    if not _importable('pkg_resources'):
        raise ImportError(
            "Chainer 7.8.1 imports pkg_resources "
            "(chainer/_environment_check.py, chainer.testing), which "
            "setuptools 82 removed: pip install 'setuptools<82'")


def patch_numpy_for_chainer():
    """Patches 1 and 2 (see the module docstring), before Chainer is imported.

    Idempotent. Changes nothing on NumPy 1.x with a working numpy.distutils
    (Python 3.11). Returns the names it added.
    """
    _check_pkg_resources()
    added = []
    if _numpy_major() >= 2:
        _check_chainer_version()
        if 'sctypes' not in vars(numpy):
            numpy.sctypes = _sctypes()
            added.append('numpy.sctypes')
    if _stub_numpy_distutils_system_info():
        added.append('numpy.distutils.system_info')
    return added


# --- 3. and 4. ChainerMN's _memory_utility -----------------------------------

def kernel_source(build):
    """``(source, name)`` that a ChainerMN kernel builder passes to
    ``chainer.cuda.raw``.

    `build` is ``_cupy_batched_pack_params`` or ``_cupy_batched_unpack_params``
    (as found in the module: patched or not). Runs its code with a ``chainer``
    whose ``cuda.raw`` only records, so nothing is compiled and no GPU is
    needed.
    """
    calls = []
    chainer_module = build.__globals__['chainer']

    def raw(code, name, *args, **kwargs):
        calls.append((code, name))

    recorder = _Overlay(chainer_module,
                        cuda=_Overlay(chainer_module.cuda, raw=raw))
    types.FunctionType(build.__code__,
                       dict(build.__globals__, chainer=recorder),
                       build.__name__, build.__defaults__, build.__closure__)()
    (code, name), = calls
    return code, name


class _Overlay(object):
    """`base`'s attributes, except those given as keyword arguments."""

    def __init__(self, base, **overrides):
        self.__dict__.update(overrides)
        self._base = base

    def __getattr__(self, name):
        return getattr(self._base, name)


def _raw_with_fp16_header():
    # the patched builders' code; globals set per kernel
    # chainer.cuda.raw compiles (and memoizes per source and name) the kernel.
    return chainer.cuda.raw(code, name)  # noqa: F821 (globals given below)


def _with_fp16_header(module, attr):
    """Patch 3 for one kernel builder; True if patched."""
    build = getattr(module, attr)
    if getattr(build, _PATCHED, False):
        return False
    code, name = kernel_source(build)
    if 'half' not in code or _FP16_INCLUDE in code:
        return False
    # A plain function of its own globals, so kernel_source() can read it too.
    patched = types.FunctionType(
        _raw_with_fp16_header.__code__,
        {'chainer': module.chainer, 'code': _FP16_INCLUDE + code,
         'name': name},
        attr)
    patched.__qualname__ = attr
    patched.__wrapped__ = build
    setattr(patched, _PATCHED, True)
    setattr(module, attr, patched)
    return True


class _CopyOnlyIfNeeded(object):
    """An array module whose ``array(x, copy=False, ...)`` is
    ``asarray(x, ...)``."""

    def __init__(self, xp):
        self._xp = xp

    def array(self, obj, *args, **kwargs):
        if 'copy' in kwargs and kwargs['copy'] is False:
            del kwargs['copy']
            return self._xp.asarray(obj, *args, **kwargs)
        return self._xp.array(obj, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._xp, name)


def _unpack_params_copy_if_needed(module):
    """Patch 4; True if patched."""
    unpack = module.unpack_params
    if getattr(unpack, _PATCHED, False):
        return False
    chainer = module.chainer

    def get_array_module(*args):
        return _CopyOnlyIfNeeded(chainer.backend.get_array_module(*args))

    # The function's own code, seeing this `chainer` (it uses only
    # chainer.backend.get_array_module) instead of the real one.
    view = _Overlay(chainer, backend=_Overlay(chainer.backend,
                                              get_array_module=get_array_module))
    patched = types.FunctionType(unpack.__code__,
                                 dict(unpack.__globals__, chainer=view),
                                 unpack.__name__, unpack.__defaults__,
                                 unpack.__closure__)
    patched.__doc__ = unpack.__doc__
    patched.__wrapped__ = unpack
    setattr(patched, _PATCHED, True)
    module.unpack_params = patched
    return True


def patch_chainermn_memory_utility(module=None):
    """Patches 3 and 4 on ``chainermn.communicators._memory_utility``.

    `module` defaults to the imported one. Idempotent; returns the names
    patched. A patch that does not fit (another ChainerMN) is skipped with a
    warning rather than breaking the import.
    """
    if module is None:
        module = sys.modules[_MEMORY_UTILITY]
    steps = [(attr, functools.partial(_with_fp16_header, module, attr))
             for attr in _HALF_KERNELS]
    steps.append(('unpack_params',
                  functools.partial(_unpack_params_copy_if_needed, module)))
    patched = []
    for attr, patch in steps:
        try:
            if patch():
                patched.append('%s.%s' % (_MEMORY_UTILITY, attr))
        # (a ChainerMN other than 7.8.1)
        except Exception as e:  # pragma: no cover
            warnings.warn('chainerkfac._compat: %s.%s left unpatched (%s: %s)'
                          % (_MEMORY_UTILITY, attr, type(e).__name__, e))
    return patched


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Runs ``patch(module)`` right after module `name` is executed by an
    import."""

    def __init__(self, name, patch):
        self.name = name
        self.patch = patch

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, 'find_spec'):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, 'exec_module'):
            spec.loader = _PatchingLoader(spec.loader, self.patch)
        return spec


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, loader, patch):
        self._loader = loader
        self._patch = patch

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        self._patch(module)

    def __getattr__(self, name):  # get_source, get_filename, ... (tracebacks)
        return getattr(self._loader, name)


# --- 5. BatchNormalization's CPU batch statistics ----------------------------

def _reduced_count(x, axis):
    count = 1
    for a in axis:
        count *= x.shape[a]
    return count


def _float64_mean_and_var(get_mean_and_var):
    """Patch 5's ``get_mean_and_var``: float64 sums on NumPy,
    `get_mean_and_var` (Chainer's own) elsewhere."""

    @functools.wraps(get_mean_and_var)
    def patched(self, axis, gamma, x, xp, interm_dtype):
        if xp is not numpy:
            return get_mean_and_var(self, axis, gamma, x, xp, interm_dtype)
        count = max(_reduced_count(x, axis), 1)
        mean = x.sum(axis=axis, dtype=numpy.float64, keepdims=True)
        mean /= count
        mean = mean.astype(interm_dtype)
        # one temporary of x's size, like NumPy's own var
        deviation = numpy.subtract(x, mean, dtype=interm_dtype)
        deviation *= deviation
        var = deviation.sum(axis=axis, dtype=numpy.float64)
        var /= count
        return mean.reshape(var.shape), var.astype(interm_dtype)

    setattr(patched, _PATCHED, True)
    return patched


def _float64_ggamma_and_gbeta(get_ggamma_and_gbeta):
    """Patch 5's ``get_ggamma_and_gbeta`` (the backward pass's batch sums)."""

    @functools.wraps(get_ggamma_and_gbeta)
    def patched(self, axis, gamma, gy, x_hat, xp):
        if xp is not numpy:
            return get_ggamma_and_gbeta(self, axis, gamma, gy, x_hat, xp)
        gbeta = gy.sum(axis=axis, dtype=numpy.float64).astype(gamma.dtype)
        ggamma = (gy * x_hat).sum(axis=axis, dtype=numpy.float64)
        return gbeta, ggamma.astype(gamma.dtype)

    setattr(patched, _PATCHED, True)
    return patched


def _batch_normalization_impl(module=None):
    if module is None:
        module = importlib.import_module(_BATCH_NORMALIZATION)
    return getattr(module, 'GeneralBatchNormalizationImpl', None)


def patch_batch_normalization(module=None):
    """Patch 5 on ``chainer.functions.normalization.batch_normalization``.

    `module` defaults to that module (imported if need be). Idempotent; returns
    the names patched. Skipped with a warning where the implementation class is
    not Chainer 7.8's. Called by :func:`use_float64_bn_statistics`, not at
    import.
    """
    impl = _batch_normalization_impl(module)
    patched = []
    for attr, wrap in zip(_BN_METHODS, (_float64_mean_and_var,
                                        _float64_ggamma_and_gbeta)):
        method = getattr(impl, attr, None)
        if method is None:  # pragma: no cover (a Chainer other than 7.8)
            warnings.warn('chainerkfac._compat: '
                          '%s.GeneralBatchNormalizationImpl.%s not found: '
                          'BatchNormalization left unpatched'
                          % (_BATCH_NORMALIZATION, attr))
            continue
        if getattr(method, _PATCHED, False):
            continue
        setattr(impl, attr, wrap(method))
        patched.append('%s.GeneralBatchNormalizationImpl.%s'
                       % (_BATCH_NORMALIZATION, attr))
    return patched


def unpatch_batch_normalization(module=None):
    """Undoes patch 5: Chainer's own methods again. Idempotent; returns the
    names restored."""
    impl = _batch_normalization_impl(module)
    restored = []
    for attr in _BN_METHODS:
        method = vars(impl).get(attr) if impl is not None else None
        if getattr(method, _PATCHED, False):
            setattr(impl, attr, method.__wrapped__)
            restored.append('%s.GeneralBatchNormalizationImpl.%s'
                            % (_BATCH_NORMALIZATION, attr))
    return restored


def float64_bn_statistics_enabled():
    """Whether Chainer's CPU BatchNormalization sums its batch statistics in
    float64 now (patch 5 applied)."""
    impl = _batch_normalization_impl()
    return impl is not None and all(
        getattr(vars(impl).get(attr), _PATCHED, False) for attr in _BN_METHODS)


def use_float64_bn_statistics(enabled=True):
    """Sums Chainer's CPU BatchNormalization batch statistics in float64.

    With ``enabled`` (the default), every ``BatchNormalization`` in the process
    that runs on NumPy arrays accumulates its batch mean and variance (forward)
    and its ``gamma``/``beta`` gradient sums (backward) in float64 and returns
    them in Chainer's dtypes (patch 5 above): within ~1e-7 relative of float64
    where Chainer's float32 sums are off by ~1e-4 at batch 32768, at no
    measurable cost. CuPy arrays are not affected. ``enabled=False`` restores
    Chainer's own float32 sums. ``import chainerkfac`` does neither; the
    project's entry points (``train_imagenet.py``, the examples, the
    benchmarks) call this first.

    Returns:
        bool: whether float64 sums were in use before the call, so that
        ``previous = use_float64_bn_statistics(); ...;
        use_float64_bn_statistics(previous)`` undoes it.
    """
    previous = float64_bn_statistics_enabled()
    if enabled:
        patch_batch_normalization()
    else:
        unpatch_batch_normalization()
    return previous


def _install_patch_on_import(name, patch):
    if sys.modules.get(name) is not None:
        patch(sys.modules[name])
    elif not any(isinstance(f, _PatchOnImport) and f.name == name
                 for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport(name, patch))


def _install_chainermn_patches():
    _install_patch_on_import(_MEMORY_UTILITY, patch_chainermn_memory_utility)


patch_numpy_for_chainer()
_install_chainermn_patches()
