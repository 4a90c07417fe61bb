"""Training utilities: the ImageNet recipe's LR schedule, weight rescaling
and configuration schema (see :mod:`chainerkfac.training.config`); the
entry points' extensions and triggers (``extensions``, ``triggers``);
sharded snapshots (``checkpoint``, ``resharding``)."""
from chainerkfac.training.extensions import add_weight_rescaling  # NOQA: F401
from chainerkfac.training.extensions import effective_end_epoch  # NOQA: F401
from chainerkfac.training.extensions import make_lr_schedule  # NOQA: F401
from chainerkfac.training.extensions import polynomial_decay  # NOQA: F401
from chainerkfac.training.extensions import PolynomialLRDecay  # NOQA: F401
from chainerkfac.training.extensions import WeightRescaling  # NOQA: F401
from chainerkfac.training import config  # NOQA: F401
from chainerkfac.training.config import for_processes  # NOQA: F401
from chainerkfac.training.config import global_batchsize  # NOQA: F401
from chainerkfac.training.config import load_config  # NOQA: F401
