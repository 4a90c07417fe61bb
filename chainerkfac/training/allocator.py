"""Keep glibc's freed heap memory in the process: no per-step page-fault churn
on CPU.

A CPU training step allocates and frees the same large buffers every step
(Chainer's im2col columns, activations and their gradients, our statistics). By
default glibc serves each allocation above its mmap threshold (128 KiB, rising
dynamically to at most 32 MiB) with a fresh ``mmap`` and returns it with
``munmap`` on ``free``, and it trims the top of the heap once more than that is
free: every step then faults all of those pages in again (and zeroes them) in
the kernel. At batch 4096 that system time dominates the step.

:func:`configure_allocator` calls glibc's ``mallopt`` from inside the process
(through ``ctypes``; no re-exec, no environment variables) with what the
environment variables
``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<huge> MALLOC_TOP_PAD_=<1 GiB>``
would set:

- ``M_MMAP_MAX = 0``: every allocation comes from the heap, which is reused;
- ``M_TRIM_THRESHOLD = -1``: the heap is never trimmed (mallopt(3): "-1
  disables trimming completely");
- ``M_TOP_PAD = 1 GiB``: the heap grows in large steps (address space only:
  pages are faulted in once, when first used).

The price: the process keeps its peak heap size until it exits (freed memory is
reused by the next step instead of going back to the system). Allocations made
before the call keep their mmaps and are unmapped when freed; everything later
comes from the heap, so calling it at the start of ``main()`` is enough.

Harmless on a GPU run: it changes where *host* ``malloc`` memory comes from,
nothing else. CuPy's device memory (its memory pool) and pinned host memory
(``cudaHostAlloc``) do not go through ``malloc``; the host side of a GPU step
allocates little. A no-op (returning False) where ``mallopt`` is not glibc's
(macOS, musl, Windows) and when ``CHAINERKFAC_DEFAULT_ALLOCATOR=1`` is set (the
benchmarks' "before" runs). Idempotent.
"""
import ctypes
import os
import sys

# glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4

#: the environment variable that leaves glibc's defaults in place
OPT_OUT = 'CHAINERKFAC_DEFAULT_ALLOCATOR'
#: M_TOP_PAD used by default (bytes)
TOP_PAD = 1 << 30

_configured = None


def _glibc():
    """glibc as a ctypes library, or None (another C library or platform)."""
    if not sys.platform.startswith('linux'):
        return None
    try:
        libc = ctypes.CDLL(None)  # the process's own C library
        version = libc.gnu_get_libc_version
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    version.restype = ctypes.c_char_p
    version.argtypes = []
    mallopt.restype = ctypes.c_int
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return libc


def glibc_version():
    """glibc's version string, or None where the C library is not glibc."""
    libc = _glibc()
    return None if libc is None else libc.gnu_get_libc_version().decode()


def configure_allocator(top_pad=TOP_PAD, force=False):
    """Sets glibc's malloc to keep and reuse freed memory; True if it did.

    Call it once, first thing in an entry point's ``main()``. Returns False
    (and changes nothing) without glibc, or when the environment variable
    ``CHAINERKFAC_DEFAULT_ALLOCATOR`` is ``1`` (unless ``force``). Raises
    ``OSError`` if glibc refuses a setting (it does not for these values).

    Args:
        top_pad (int): ``M_TOP_PAD`` in bytes, at most ``2**31 - 1``.
        force (bool): configure even when the opt-out variable is set.
    """
    global _configured
    if _configured is not None:
        return _configured
    if not force and os.environ.get(OPT_OUT, '') == '1':
        return False
    libc = _glibc()
    if libc is None:
        _configured = False
        return False
    for name, param, value in (('M_MMAP_MAX', M_MMAP_MAX, 0),
                               ('M_TRIM_THRESHOLD', M_TRIM_THRESHOLD, -1),
                               ('M_TOP_PAD', M_TOP_PAD, int(top_pad))):
        if libc.mallopt(param, value) != 1:
            raise OSError('glibc mallopt({}, {}) failed'.format(name, value))
    _configured = True
    return True


def is_configured():
    """Whether :func:`configure_allocator` changed the allocator here."""
    return bool(_configured)
