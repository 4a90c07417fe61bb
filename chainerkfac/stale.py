"""Schedules of the curvature statistics: which are refreshed at which step.

Every statistic (a block's ``A``, ``G`` or BN ``F``) is identified by a key
``'<block name>/<statistic>'``. A schedule answers, before the forward pass of
step ``t`` (1-based), whether a statistic is due, and whether a block's
inverses are to be recomputed; statistics that are not due are neither
computed nor communicated, and their block reuses its stale inverse.

Two schedules share this interface:

- :class:`FixedSchedule`: every statistic every ``factor_interval`` steps,
  inverses every ``inverse_interval`` steps (the intervals other K-FAC
  libraries expose); ``FixedSchedule(1, 1)`` is the CVPR behaviour.
- :class:`StaleSchedule`: SP-NGD's stale statistics, an interval per
  statistic adapted to how much that statistic changes.
"""
import numpy
from chainer import backend


def relative_change(new, old, weight=1.0):
    """``weight * ||new - old||_F / ||old||_F`` (inf when ``old`` is 0 and
    ``new`` is not, 0 when both are), as a 0-d array on the arrays' device:
    nothing is read back to the host.

    With ``weight`` the EMA's weight of the newest statistic this is the
    relative change of the EMA that ``new`` causes.
    """
    xp = backend.get_array_module(new)
    denominator = xp.sqrt((old * old).sum())
    numerator = xp.sqrt(((new - old) ** 2).sum())
    zero = denominator == 0
    # A non-finite statistic gives NaN (its interval then shrinks); the
    # block warns about it, so NumPy's own warning is silenced.
    with numpy.errstate(invalid='ignore'):
        ratio = numerator / xp.where(zero, 1, denominator)
    return xp.where(zero, xp.where(numerator == 0, 0, xp.inf),
                    weight * ratio)


class Schedule(object):
    """Base of the schedules: per-key next due step and interval."""

    #: whether :meth:`new_interval` needs the relative change
    uses_change = False

    def __init__(self):
        self.next_due = {}
        self.interval = {}

    def register(self, keys):
        for key in keys:
            self.next_due.setdefault(key, 1)
            self.interval.setdefault(key, 1)

    def is_due(self, key, step):
        """Whether statistic ``key`` is refreshed at ``step``."""
        return self.next_due[key] <= step

    def set_interval(self, key, step, interval):
        """Records a refresh of ``key`` at ``step``; next one after
        ``interval`` steps."""
        interval = int(interval)
        self.interval[key] = interval
        self.next_due[key] = step + interval

    def new_interval(self, key, step, change):
        """The interval after a refresh at ``step`` whose relative change
        was ``change``."""
        raise NotImplementedError

    def inverse_due(self, step, refreshed, names):
        """Names (among a block's ``names``) whose inverses are recomputed at
        ``step``, given the names of its statistics ``refreshed`` now."""
        raise NotImplementedError

    def summary(self):
        """Mean interval over the statistics (1.0 when none)."""
        if not self.interval:
            return 1.0
        return sum(self.interval.values()) / len(self.interval)

    def serialize(self, serializer):
        for key in sorted(self.next_due):
            name = key.strip('/').replace('/', '.')
            self.next_due[key] = int(serializer(
                'next_due/' + name, self.next_due[key]))
            self.interval[key] = int(serializer(
                'interval/' + name, self.interval[key]))


class FixedSchedule(Schedule):
    """Fixed intervals: every statistic is refreshed at steps
    ``1, 1 + k, 1 + 2k, ...`` (``k = factor_interval``) and every inverse at
    steps ``1, 1 + m, ...`` (``m = inverse_interval``). ``(1, 1)`` refreshes
    and inverts everything every step."""

    def __init__(self, factor_interval=1, inverse_interval=1):
        super(FixedSchedule, self).__init__()
        for name, value in (('factor_interval', factor_interval),
                            ('inverse_interval', inverse_interval)):
            if int(value) != value or value < 1:
                raise ValueError('{} must be a positive integer, got {}'
                                 .format(name, value))
        self.factor_interval = int(factor_interval)
        self.inverse_interval = int(inverse_interval)

    def new_interval(self, key, step, change):
        return self.factor_interval

    def inverse_due(self, step, refreshed, names):
        if (step - 1) % self.inverse_interval == 0:
            return list(names)
        return []


class StaleSchedule(Schedule):
    """SP-NGD's stale statistics with an interval per statistic.

    At each refresh of a statistic ``X`` at step ``t``, its relative change
    ``c = r ||X - E||_F / ||E||_F`` is measured against the current EMA
    ``E`` (``r`` = ``cov_ema_decay``: ``c`` is how far the curvature
    estimate moves; with ``r = 1`` it compares ``X`` with the previous
    refresh). Then the interval ``k`` becomes:

    - ``1`` during the first ``warmup`` steps;
    - ``min(grow(k), max_interval)`` if ``c <= threshold``, with
      ``grow(k) = k + 1`` (``growth='increment'``, like the weight-rescaling
      skip rule of the original code) or ``2k`` (``'double'``);
    - ``max(1, k // 2)`` otherwise;

    and the statistic is next due at ``t + k``. A block recomputes the
    inverses of the statistics refreshed at that step only; the other
    factor keeps its stale inverse (and the damping and pi it was made
    with).

    Defaults (the papers give none; chosen on Fashion-MNIST and CIFAR-style
    ResNets, see ``benchmarks/stale_accuracy.py``): ``threshold=0.1``,
    ``growth='increment'``, ``max_interval=20``, ``warmup=10``.
    """

    def __init__(self, threshold=0.1, max_interval=20, warmup=10,
                 growth='increment'):
        super(StaleSchedule, self).__init__()
        self.uses_change = True
        if not threshold >= 0:
            raise ValueError('stale_threshold must be >= 0, got {}'.format(
                threshold))
        if int(max_interval) != max_interval or max_interval < 1:
            raise ValueError('stale_max_interval must be a positive integer, '
                             'got {}'.format(max_interval))
        if warmup < 0:
            raise ValueError('stale_warmup must be >= 0, got {}'.format(
                warmup))
        if growth not in ('increment', 'double'):
            raise ValueError("stale_growth must be 'increment' or 'double', "
                             "got {!r}".format(growth))
        self.threshold = threshold
        self.max_interval = int(max_interval)
        self.warmup = warmup
        self.growth = growth

    def new_interval(self, key, step, change):
        k = self.interval[key]
        if step <= self.warmup:
            return 1
        if change <= self.threshold:
            grown = k + 1 if self.growth == 'increment' else 2 * k
            return min(grown, self.max_interval)
        return max(1, k // 2)

    def inverse_due(self, step, refreshed, names):
        return [n for n in names if n in refreshed]
