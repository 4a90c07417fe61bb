"""The one launcher of the project's CUDA kernels, on a GPU or emulated.

Every kernel in ``kernels/*.cu`` is ``extern "C" __global__ void name(...)``.
Its signature, parsed from the ``.cu`` text, is the single source of truth
for what a call must pass:

* a pointer parameter takes a C-contiguous array of exactly the C type's
  dtype (``float`` float32, ``double`` float64, ``__half`` float16, ``int``
  int32, ``long long`` int64, ``unsigned long long`` uint64), with exactly the
  element count written after it as a comment, ``const float* x /* [4 * n]
  */``, an integer expression over the scalar parameters; ``/* [n] or null
  */`` also accepts :data:`NULL`, the explicit null pointer. ``None`` is
  refused everywhere (see :data:`NULL`). Arrays written by the kernel (no
  ``const``) must be writeable;
* a scalar parameter takes exactly the NumPy scalar type of its C type
  (``numpy.int32`` for ``int``, never a Python int: CuPy would pass that as
  64 bits);
* ``grid`` and ``block`` are positive ints, ``block <= 1024``.

A call ``kernel(grid, block, args)`` with CuPy arrays launches
``RawModule.get_function(name)((grid,), (block,), args)``; with NumPy arrays
it runs the emulated build: g++ compiles the ``.cu`` with ``-include
emulation.h`` and a launcher generated from the parsed signature, which runs
every (block, thread) of the 1-D grid one after the other; the shared
library is cached by a hash of all sources, flags and the compiler version.
"""
import ast
import contextlib
import ctypes
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading

import numpy

try:
    import cupy
except ImportError:  # pragma: no cover - depends on the installation
    cupy = None

HERE = os.path.dirname(os.path.abspath(__file__))
KERNEL_DIR = os.path.join(HERE, 'kernels')
EMULATION_HEADER = os.path.join(HERE, 'emulation.h')

MAX_BLOCK = 1024
MAX_GRID = 2 ** 31 - 1

#: C type -> (NumPy dtype, ctypes type of a scalar). ``__half`` scalars have
#: no ctypes type and are refused by the parser.
C_TYPES = {
    'float': (numpy.dtype(numpy.float32), ctypes.c_float),
    'double': (numpy.dtype(numpy.float64), ctypes.c_double),
    '__half': (numpy.dtype(numpy.float16), None),
    'int': (numpy.dtype(numpy.int32), ctypes.c_int),
    'long long': (numpy.dtype(numpy.int64), ctypes.c_longlong),
    'unsigned long long': (numpy.dtype(numpy.uint64), ctypes.c_ulonglong),
}
_INTEGER_TYPES = ('int', 'long long', 'unsigned long long')

#: The null pointer argument of a kernel: 0 of the pointer-sized unsigned
#: type, passed by value. ``None`` is no null pointer: CuPy 13.6 turns a
#: ``None`` argument into a null entry of the kernel's parameter array, so
#: the kernel reads its pointer from address 0 and gets garbage
#: (cupy/cupy#9046, fixed in CuPy 14.0). A NumPy ``uint64`` scalar is
#: passed as its 8 bytes by every CuPy: 13.6 (``cupy/cuda/function.pyx``,
#: ``_pointer``: an 8-byte NumPy scalar becomes ``CInt64``) and 14.x
#: (``_scalar.CScalar``). The emulated launch hands it to ctypes as 0, a
#: null ``void*``.
NULL = numpy.uintp(0)
assert numpy.dtype(numpy.uintp).itemsize == ctypes.sizeof(ctypes.c_void_p)


def is_null(value):
    """Whether ``value`` is :data:`NULL` (a ``numpy.uintp`` 0)."""
    return type(value) is numpy.uintp and int(value) == 0


#: NVRTC options of the GPU build. No multiply-add contraction, so that a GPU
#: run rounds like the emulation and the NumPy reference. (CuPy 14's RawModule
#: appends -ftz=true: on the GPU, float32 subnormals flush to zero; apart
#: from those, results are the emulation's, bit for bit.)
NVRTC_OPTIONS = ('-std=c++17', '--fmad=false')
CXX_FLAGS = ('-std=c++17', '-O2', '-fPIC', '-shared', '-ffp-contract=off',
             '-fno-fast-math', '-w')


class KernelCompileError(RuntimeError):
    """g++ (emulation) failed; the message holds its output."""


class CudaIncludeError(RuntimeError):
    """No folder with ``cuda_fp16.h`` was found."""


# --------------------------------------------------------------------------
# Parsing


class Param(object):
    """One kernel parameter.

    Attributes:
        name (str), ctype (str): e.g. ``'n'``, ``'long long'``.
        pointer (bool), const (bool): ``const T*`` is ``pointer and const``.
        size (str or None): the annotation's expression (pointers only).
        nullable (bool): the annotation ends in ``or null``.
    """

    def __init__(self, name, ctype, pointer, const, size=None,
                 nullable=False):
        self.name = name
        self.ctype = ctype
        self.pointer = pointer
        self.const = const
        self.size = size
        self.nullable = nullable
        self.dtype = C_TYPES[ctype][0]
        self._size_code = None

    def declaration(self, name):
        """C declaration of this parameter under another ``name``."""
        text = ('const ' if self.const else '') + self.ctype
        return text + ('* ' if self.pointer else ' ') + name

    def count(self, scalars):
        """Element count the annotation gives for ``scalars`` (name -> int)."""
        return _evaluate(self._size_code, scalars)

    def __repr__(self):
        return 'Param({!r}, {!r}, pointer={}, const={}, size={!r}, ' \
               'nullable={})'.format(self.name, self.ctype, self.pointer,
                                     self.const, self.size, self.nullable)


def _mask_comments(text):
    """``text`` with every comment blanked to spaces (same length, newlines
    kept); string literals are skipped, not blanked."""
    out = list(text)
    i, n = 0, len(text)
    while i < n:
        if text.startswith('/*', i) or text.startswith('//', i):
            if text[i + 1] == '*':
                end = text.find('*/', i + 2)
                end = n if end < 0 else end + 2
            else:
                end = text.find('\n', i)
                end = n if end < 0 else end
            for j in range(i, end):
                if out[j] != '\n':
                    out[j] = ' '
            i = end
        elif text[i] == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == '\\' else 1
            i += 1
        else:
            i += 1
    return ''.join(out)


_KERNEL_RE = re.compile(
    r'extern\s+"\s*C\s*"\s+__global__\s+void\s+([A-Za-z_]\w*)\s*\(')
_ANNOTATION_RE = re.compile(r'^\s*\[(.+)\]\s*(or\s+null)?\s*$', re.S)
_ALLOWED_NODES = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Name,
                  ast.Constant, ast.Load, ast.Add, ast.Sub, ast.Mult,
                  ast.Div, ast.FloorDiv, ast.Mod, ast.USub, ast.UAdd)


def _compile_size(expr, scalar_types, where):
    try:
        tree = ast.parse(expr.strip(), mode='eval')
    except SyntaxError:
        raise ValueError('{}: size annotation [{}] is not an expression'
                         .format(where, expr))
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            raise ValueError('{}: size annotation [{}] may only use + - * / '
                             '% ( ), integers and scalar parameters'
                             .format(where, expr))
        if isinstance(node, ast.Constant) and (
                type(node.value) is not int):
            raise ValueError('{}: size annotation [{}] has a non-integer '
                             'constant'.format(where, expr))
        if isinstance(node, ast.Name):
            if node.id not in scalar_types:
                raise ValueError('{}: size annotation [{}] names {!r}, which '
                                 'is no scalar parameter of the kernel'
                                 .format(where, expr, node.id))
            if scalar_types[node.id] not in _INTEGER_TYPES:
                raise ValueError('{}: size annotation [{}] uses {!r}, which '
                                 'is not an integer'
                                 .format(where, expr, node.id))
    return tree.body


def _evaluate(node, values):
    """Integer value of a checked annotation; ``/`` divides like C on the
    non-negative counts used here (floor)."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return values[node.id]
    if isinstance(node, ast.UnaryOp):
        v = _evaluate(node.operand, values)
        return -v if isinstance(node.op, ast.USub) else v
    left, right = _evaluate(node.left, values), _evaluate(node.right, values)
    op = node.op
    if isinstance(op, ast.Add):
        return left + right
    if isinstance(op, ast.Sub):
        return left - right
    if isinstance(op, ast.Mult):
        return left * right
    if right == 0:
        raise ValueError('division by zero in a size annotation')
    if isinstance(op, ast.Mod):
        return left % right
    return left // right


def _parse_param(text, masked, kernel, where):
    comments = re.findall(r'/\*(.*?)\*/', text, re.S)
    decl = ' '.join(masked.split())
    if not decl:
        raise ValueError('{}: empty parameter in kernel {}'.format(
            where, kernel))
    tokens = re.findall(r'[A-Za-z_]\w*|\*|\S', decl)
    if not tokens or not re.match(r'[A-Za-z_]\w*$', tokens[-1]):
        raise ValueError('{}: kernel {}: cannot read parameter {!r}'
                         .format(where, kernel, decl))
    name = tokens[-1]
    stars = tokens.count('*')
    if stars > 1:
        raise ValueError('{}: kernel {}: parameter {} is a pointer to a '
                         'pointer'.format(where, kernel, name))
    pointer = stars == 1
    before = tokens[:tokens.index('*')] if pointer else tokens[:-1]
    after = tokens[tokens.index('*') + 1:-1] if pointer else []
    const = 'const' in before
    words = [t for t in before if t not in ('const', '__restrict__')]
    if [t for t in after if t not in ('const', '__restrict__')]:
        raise ValueError('{}: kernel {}: cannot read parameter {!r}'
                         .format(where, kernel, decl))
    ctype = ' '.join(words)
    if ctype not in C_TYPES:
        raise ValueError('{}: kernel {}: parameter {} has type {!r}; '
                         'supported: {}'.format(where, kernel, name, ctype,
                                                ', '.join(C_TYPES)))
    if not pointer and C_TYPES[ctype][1] is None:
        raise ValueError('{}: kernel {}: scalar parameter {} of type {} is '
                         'not supported'.format(where, kernel, name, ctype))
    size, nullable = None, False
    if pointer:
        found = [m for m in (_ANNOTATION_RE.match(c) for c in comments) if m]
        if len(found) != 1:
            raise ValueError(
                '{}: kernel {}: pointer parameter {} needs one size '
                'annotation such as /* [n] */ or /* [n] or null */'
                .format(where, kernel, name))
        size, nullable = found[0].group(1).strip(), bool(found[0].group(2))
    return Param(name, ctype, pointer, const, size, nullable)


def parse_signatures(source, filename='<source>'):
    """Parses every ``extern "C" __global__`` kernel of a CUDA source.

    Args:
        source (str): CUDA C text.
        filename (str): used in error messages.

    Returns:
        dict: kernel name -> list of :class:`Param`, in source order.

    Raises:
        ValueError: a signature that breaks the rules of this module.
    """
    masked = _mask_comments(source)
    kernels = {}
    for match in _KERNEL_RE.finditer(masked):
        name = match.group(1)
        where = '{}:{}'.format(filename, masked.count('\n', 0,
                                                      match.start()) + 1)
        start = match.end()
        depth, end = 1, start
        while depth and end < len(masked):
            depth += {'(': 1, ')': -1}.get(masked[end], 0)
            end += 1
        if depth:
            raise ValueError('{}: unclosed parameter list of kernel {}'
                             .format(where, name))
        end -= 1
        pieces, last, depth = [], start, 0
        for i in range(start, end):
            ch = masked[i]
            depth += {'(': 1, ')': -1}.get(ch, 0)
            if ch == ',' and depth == 0:
                pieces.append((last, i))
                last = i + 1
        pieces.append((last, end))
        if len(pieces) == 1 and not masked[start:end].strip():
            pieces = []
        params = [_parse_param(source[a:b], masked[a:b], name, where)
                  for a, b in pieces]
        names = [p.name for p in params]
        if len(set(names)) != len(names):
            raise ValueError('{}: kernel {} repeats a parameter name'
                             .format(where, name))
        scalar_types = {p.name: p.ctype for p in params if not p.pointer}
        for p in params:
            if p.pointer:
                p._size_code = _compile_size(
                    p.size, scalar_types,
                    '{}: kernel {}, parameter {}'.format(where, name, p.name))
        if name in kernels:
            raise ValueError('{}: kernel {} is defined twice'.format(
                where, name))
        kernels[name] = params
    return kernels


# --------------------------------------------------------------------------
# Include folders


def _cupy_bundled_dirs():  # pragma: no cover - needs CuPy
    if cupy is None:
        return []
    root = os.path.join(os.path.dirname(cupy.__file__), '_core', 'include',
                        'cupy', '_cuda')
    try:
        version = cupy.cuda.runtime.runtimeGetVersion()
    except Exception:
        return []
    major, minor = version // 1000, (version % 1000) // 10
    return [os.path.join(root, 'cuda-{}.{}'.format(major, minor)),
            os.path.join(root, 'cuda-{}'.format(major))]


def include_candidates(with_cupy=True):
    """Folders searched for ``cuda_fp16.h``, in order:
    ``$CHAINERKFAC_CUDA_INCLUDE``, CuPy's bundled headers for its CUDA
    runtime (GPU only), ``$CUDA_PATH/include``, ``$CUDA_HOME/include``, the
    ``nvidia/*/include`` folders of pip CUDA wheels,
    ``/usr/local/cuda/include``.
    """
    dirs = []
    if os.environ.get('CHAINERKFAC_CUDA_INCLUDE'):
        dirs.append(os.environ['CHAINERKFAC_CUDA_INCLUDE'])
    if with_cupy:
        dirs.extend(_cupy_bundled_dirs())
    for var in ('CUDA_PATH', 'CUDA_HOME'):
        if os.environ.get(var):
            dirs.append(os.path.join(os.environ[var], 'include'))
    for entry in sys.path:
        if entry and os.path.isdir(os.path.join(entry, 'nvidia')):
            dirs.extend(sorted(glob.glob(
                os.path.join(entry, 'nvidia', '*', 'include'))))
    dirs.append('/usr/local/cuda/include')
    return dirs


#: Headers that ``cuda_fp16.h`` of CUDA 12.2+ includes in turn.
COMPANION_HEADERS = ('vector_types.h', os.path.join('crt', 'host_defines.h'))


def cuda_include_dirs(with_cupy=True):
    """Include folders for a build: the first candidate holding
    ``cuda_fp16.h``, then, for each of :data:`COMPANION_HEADERS` that it
    lacks (a pip wheel may ship only part of the toolkit's headers), the
    first candidate holding that header.

    Raises:
        CudaIncludeError: no candidate holds ``cuda_fp16.h``.
    """
    candidates = include_candidates(with_cupy)

    def has(folder, header):
        return os.path.isfile(os.path.join(folder, header))

    found = [d for d in candidates if has(d, 'cuda_fp16.h')]
    if not found:
        raise CudaIncludeError(
            'cuda_fp16.h (needed by the chainerkfac CUDA kernels) is in none '
            'of: {}. Install the CUDA toolkit headers (or the nvidia-cuda-'
            'runtime wheel) or set CHAINERKFAC_CUDA_INCLUDE to the folder '
            'that holds cuda_fp16.h.'.format(', '.join(candidates)))
    dirs = [found[0]]
    for header in COMPANION_HEADERS:
        if not any(has(d, header) for d in dirs):
            extra = [d for d in candidates if has(d, header)]
            dirs.extend(extra[:1])
    return dirs


def nvrtc_options():
    """The options of the GPU build: :data:`NVRTC_OPTIONS` and ``-I`` for
    each of :func:`cuda_include_dirs`.

    Raises:
        CudaIncludeError: no ``cuda_fp16.h``.
    """
    return NVRTC_OPTIONS + tuple(
        '-I' + d for d in cuda_include_dirs(with_cupy=True))


#: What every kernel here needs of NVRTC: ``cuda_fp16.h`` and ``__half``.
PROBE_SOURCE = ('#include <cuda_fp16.h>\n'
                'extern "C" __global__ void chainerkfac_probe(__half* x) '
                '{ x[0] = __float2half(1.0f); }\n')


def check_nvrtc(nvrtc):
    """Compiles :data:`PROBE_SOURCE` with the GPU build's options through
    ``nvrtc`` (CuPy's ``cupy_backends.cuda.libs.nvrtc``), as the first
    kernel launch will; needs no device (about 0.1 s).

    Raises:
        CudaIncludeError: no ``cuda_fp16.h``.
        RuntimeError: NVRTC failed; the message has the first line of its
            log.
    """
    options = list(nvrtc_options())
    program = nvrtc.createProgram(PROBE_SOURCE, 'chainerkfac_probe.cu', [],
                                  [])
    try:
        try:
            nvrtc.compileProgram(program, options)
        except Exception as e:
            log = (nvrtc.getProgramLog(program) or str(e)).strip()
            raise RuntimeError('NVRTC cannot compile a kernel with {}: {}'
                               .format(' '.join(options),
                                       (log.splitlines() or [''])[0]))
    finally:
        nvrtc.destroyProgram(program)


# --------------------------------------------------------------------------
# Emulated build


def cache_dir():
    """``$CHAINERKFAC_CACHE_DIR`` or ``~/.cache/chainerkfac``."""
    path = os.environ.get('CHAINERKFAC_CACHE_DIR')
    if not path:
        path = os.path.join(os.path.expanduser('~'), '.cache', 'chainerkfac')
    return path


def compiler():
    """The C++ compiler of the emulated build: ``$CXX`` or ``g++``."""
    return os.environ.get('CXX') or 'g++'


_compiler_versions = {}


def _compiler_version(cxx):
    if cxx not in _compiler_versions:
        path = shutil.which(cxx)
        if path is None:
            raise KernelCompileError(
                'the emulated kernels need a C++ compiler; {!r} is not on the '
                'PATH (set CXX)'.format(cxx))
        out = subprocess.run([path, '--version'], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, check=False)
        _compiler_versions[cxx] = path + '\n' + out.stdout.decode(
            errors='replace')
    return _compiler_versions[cxx]


def emulation_source(source, kernels, filename):
    """The ``.cu`` text followed by one ``extern "C" void emu_<name>(unsigned
    grid, unsigned block, <params>)`` per kernel, which sets gridDim/blockDim
    and calls the kernel for every block and thread in turn."""
    lines = ['#line 1 "{}"'.format(filename), source, '',
             '#line 1 "<generated emulation launchers>"']
    for name, params in kernels.items():
        names = ['p{}'.format(i) for i in range(len(params))]
        decls = ''.join(', ' + p.declaration(n)
                        for p, n in zip(params, names))
        lines += [
            'extern "C" void emu_{}(unsigned int grid, unsigned int block{}) '
            '{{'.format(name, decls),
            '  gridDim = {grid, 1u, 1u};',
            '  blockDim = {block, 1u, 1u};',
            '  for (unsigned int b = 0; b < grid; ++b) {',
            '    blockIdx = {b, 0u, 0u};',
            '    for (unsigned int t = 0; t < block; ++t) {',
            '      threadIdx = {t, 0u, 0u};',
            '      {}({});'.format(name, ', '.join(names)),
            '    }',
            '  }',
            '}',
        ]
    return '\n'.join(lines) + '\n'


def build_emulated(source, kernels, filename, name):
    """Compiles (or finds in the cache) the emulated build of a source.

    Returns:
        str: path of the shared library.

    Raises:
        KernelCompileError: g++ failed (its message is included).
        CudaIncludeError: no ``cuda_fp16.h``.
    """
    cxx = compiler()
    text = emulation_source(source, kernels, filename)
    with open(EMULATION_HEADER) as f:
        header = f.read()
    includes = cuda_include_dirs(with_cupy=False)
    fp16 = os.path.join(includes[0], 'cuda_fp16.h')
    stat = os.stat(fp16)
    key = hashlib.sha256('\0'.join(
        [text, header, _compiler_version(cxx), ' '.join(CXX_FLAGS),
         repr(includes), str(stat.st_size), str(stat.st_mtime_ns)]
    ).encode()).hexdigest()[:24]
    folder = cache_dir()
    os.makedirs(folder, exist_ok=True)
    target = os.path.join(folder, '{}-{}.so'.format(name, key))
    if os.path.exists(target):
        return target
    fd, src_path = tempfile.mkstemp(suffix='.cpp', prefix=name + '-',
                                    dir=folder)
    so_fd, so_path = tempfile.mkstemp(suffix='.so.tmp', prefix=name + '-',
                                      dir=folder)
    os.close(so_fd)
    try:
        with os.fdopen(fd, 'w') as f:
            f.write(text)
        command = ([cxx] + list(CXX_FLAGS)
                   + ['-I' + d for d in includes]
                   + ['-include', EMULATION_HEADER, '-x', 'c++', src_path,
                      '-o', so_path])
        proc = subprocess.run(command, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, check=False)
        if proc.returncode != 0:
            raise KernelCompileError(
                'emulated build of {} failed ({}):\n{}'.format(
                    filename, ' '.join(command),
                    proc.stdout.decode(errors='replace')))
        os.replace(so_path, target)  # atomic: a racing build is harmless
    finally:
        for path in (src_path, so_path):
            if os.path.exists(path):
                os.unlink(path)
    return target


# --------------------------------------------------------------------------
# Kernels and modules


def _array_kind(value):
    """``'cpu'`` for a NumPy array, ``'gpu'`` for a CuPy array, else None."""
    if isinstance(value, numpy.ndarray):
        return 'cpu'
    if cupy is not None and isinstance(value, cupy.ndarray):
        return 'gpu'
    return None


def _gpu_device_error(array):  # pragma: no cover - needs a GPU
    """None if ``array`` is on the current device, else what is wrong."""
    current = cupy.cuda.runtime.getDevice()
    if array.device.id != current:
        return 'is on GPU {}, the current device is GPU {}'.format(
            array.device.id, current)
    return None


def _is_int(value):
    return (isinstance(value, (int, numpy.integer))
            and not isinstance(value, (bool, numpy.bool_)))


def _type_name(value):
    cls = type(value)
    if cls.__module__ in ('builtins', None):
        return cls.__name__
    return '{}.{}'.format(cls.__module__, cls.__name__)


def _launch_gpu(kernel, grid, block, args):
    """The GPU launch: ``get_function(name)((grid,), (block,), args)``
    (checked arguments: arrays, NumPy scalars and :data:`NULL`, never
    ``None``)."""
    kernel._gpu_function()((int(grid),), (int(block),), tuple(args))


class Kernel(object):
    """One ``extern "C" __global__`` kernel of a :class:`Module`.

    ``kernel(grid, block, args)`` checks ``args`` against :attr:`params`
    and launches on the GPU (CuPy arrays) or the emulated build (NumPy).
    """

    def __init__(self, module, name, params):
        self.module = module
        self.name = name
        self.params = params

    def __repr__(self):
        return '<Kernel {} of {}>'.format(self.name, self.module.filename)

    def _error(self, param, message, cls=TypeError):
        return cls('kernel {}: parameter {} ({}{}): {}'.format(
            self.name, param.name, param.ctype, '*' if param.pointer else '',
            message))

    def check(self, grid, block, args):
        """Checks a call; returns ``'cpu'`` or ``'gpu'``.

        Raises:
            TypeError: wrong argument count, scalar type, array type or
                dtype, NumPy and CuPy arrays mixed, ``None`` for a pointer
                (always), :data:`NULL` where the annotation has no
                ``or null``.
            ValueError: non-contiguous, read-only output, wrong element
                count, array on another GPU, bad grid or block.
        """
        for label, value, top in (('grid', grid, MAX_GRID),
                                  ('block', block, MAX_BLOCK)):
            if not _is_int(value):
                raise TypeError('kernel {}: {} must be an int, got {}'.format(
                    self.name, label, type(value).__name__))
            if not 1 <= value <= top:
                raise ValueError('kernel {}: {} must be in [1, {}], got {}'
                                 .format(self.name, label, top, value))
        if not isinstance(args, (tuple, list)):
            raise TypeError('kernel {}: args must be a tuple or list'.format(
                self.name))
        if len(args) != len(self.params):
            raise TypeError('kernel {} takes {} arguments ({}), got {}'.format(
                self.name, len(self.params),
                ', '.join(p.name for p in self.params), len(args)))
        scalars = {}
        for p, value in zip(self.params, args):
            if p.pointer:
                continue
            if type(value) is not p.dtype.type:
                raise self._error(p, 'needs numpy.{}, got {}'.format(
                    p.dtype.name, _type_name(value)))
            if p.ctype in _INTEGER_TYPES:
                scalars[p.name] = int(value)
        kinds = set()
        for p, value in zip(self.params, args):
            if not p.pointer:
                continue
            if value is None:
                raise self._error(p, 'got None; an absent pointer is '
                                     'launcher.NULL (CuPy 13.6 passes None '
                                     'as garbage, not as a null pointer)')
            if is_null(value):
                if not p.nullable:
                    raise self._error(p, 'got NULL, but the annotation does '
                                         'not allow null')
                continue
            kind = _array_kind(value)
            if kind is None:
                raise self._error(p, 'needs a NumPy or CuPy array{}, got {}'
                                  .format(' or launcher.NULL' if p.nullable
                                          else '', _type_name(value)))
            kinds.add(kind)
            if value.dtype != p.dtype:
                raise self._error(p, 'needs dtype {}, got {}'.format(
                    p.dtype.name, value.dtype.name))
            if not value.flags.c_contiguous:
                raise self._error(p, 'needs a C-contiguous array',
                                  ValueError)
            expected = p.count(scalars)
            if value.size != expected:
                raise self._error(p, 'needs [{}] = {} elements, got {}'.format(
                    p.size, expected, value.size), ValueError)
            if kind == 'cpu' and not p.const and not value.flags.writeable:
                raise self._error(p, 'is written by the kernel, got a '
                                     'read-only array', ValueError)
            if kind == 'gpu':
                problem = _gpu_device_error(value)
                if problem:  # pragma: no cover - needs two GPUs
                    raise self._error(p, problem, ValueError)
        if len(kinds) > 1:
            raise TypeError('kernel {}: NumPy and CuPy arrays mixed in one '
                            'call'.format(self.name))
        if not kinds:
            raise TypeError('kernel {}: no array argument to tell the device'
                            .format(self.name))
        return kinds.pop()

    def __call__(self, grid, block, args):
        kind = self.check(grid, block, args)
        if kind == 'gpu':
            _launch_gpu(self, grid, block, args)
        else:
            self._launch_emulated(grid, block, args)

    def _launch_emulated(self, grid, block, args):
        function = self.module._emulated_function(self.name)
        converted = []
        for p, value in zip(self.params, args):
            if p.pointer:
                # NULL: 0, which ctypes passes as a null void*
                converted.append(int(value) if is_null(value)
                                 else value.ctypes.data)
            else:
                converted.append(value.item())
        function(int(grid), int(block), *converted)

    def _gpu_function(self):  # pragma: no cover - needs a GPU
        return self.module._gpu_function(self.name)


class Module(object):
    """The kernels of one CUDA source (a ``.cu`` file or inline text).

    Args:
        source (str): CUDA C text.
        filename (str): its path (messages, ``#line``) or a label.
        name (str): name of the cached emulated build.
    """

    def __init__(self, source, filename='<source>', name=None):
        self.source = source
        self.filename = filename
        self.name = name or re.sub(r'\W', '_', os.path.splitext(
            os.path.basename(filename))[0]) or 'module'
        self.signatures = parse_signatures(source, filename)
        self.kernels = {n: Kernel(self, n, params)
                        for n, params in self.signatures.items()}
        self._lock = threading.Lock()
        self._library = None
        self._functions = {}
        self._gpu_modules = {}

    @classmethod
    def from_file(cls, path):
        with open(path) as f:
            return cls(f.read(), path)

    def __getitem__(self, name):
        try:
            return self.kernels[name]
        except KeyError:
            raise KeyError('{} has no kernel {!r} (it has: {})'.format(
                self.filename, name, ', '.join(self.kernels)))

    def _emulated_function(self, name):
        with self._lock:
            if name not in self._functions:
                if self._library is None:
                    self._library = ctypes.CDLL(build_emulated(
                        self.source, self.signatures, self.filename,
                        self.name))
                function = getattr(self._library, 'emu_' + name)
                function.argtypes = (
                    [ctypes.c_uint, ctypes.c_uint]
                    + [ctypes.c_void_p if p.pointer else C_TYPES[p.ctype][1]
                       for p in self.signatures[name]])
                function.restype = None
                self._functions[name] = function
            return self._functions[name]

    def _gpu_function(self, name):  # pragma: no cover - needs a GPU
        device = cupy.cuda.runtime.getDevice()
        with self._lock:
            key = (device, name)
            if key not in self._gpu_modules:
                if device not in self._gpu_modules:
                    self._gpu_modules[device] = cupy.RawModule(
                        code=self.source, options=nvrtc_options())
                self._gpu_modules[key] = (
                    self._gpu_modules[device].get_function(name))
            return self._gpu_modules[key]


_modules = {}
_modules_lock = threading.Lock()


def kernel_files():
    """Paths of the project's ``.cu`` files."""
    return sorted(glob.glob(os.path.join(KERNEL_DIR, '*.cu')))


def module(name):
    """The :class:`Module` of ``kernels/<name>.cu`` (parsed once)."""
    with _modules_lock:
        if name not in _modules:
            path = os.path.join(KERNEL_DIR, name + '.cu')
            if not os.path.isfile(path):
                raise KeyError('no kernel file {}'.format(path))
            _modules[name] = Module.from_file(path)
        return _modules[name]


def kernel(module_name, kernel_name):
    """``module(module_name)[kernel_name]``."""
    return module(module_name)[kernel_name]


# --------------------------------------------------------------------------
# Emulation switch


_state = threading.local()


@contextlib.contextmanager
def emulate():
    """Within this block (this thread), the ops run NumPy inputs through the
    emulated kernels instead of the NumPy reference."""
    _state.depth = getattr(_state, 'depth', 0) + 1
    try:
        yield
    finally:
        _state.depth -= 1


def emulating():
    """Whether this thread is inside :func:`emulate`, or the process runs
    with ``CHAINERKFAC_EMULATE_KERNELS=1`` (whole runs, e.g. under
    ``mpiexec``, through the emulated kernels)."""
    return (getattr(_state, 'depth', 0) > 0
            or os.environ.get('CHAINERKFAC_EMULATE_KERNELS') == '1')
