"""Trainer triggers of the entry points: the iteration that ends a run (for
its last evaluation and snapshot), and any of several triggers.

Their state is part of a trainer snapshot, so a resumed run fires them as an
uninterrupted one.
"""
import numpy
from chainer import training


class LastIteration(object):
    """Trigger: True at the iteration ``last`` that ends the run (for the
    final evaluation and snapshot)."""

    def __init__(self, last):
        self.last = last

    def __call__(self, trainer):
        return trainer.updater.iteration == self.last


def last_iteration(iterations, epochs, acc_iters, iters_per_epoch):
    """The trainer iteration that ends a run of ``iterations`` K-FAC updates
    (of ``acc_iters`` micro-batches each), or, without ``iterations``, of
    ``epochs`` epochs of ``iters_per_epoch`` iterations."""
    if iterations:
        return iterations * acc_iters
    return int(numpy.ceil(epochs * iters_per_epoch))


def last_iteration_after_resume(iterations, epochs, acc_iters, updater,
                                iters_per_epoch):
    """The iteration that ends a run resumed on another number of processes
    (whose iterations hold another number of examples): ``iterations``
    counts updates as before; ``epochs`` ends after the rest of the epochs
    at this count's ``iters_per_epoch``."""
    if iterations:
        return iterations * acc_iters
    left = max(epochs - updater.epoch_detail, 0.0)
    return updater.iteration + int(numpy.ceil(left * iters_per_epoch - 1e-9))


class AnyOf(object):
    """Trigger firing when any of its triggers does (each is called every
    time: none skips its bookkeeping); their state is part of the snapshot,
    so a resumed run fires them as an uninterrupted one."""

    def __init__(self, *triggers):
        self.triggers = [training.trigger.get_trigger(t) for t in triggers]

    def __call__(self, trainer):
        return any([t(trainer) for t in self.triggers])

    def serialize(self, serializer):
        for i, t in enumerate(self.triggers):
            if hasattr(t, 'serialize'):
                t.serialize(serializer[str(i)])


def any_of(*triggers):
    """:class:`AnyOf` of ``triggers`` (``(period, unit)`` pairs, triggers,
    callables)."""
    return AnyOf(*triggers)
