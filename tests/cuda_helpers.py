"""Shared by the kernel tests: whether the emulated kernels can be built here."""
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
