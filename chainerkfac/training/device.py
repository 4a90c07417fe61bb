"""``--gpu`` for every entry point: pick this process's GPU or stop with one
line.

``train_imagenet.py``, ``examples/train_fashion_mnist.py`` and the benchmarks
all call :func:`select_gpu_or_exit`. Under MPI each rank takes its node-local
device (``comm.intra_rank``); the ranks first agree (one ``allgather``) on
whether all of them can, so that a node with too few GPUs stops every rank
instead of leaving the others waiting in a collective. When any rank cannot,
rank 0 prints ONE line naming the first rank's problem (CuPy missing, no CUDA
device, fewer devices than local ranks, a CUDA library that CuPy cannot load,
or a CuPy that Chainer 7.8.1 cannot use) and every rank exits with status 2.

cuDNN: Chainer 7.8.1 uses cuDNN only through ``cupy.cudnn``, which CuPy 14 no
longer has; there convolutions run as im2col + cuBLAS and the cuDNN settings
(``use_cudnn``, ``use_cudnn_tensor_core``) change nothing. cuBLAS uses Tensor
Cores for fp16 products by itself; for TF32 products in float32, CuPy reads
``CUPY_TF32=1`` from the environment when it is imported (set it before
starting).

Written and tested on a machine without a GPU: the failure paths are tested
with stand-in CuPy modules; the success path (device selection, ``describe``)
has not run on a GPU yet -- ``scripts/gpu_check.sh`` is the command that checks
it on one.
"""
import warnings

import chainer
import numpy

from chainerkfac import errors
from chainerkfac.cuda import availability

#: exit status of an entry point whose ``--gpu`` cannot be honoured
EXIT_STATUS = errors.EXIT_STATUS


class GPUUnavailable(RuntimeError):
    """No usable GPU for some rank; ``rank`` is the first such rank."""

    def __init__(self, message, rank=0):
        super(GPUUnavailable, self).__init__(message)
        self.rank = rank


def gpu_problem(n_devices=1):
    """Why this process cannot use ``n_devices`` GPUs of this node, or None.

    Checked in order: CuPy imports, ``cupy.is_available()``, the device count,
    the CUDA libraries training calls (cuBLAS, cuSOLVER, NVRTC: see
    :func:`chainerkfac.cuda.availability.library_problem`; CuPy 14 would
    otherwise first miss one at the first inversion), and whether Chainer's
    CUDA backend accepted that CuPy.
    """
    cupy, problem = availability.import_cupy()
    if problem:
        return problem
    version = getattr(cupy, '__version__', '?')
    try:
        if not cupy.is_available():
            return ('CuPy {} finds no usable CUDA device (cupy.is_available() '
                    'is False: no GPU, no driver, or CUDA_VISIBLE_DEVICES '
                    'hides them)'.format(version))
        count = int(cupy.cuda.runtime.getDeviceCount())
    except Exception as e:
        return 'CuPy {} cannot query CUDA devices ({})'.format(
            version, availability.one_line(e))
    if count < n_devices:
        return ('{} processes on this node need one GPU each, but CuPy {} '
                'sees {}'.format(n_devices, version, count))
    problem = availability.library_problem(availability.TRAINING_LIBRARIES,
                                           version)
    if problem:
        return problem
    from chainer.backends import cuda
    if not cuda.available:
        return 'Chainer {} cannot use CuPy {} ({})'.format(
            chainer.__version__, version,
            availability.one_line(getattr(cuda, '_resolution_error',
                                          'unknown reason')))
    return None


def configure_cudnn(use_tensor_core=False):
    """Chainer's cuDNN settings; returns whether cuDNN is in use at all.

    ``use_tensor_core`` (the original's ``--use_tensor_core``) sets
    ``use_cudnn_tensor_core = 'always'``; otherwise Chainer's default
    ``'auto'`` (Tensor Cores for fp16 only). Without cuDNN (CuPy 14) neither
    setting has an effect (see the module docstring).
    """
    from chainer.backends import cuda
    chainer.global_config.use_cudnn = 'auto'
    chainer.global_config.use_cudnn_tensor_core = (
        'always' if use_tensor_core else 'auto')
    if not cuda.cudnn_enabled:
        # Chainer warns once per process that cuDNN is off; describe() says it
        warnings.filterwarnings('ignore', message='cuDNN is not enabled')
    return bool(cuda.cudnn_enabled)


def select_gpu(comm=None, allow_shared=False, use_tensor_core=False):
    """This process's GPU as a Chainer device (made current).

    Args:
        comm: a ChainerMN communicator, or None for one process (device 0).
        allow_shared (bool): let several local ranks share the node's GPUs
            (rank ``intra_rank % count``); for tests on a one-GPU machine.
        use_tensor_core (bool): see :func:`configure_cudnn`.

    Raises:
        GPUUnavailable: on every rank, when any rank has no usable GPU.
    """
    local = comm.intra_rank if comm is not None else 0
    needed = 1 if allow_shared or comm is None else comm.intra_size
    rank, problem = errors.first_error(comm, gpu_problem(needed))
    if problem is not None:
        raise GPUUnavailable(problem, rank)
    import cupy
    device_id = local % int(cupy.cuda.runtime.getDeviceCount())
    device = chainer.get_device('@cupy:{}'.format(device_id))
    device.use()
    configure_cudnn(use_tensor_core)
    return device


def describe(device):
    """One line: the device's number and name, CuPy, CUDA and cuDNN."""
    import cupy
    from chainer.backends import cuda
    device_id = device.device.id
    props = cupy.cuda.runtime.getDeviceProperties(device_id)
    name = props['name']
    if isinstance(name, bytes):
        name = name.decode(errors='replace')
    runtime = cupy.cuda.runtime.runtimeGetVersion()
    return ('GPU {}: {} ({:.1f} GiB), CuPy {}, CUDA runtime {}.{}, cuDNN {}, '
            'use_cudnn_tensor_core={}'.format(
                device_id, name, props['totalGlobalMem'] / 2 ** 30,
                cupy.__version__, runtime // 1000, runtime % 1000 // 10,
                'on' if cuda.cudnn_enabled else 'none (convolutions: '
                'im2col + cuBLAS)', chainer.config.use_cudnn_tensor_core))


def on_device(converter, device):
    """``converter``'s arrays (``(x, t)`` or ``(x, t, labels)``) sent to
    ``device`` (``converter`` itself for None).

    For an old-style converter such as the augmenter (it would get a device
    number from the updater): the transfer is done here instead."""
    if device is None:
        return converter

    def convert(batch, _device=None):
        return tuple(device.send(a) for a in converter(batch))
    return convert


def synchronize(device):
    """Waits for the device's queued work (no-op for a CPU device or None)."""
    if device is not None and device.xp is not numpy:
        device.device.synchronize()


def select_gpu_or_exit(prog, comm=None, allow_shared=False,
                       use_tensor_core=False, option='--gpu', stream=None):
    """:func:`select_gpu`, or ONE line on stderr and exit status 2 on every
    rank.

    The line is ``PROG: error: OPTION: no usable GPU: ...`` (``error (rank
    R)`` under MPI, R the first rank without one); only rank 0 prints it. Every
    rank has already agreed inside :func:`select_gpu`, so all of them exit
    (after a barrier, so that rank 0's line is out before any rank ends).
    """
    try:
        return select_gpu(comm, allow_shared=allow_shared,
                          use_tensor_core=use_tensor_core)
    except GPUUnavailable as e:
        multi = comm is not None and comm.size > 1
        errors.exit_on_every_rank(
            prog, '{}: no usable GPU: {}'.format(option, e), comm,
            label='error (rank {})'.format(e.rank) if multi else 'error',
            stream=stream)
