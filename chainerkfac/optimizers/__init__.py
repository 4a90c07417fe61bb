"""Optimizers: single-process :class:`KFAC` and :class:`DistributedKFAC`."""
from chainerkfac.optimizers.distributed_kfac import DistributedKFAC  # NOQA: F401
from chainerkfac.optimizers.kfac import KFAC  # NOQA: F401
from chainerkfac.optimizers.update_rule import KFACUpdateRule  # NOQA: F401
