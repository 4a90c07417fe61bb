"""chainerkfac: distributed K-FAC for Chainer (Osawa et al., CVPR 2019)."""
# Must precede any chainer import: makes Chainer 7.8.1 work on NumPy 2.
from chainerkfac import _compat  # NOQA: F401

from chainerkfac import communicators  # NOQA: F401
from chainerkfac import fisher_blocks  # NOQA: F401
from chainerkfac import linalg  # NOQA: F401
from chainerkfac import optimizers  # NOQA: F401
from chainerkfac._compat import use_float64_bn_statistics  # NOQA: F401
from chainerkfac._optional import MissingDependency  # NOQA: F401
from chainerkfac.communicators import create_communicator  # NOQA: F401
from chainerkfac.optimizers import DistributedKFAC  # NOQA: F401
from chainerkfac.optimizers import KFAC  # NOQA: F401
from chainerkfac.threads import configure_threads  # NOQA: F401

__version__ = '0.1.0'
