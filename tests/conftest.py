import os
import sys

import numpy
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Before any test module imports chainer: chainerkfac._compat makes Chainer
# 7.8.1 importable on NumPy 2 and Python 3.12, whatever order a module's
# own imports are in and whichever module pytest collects first.
import chainerkfac  # NOQA: E402,F401


def gpu_unavailable_reason():
    """Why tests marked ``gpu`` cannot run here, or None when they can.

    They need CuPy to import and ``cupy.is_available()`` (a CUDA device that
    the driver exposes). With CuPy installed but no driver, ``import cupy``
    works; ``cupy.is_available()`` is False with CuPy 14 and raises with CuPy
    13, and ``cupy.cuda.runtime.getDeviceCount()`` raises with both.
    """
    try:
        import cupy
    except Exception as e:  # ImportError, or a CUDA library that fails to load
        first_line = (str(e).splitlines() or [''])[0]
        return 'no CuPy (import cupy: %s: %s)' % (type(e).__name__, first_line)
    try:
        available = cupy.is_available()
    # CuPy 13 without a driver: cudaErrorInsufficientDriver
    except Exception as e:
        return ('no CUDA device (CuPy %s: cupy.is_available() raised %s: %s)'
                % (cupy.__version__, type(e).__name__, e))
    if not available:
        return ('no CUDA device (CuPy %s imports, cupy.is_available() is '
                'False)' % (cupy.__version__))
    return None


#: set to 1 where a GPU must be usable (scripts/gpu_check.sh): collected gpu
#: tests then end the run with one line instead of skipping
REQUIRE_GPU = 'CHAINERKFAC_REQUIRE_GPU'


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if item.get_closest_marker('gpu')]
    if not gpu_items:
        return  # no CuPy import unless a GPU test was collected
    reason = gpu_unavailable_reason()
    if reason is not None:
        if os.environ.get(REQUIRE_GPU) == '1':
            raise pytest.UsageError('{}=1, but the {} gpu tests cannot run: {}'
                                    .format(REQUIRE_GPU, len(gpu_items),
                                            reason))
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason='gpu test: ' + reason))


@pytest.fixture
def rng():
    return numpy.random.RandomState(0)


@pytest.fixture(autouse=True)
def _bn_statistics_as_they_were():
    """Entry points run in-process (``main()``) switch on float64 BN statistics
    for the whole process; each test leaves the setting as it found it, so the
    next one gets Chainer's own unless it asks (tests/test_bn_precision.py)."""
    previous = chainerkfac._compat.float64_bn_statistics_enabled()
    yield
    chainerkfac.use_float64_bn_statistics(previous)
