"""Optimizers: single-process :class:`KFAC` and :class:`DistributedKFAC`."""
from chainerkfac.optimizers.distributed_kfac import DistributedKFAC  # NOQA
from chainerkfac.optimizers.kfac import KFAC  # NOQA
from chainerkfac.optimizers.update_rule import KFACUpdateRule  # NOQA
