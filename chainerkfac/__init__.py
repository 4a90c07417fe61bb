"""chainerkfac: distributed K-FAC for Chainer (Osawa et al., CVPR 2019)."""
try:  # TEMPORARY until _compat lands
    from chainerkfac import _compat
    _compat.patch_numpy_for_chainer()
except ImportError:
    pass

from chainerkfac import fisher_blocks  # NOQA: E402
from chainerkfac import linalg  # NOQA: E402
from chainerkfac import optimizers  # NOQA: E402
from chainerkfac.optimizers import KFAC  # NOQA: E402

__version__ = '0.1.0'
