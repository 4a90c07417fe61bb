"""CUDA kernels of chainerkfac, runnable on the CPU by emulation.

``ops`` holds the operations (pack/unpack of communication buffers,
non-finite flags, the fused momentum update, 2x2 Fisher inverses): CuPy
arrays go to the GPU kernels, NumPy arrays to the NumPy reference, or, inside
``with emulate():``, to the kernels built for the CPU by g++ (tests).
"""
from chainerkfac.cuda.launcher import emulate  # NOQA: F401
from chainerkfac.cuda.launcher import emulating  # NOQA: F401
from chainerkfac.cuda import ops  # NOQA: F401
from chainerkfac.cuda import reference  # NOQA: F401
