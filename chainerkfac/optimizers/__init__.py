"""Optimizers: single-process :class:`KFAC`."""
from chainerkfac.optimizers.kfac import KFAC  # NOQA
from chainerkfac.optimizers.update_rule import KFACUpdateRule  # NOQA
