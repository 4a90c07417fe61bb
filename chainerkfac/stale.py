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
  statistic adapted to how far that statistic drifts.

The measures the stale rule reads (all computed on the device by the owner
of the statistic's block, and fetched with the step's one transfer):

- :func:`sampling_noise`: how much a statistic of this batch differs from its
  expectation by sampling alone, ``V = E||X - E X||_F^2``, estimated from the
  batch's own per-example contributions;
- :func:`drift`: how far the statistic's expectation moved since its last
  refresh, ``||X - X_ref||_F^2 - V - V_ref``, relative to ``||X_ref||_F^2``.
"""
import math

import numpy
from chainer import backend


def relative_change(new, old, weight=1.0):
    """``weight * ||new - old||_F / ||old||_F`` (inf when ``old`` is 0 and
    ``new`` is not, 0 when both are), as a 0-d array on the arrays' device:
    nothing is read back to the host."""
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


def sampling_noise(moment, square_norm, examples):
    """Estimate of a batch statistic's sampling variance (0-d, on the device).

    For ``X = (1/N) sum_n x_n`` over ``N`` independent examples,
    ``E||X - E X||_F^2 = E||x - E x||_F^2 / N``, estimated without bias by

        V = (mu2 - ||X||_F^2) / (N - 1),   mu2 = (1/N) sum_n ||x_n||_F^2

    (the sample variance of the contributions, over N). ``mu2`` (``moment``)
    is a sum over examples, so it is summed over micro-batches and ranks like
    the statistic itself; ``square_norm`` is ``||X||_F^2`` of the reduced
    statistic (or its probe estimate, see
    :func:`chainerkfac.fisher_blocks.base.example_moment`). ``V`` is 0
    when ``moment`` is None or ``N < 2`` (no estimate: every change then
    counts as drift), and never negative.
    """
    if moment is None or examples < 2:
        return 0.0
    xp = backend.get_array_module(moment)
    return xp.maximum(moment - square_norm, 0) / (examples - 1)


def drift(new, new_noise, reference, reference_noise):
    """Squared relative drift of a statistic since its last refresh (0-d).

    ``d^2 = (||X - X_ref||_F^2 - V - V_ref) / ||X_ref||_F^2``: the change of
    the statistic's *expectation*, with the sampling noise of both batches
    (``V``, ``V_ref``: :func:`sampling_noise`) removed, since
    ``E||X - X_ref||^2 = ||E X - E X_ref||^2 + V + V_ref`` for independent
    batches. It may come out negative (noise over-estimated by chance): it
    then reads as no drift. ``inf`` when ``X_ref`` is 0 and ``X`` is not;
    NaN for a non-finite statistic (its interval then shrinks to 1).
    """
    xp = backend.get_array_module(new)
    difference = ((new - reference) ** 2).sum() - new_noise - reference_noise
    denominator = (reference * reference).sum()
    zero = denominator == 0
    with numpy.errstate(invalid='ignore'):
        ratio = difference / xp.where(zero, 1, denominator)
    return xp.where(zero, xp.where(difference <= 0, 0, xp.inf), ratio)


class Schedule(object):
    """Base of the schedules: when each statistic was refreshed, and when it
    is next due. The state is the same on every rank: it changes only
    through :meth:`begin_step` (the step's learning rate) and the owners'
    decisions, which stage 4 carries to every rank.

    Attributes (dicts keyed by schedule key):
        next_due: the step at which the statistic is due at the latest.
        interval: the interval (steps) decided at its last refresh.
        last_refresh: the step of its last refresh (0: never).
    """

    #: whether :meth:`new_interval` needs the drift measure
    uses_change = False

    def __init__(self):
        self.next_due = {}
        self.interval = {}
        self.last_refresh = {}

    def register(self, keys):
        for key in keys:
            self.next_due.setdefault(key, 1)
            self.interval.setdefault(key, 1)
            self.last_refresh.setdefault(key, 0)

    def begin_step(self, step, lr):
        """Called before the forward pass of ``step`` with its learning
        rate (nothing to do here)."""

    def is_due(self, key, step):
        """Whether statistic ``key`` is refreshed at ``step``."""
        return self.next_due[key] <= step

    def elapsed(self, key, step):
        """Steps since ``key``'s previous refresh (1 for its first), the
        ``k`` of the EMA's weight ``1 - (1 - r)^k``."""
        last = self.last_refresh.get(key, 0)
        return step - last if last else 1

    def refreshed(self, key, step, interval):
        """Records a refresh of ``key`` at ``step``, next due after
        ``interval`` steps."""
        interval = int(interval)
        self.interval[key] = interval
        self.next_due[key] = step + interval
        self.last_refresh[key] = step

    def call_early(self, key, step):
        """Makes ``key`` due at ``step + 1`` (an early refresh)."""
        self.next_due[key] = min(self.next_due[key], step + 1)

    def new_interval(self, key, step, change):
        """The interval after a refresh at ``step`` whose drift measure was
        ``change``."""
        raise NotImplementedError

    def observe_loss(self, loss):
        """Takes this step's loss (mean over ranks); True when it calls for
        an early refresh of everything (never, here)."""
        return False

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
            for table, prefix, kind in self._tables():
                table[key] = kind(serializer(prefix + name, table[key]))

    def _tables(self):
        return [(self.next_due, 'next_due/', int),
                (self.interval, 'interval/', int),
                (self.last_refresh, 'last_refresh/', int)]


def _positive_int(name, value):
    if int(value) != value or value < 1:
        raise ValueError('{} must be a positive integer, got {}'.format(
            name, value))
    return int(value)


class FixedSchedule(Schedule):
    """Fixed intervals: every statistic is refreshed at steps
    ``1, 1 + k, 1 + 2k, ...`` (``k = factor_interval``) and every inverse at
    steps ``1, 1 + m, ...`` (``m = inverse_interval``). ``(1, 1)`` refreshes
    and inverts everything every step."""

    def __init__(self, factor_interval=1, inverse_interval=1):
        super(FixedSchedule, self).__init__()
        self.factor_interval = _positive_int('factor_interval',
                                             factor_interval)
        self.inverse_interval = _positive_int('inverse_interval',
                                              inverse_interval)
        if self.inverse_interval < self.factor_interval:
            raise ValueError(
                'inverse_interval {} < factor_interval {}: the inverses would '
                'be recomputed from statistics that have not changed; use an '
                'inverse_interval of at least the factor_interval'.format(
                    self.inverse_interval, self.factor_interval))

    def new_interval(self, key, step, change):
        return self.factor_interval

    def inverse_due(self, step, refreshed, names):
        if (step - 1) % self.inverse_interval == 0:
            return list(names)
        return []


class StaleSchedule(Schedule):
    """SP-NGD's stale statistics with an interval per statistic.

    The rule, for a statistic ``X`` refreshed at step ``t``, ``k`` steps after
    its previous refresh ``X_ref``:

    1. **Drift, not noise, and not the EMA.** The measure is the relative
       drift of the statistic's expectation (:func:`drift`):
       ``d = sqrt(max(0, ||X - X_ref||^2 - V - V_ref)) / ||X_ref||``, with
       ``V``, ``V_ref`` the sampling noise of each batch
       (:func:`sampling_noise`). It compares the statistic with itself, so
       ``threshold`` means the same at every ``cov_ema_decay``; and a batch
       that differs from the last by sampling noise alone reads as no drift,
       at any batch size.
    2. **The interval** becomes 1 during the first ``warmup`` steps. After
       that (``growth='proportional'``, the default) it aims at a drift of
       ``threshold`` per refresh, the drift taken to grow in proportion to
       the distance the parameters travel, i.e. to the sum of the learning
       rates: ``k' = k * threshold / d``, at most doubling, at least
       ``k + 1`` when ``d <= threshold``, at least 1 and at most
       ``max_interval`` steps. ``'increment'`` (``k + 1``, like the
       original code's weight-rescaling skip rule) and ``'double'`` (``2k``)
       grow by fixed steps instead, and halve when ``d > threshold``.
    3. **The interval is in learning-rate-weighted steps.** A statistic
       refreshed at step ``t`` with interval ``k'`` is due again once the
       learning rates of the steps since then sum to ``k' lr_t`` (or after
       ``max_interval`` steps): during a warm-up, whose learning rate grows
       step after step, intervals shorten by themselves; during the decay
       they lengthen. Every rank knows the learning rates, so this needs no
       communication.
    4. **Early refresh on a loss spike.** Every step, each owner compares
       the step's loss (the mean over ranks, which stage 2 brings with the
       statistics, read in the step's one fetch) with an exponential
       average of the previous steps' losses (weight ``0.3``); a loss above
       ``loss_ratio`` times that average refreshes every statistic of its
       blocks at the next step (and their next intervals start from 1).
       The decisions travel with the intervals in stage 4, so schedules
       stay identical on every rank. (A per-block gradient-norm signal was
       measured and rejected: on the Fashion-MNIST CNN at batch 1,024 a
       block's gradient norm changes by 0.4-2.8x from one step to the next,
       5th to 95th percentile, so any bound that catches a real jump also
       refreshes most steps.)
    5. **The EMA knows the interval** (:meth:`FisherBlock.update_ema`): the
       refreshed statistic enters the EMA with the weight
       ``1 - (1 - r)^k``, as if it had been seen at each of the ``k`` steps.

    A block recomputes the inverses of the statistics refreshed at that step
    only; the other factor keeps its stale inverse (and the damping and pi
    it was made with).

    Defaults: ``threshold=0.1``, ``max_interval=20``, ``warmup=5``,
    ``growth='proportional'``, ``loss_ratio=1.5``. The papers give none;
    they were chosen on the problems of ``benchmarks/`` (see
    ``docs/fidelity.md``): the threshold on the study's CNN at batch 8,192
    (``cov_ema_decay`` 0.1, seed 0), where 0.2 ended 5.7 points below the
    every-step run (83.9 against 89.6 %) while 0.1 stayed within a point
    of it over the first 20 of 44 steps, and at batch 2,048 (0.1 tracked
    the every-step run, 90.3 % at step 44), and on the P2 protocol (two
    seeds: 0.2 took 40 steps to 90 % against every step's 30 and 20). The
    study's two seeds at every batch size and EMA weight check the choice.
    """

    uses_change = True
    #: weight of the newest loss in the reference average
    LOSS_WEIGHT = 0.3

    def __init__(self, threshold=0.1, max_interval=20, warmup=5,
                 growth='proportional', loss_ratio=1.5):
        super(StaleSchedule, self).__init__()
        if not threshold > 0:
            raise ValueError('stale_threshold must be > 0, got {}'.format(
                threshold))
        self.max_interval = _positive_int('stale_max_interval', max_interval)
        if not warmup >= 0:
            raise ValueError('stale_warmup must be >= 0, got {}'.format(
                warmup))
        if growth not in ('proportional', 'increment', 'double'):
            raise ValueError("stale_growth must be 'proportional', "
                             "'increment' or 'double', got {!r}".format(
                                 growth))
        if loss_ratio is not None and not loss_ratio > 1:
            raise ValueError('stale_loss_ratio must be > 1 (or None: no '
                             'early refreshes), got {}'.format(loss_ratio))
        self.threshold = threshold
        self.warmup = warmup
        self.growth = growth
        self.loss_ratio = loss_ratio
        #: the sum of the learning rates of the steps so far
        self.time = 0.0
        self._lr = 0.0
        #: key -> :attr:`time` at its last refresh
        self.last_time = {}
        #: key -> learning-rate-weighted interval (inf: steps only)
        self.budget = {}
        #: exponential average of the previous steps' losses (None: none)
        self.loss_average = None

    def register(self, keys):
        keys = list(keys)
        super(StaleSchedule, self).register(keys)
        for key in keys:
            self.last_time.setdefault(key, 0.0)
            self.budget.setdefault(key, 0.0)

    def begin_step(self, step, lr):
        self._lr = float(lr)
        self.time += self._lr

    def is_due(self, key, step):
        """Due at ``max_interval`` steps, at an early call, or at the step
        that brings the learning rates since the refresh closest to its
        budget: once they sum to at least ``budget - lr_step / 2`` (so an
        interval of ``k`` at a constant learning rate is ``k`` steps, and
        of 1 the next step unless the learning rate fell by a third)."""
        if self.next_due[key] <= step:
            return True
        waited = self.time - self.last_time[key]
        return waited >= self.budget[key] - 0.5 * self._lr

    def refreshed(self, key, step, interval):
        """Records a refresh of ``key`` at ``step`` with the next interval
        ``interval`` (steps at this step's learning rate)."""
        interval = int(interval)
        self.interval[key] = interval
        self.last_refresh[key] = step
        self.last_time[key] = self.time
        self.budget[key] = (interval * self._lr if self._lr > 0
                            else float('inf'))
        self.next_due[key] = step + self.max_interval

    def new_interval(self, key, step, change):
        """``change``: the squared relative drift ``d^2`` (:func:`drift`)."""
        if step <= self.warmup or not change < float('inf'):
            return 1                                   # also NaN
        k = max(1, self.elapsed(key, step))
        d = math.sqrt(max(change, 0.0))
        if self.growth == 'proportional':
            if d <= self.threshold:
                grown = k * 2 if d == 0 else k * min(2.0, self.threshold / d)
                interval = max(k + 1, int(grown))
            else:
                interval = int(k * self.threshold / d)
        elif d <= self.threshold:
            interval = k + 1 if self.growth == 'increment' else 2 * k
        else:
            interval = k // 2
        return min(max(1, interval), self.max_interval)

    def observe_loss(self, loss):
        """True when ``loss`` exceeds ``loss_ratio`` times the average of
        the previous steps' losses (or is not finite); then updates the
        average. The signal assumes a positive loss (cross-entropy): it is
        silent while the average is not positive."""
        loss = float(loss)
        average = self.loss_average
        if not math.isfinite(loss):
            return self.loss_ratio is not None
        self.loss_average = (loss if average is None else
                             average + self.LOSS_WEIGHT * (loss - average))
        return (self.loss_ratio is not None and average is not None
                and average > 0 and loss > self.loss_ratio * average)

    def inverse_due(self, step, refreshed, names):
        return [n for n in names if n in refreshed]

    def serialize(self, serializer):
        super(StaleSchedule, self).serialize(serializer)
        self.time = float(serializer('time', self.time))
        self._lr = float(serializer('lr', self._lr))
        average = float(serializer(
            'loss_average', float('nan') if self.loss_average is None
            else self.loss_average))
        self.loss_average = None if math.isnan(average) else average

    def _tables(self):
        return super(StaleSchedule, self)._tables() + [
            (self.last_time, 'last_time/', float),
            (self.budget, 'budget/', float)]
