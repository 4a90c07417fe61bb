"""Cholesky inverses of symmetric positive definite matrices, status on the
device.

Two implementations of one small interface, :class:`CholeskySolver`:

- :class:`LapackCholesky` (NumPy): LAPACK ``potrf`` then ``potri``, in place
  on the damped copy it is given (no identity, no triangular-solve buffers);
- :class:`CusolverCholesky` (CuPy): cuSOLVER ``potrf`` then ``potrs`` against
  the identity, the factorization's ``devInfo`` written straight into the
  caller's status array on the device. This adapter is the only code here
  that talks to cuSOLVER; everything above it is tested on the CPU through
  the LAPACK implementation.

Neither raises nor reads a value back to the host: failure is reported in
``status[slot]`` (0: success; > 0: the leading minor of that order is not
positive definite), so a training step inverts all its factors without a
host synchronisation and looks at the statuses once (see
:mod:`chainerkfac.step_status`).
"""
import numpy
from chainer import backend


class CholeskySolver(object):
    """Interface: ``inverse(matrix, status, slot)``.

    Args:
        matrix: symmetric ``(d, d)`` C-contiguous float32/float64 array; it is
            overwritten (pass a copy you no longer need).
        status: 1-D int32 array on the matrix's device.
        slot (int): where the factorization status goes.

    Returns:
        the ``(d, d)`` inverse (meaningless where ``status[slot] != 0``).
    """

    def inverse(self, matrix, status, slot):
        raise NotImplementedError


class LapackCholesky(CholeskySolver):
    """``potrf`` + ``potri`` from SciPy's LAPACK wrappers (CPU)."""

    def inverse(self, matrix, status, slot):
        from scipy.linalg import lapack
        potrf, potri = lapack.get_lapack_funcs(('potrf', 'potri'), (matrix,))
        # A symmetric C-contiguous matrix is its own Fortran-ordered
        # transpose: hand LAPACK the transpose view so nothing is copied.
        factor, info = potrf(matrix.T, lower=False, clean=False,
                             overwrite_a=True)
        if info != 0:
            status[slot] = info
            return matrix
        inverse, info = potri(factor, lower=False, overwrite_c=True)
        status[slot] = info
        # potri leaves the inverse in the upper triangle only: mirror it.
        upper = numpy.triu(inverse)
        upper += numpy.triu(inverse, 1).T
        return numpy.ascontiguousarray(upper)


class CusolverCholesky(CholeskySolver):  # pragma: no cover - needs a GPU
    """cuSOLVER ``potrf`` + ``potrs`` (GPU), workspaces kept per shape."""

    def __init__(self):
        self._workspaces = {}

    def inverse(self, matrix, status, slot):
        import cupy
        from cupy_backends.cuda.libs import cublas
        from cupy_backends.cuda.libs import cusolver
        from cupy.cuda import device

        d = matrix.shape[0]
        dtype = numpy.dtype(matrix.dtype)
        if dtype == numpy.float32:
            buffer_size, potrf, potrs = (cusolver.spotrf_bufferSize,
                                         cusolver.spotrf, cusolver.spotrs)
        elif dtype == numpy.float64:
            buffer_size, potrf, potrs = (cusolver.dpotrf_bufferSize,
                                         cusolver.dpotrf, cusolver.dpotrs)
        else:
            raise TypeError('chainerkfac: Cholesky of {} matrices is not '
                            'supported'.format(dtype))
        handle = device.get_cusolver_handle()
        # run on the stream CuPy's own kernels of this step use
        cusolver.setStream(handle, cupy.cuda.get_current_stream().ptr)
        uplo = cublas.CUBLAS_FILL_MODE_UPPER
        key = (cupy.cuda.Device().id, dtype.str, d)
        workspace = self._workspaces.get(key)
        if workspace is None:
            size = buffer_size(handle, uplo, d, matrix.data.ptr, d)
            workspace = cupy.empty(max(size, 1), dtype)
            scratch_info = cupy.zeros(1, numpy.int32)
            workspace = self._workspaces[key] = (workspace, scratch_info)
        work, scratch_info = workspace
        info_ptr = status.data.ptr + slot * status.itemsize
        potrf(handle, uplo, d, matrix.data.ptr, d, work.data.ptr, work.size,
              info_ptr)
        inverse = cupy.zeros((d, d), dtype)
        inverse.reshape(-1)[::d + 1] = 1
        # potrs's own info only reports invalid arguments: keep it apart
        # from potrf's status.
        potrs(handle, uplo, d, d, matrix.data.ptr, d, inverse.data.ptr, d,
              scratch_info.data.ptr)
        return inverse


_LAPACK = LapackCholesky()
_CUSOLVER = None


def solver_for(matrix):
    """The :class:`CholeskySolver` for ``matrix``'s array module."""
    global _CUSOLVER
    if backend.get_array_module(matrix) is numpy:
        return _LAPACK
    if _CUSOLVER is None:  # pragma: no cover - needs a GPU
        _CUSOLVER = CusolverCholesky()
    return _CUSOLVER  # pragma: no cover - needs a GPU
