"""Training utilities: the ImageNet recipe's LR schedule, weight rescaling
and configuration schema (see :mod:`chainerkfac.training.config`); the
entry points' extensions and triggers (``extensions``, ``triggers``);
sharded snapshots (``checkpoint``, ``resharding``)."""
from chainerkfac.training.extensions import add_weight_rescaling  # NOQA
from chainerkfac.training.extensions import effective_end_epoch  # NOQA
from chainerkfac.training.extensions import make_lr_schedule  # NOQA
from chainerkfac.training.extensions import polynomial_decay  # NOQA
from chainerkfac.training.extensions import PolynomialLRDecay  # NOQA
from chainerkfac.training.extensions import WeightRescaling  # NOQA
from chainerkfac.training import config  # NOQA
from chainerkfac.training.config import for_processes  # NOQA
from chainerkfac.training.config import global_batchsize  # NOQA
from chainerkfac.training.config import load_config  # NOQA
