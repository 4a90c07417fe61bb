"""Wall-clock time per stage of an optimizer step (for benchmarks)."""
import collections
import contextlib
import time

#: stages, in the order of a step
STAGES = ('forward_backward', 'statistics', 'communication', 'ema',
          'inversion', 'preconditioning', 'update')


class StageTimer(object):
    """Accumulates seconds per stage.

    Set ``optimizer.timer = StageTimer()`` to time a KFAC or DistributedKFAC:
    ``forward_backward`` is the whole forward and backward pass *including*
    ``statistics`` (the time spent in the curvature hooks); the others are
    disjoint. Device work is not synchronised: on a GPU, call the
    benchmark's own synchronisation around steps.
    """

    def __init__(self):
        self.seconds = collections.defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, stage):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - start

    def reset(self):
        self.seconds.clear()


@contextlib.contextmanager
def _untimed(stage):
    yield


def timed(timer, stage):
    """``timer(stage)`` or a no-op context when ``timer`` is None."""
    return _untimed(stage) if timer is None else timer(stage)
