"""Single-process K-FAC optimizer (Osawa et al., CVPR 2019; Martens & Grosse
2015)."""
import logging
import warnings

import chainer
import numpy
from chainer import backend
from chainer import optimizer
from chainer.functions.loss import softmax_cross_entropy

from chainerkfac.cuda import ops
from chainerkfac import fisher_blocks
from chainerkfac.profiling import timed
from chainerkfac import stale as stale_module
from chainerkfac import step_status
from chainerkfac.hooks import KFACStatisticsHook
from chainerkfac.optimizers.update_rule import KFACUpdateRule

logger = logging.getLogger(__name__)

BN_FISHER_MODES = ('full', 'unit', 'diag')
INVERSE_METHODS = ('cholesky', 'eigen')
FISHER_ESTIMATES = ('empirical', 'mc')
PI_TYPES = ('tracenorm', 'none')


def _dot(a, b):
    """``sum(a * b)`` in at least float32 (0-d, on the device)."""
    dtype = numpy.promote_types(a.dtype, numpy.float32)
    return (a.astype(dtype, copy=False).ravel() @
            b.astype(dtype, copy=False).ravel())


def _check(condition, message):
    if not condition:
        raise ValueError('chainerkfac.KFAC: ' + message)


def inverse_cdf_sample(probabilities, uniforms):
    """The class of each row of ``probabilities`` (``(N, C)``, rows summing
    to 1) at its uniform ``uniforms[n]`` in ``[0, 1)``: the first ``c`` with
    ``sum_{j <= c} p_j >= u`` (the last class where rounding leaves the sum
    below ``u``), as int32, on the arrays' device."""
    xp = backend.get_array_module(probabilities)
    u = xp.asarray(uniforms).astype(probabilities.dtype)[:, None]
    cdf = xp.cumsum(probabilities, axis=1)
    return xp.minimum((cdf < u).sum(axis=1),
                      probabilities.shape[1] - 1).astype(numpy.int32)


class KFAC(optimizer.GradientMethod):
    """K-FAC: natural-gradient descent with Kronecker-factored curvature.

    Each ``Linear``, ``Convolution2D`` and ``BatchNormalization`` link gets a
    Fisher block (see :mod:`chainerkfac.fisher_blocks`); parameters of other
    links are updated by momentum SGD on their plain gradient (``setup``
    warns once, listing them). One step, given the mean loss of a batch:

    1. forward and backward with a function hook that captures each block's
       statistics (``A = E[abar abar^T]``, ``G = E[g g^T]``, BN's ``F``);
    2. optimizer hooks (e.g. :class:`chainer.optimizer_hooks.WeightDecay`)
       act on the gradient, which is therefore preconditioned with it;
    3. each block: ``ema = r new + (1 - r) ema`` (``r = cov_ema_decay``, the
       original code's convention: ``r`` weighs the *newest* statistic,
       1.0 keeps only it), damped inverses of the EMA (never stored into it),
       preconditioned gradient ``Delta = G^-1 grad A^-1`` or ``F^-1 grad``;
    4. ``v <- mu v - lr Delta``, ``theta <- theta + v``.

    Use it as any Chainer optimizer: ``opt.setup(model)`` then
    ``opt.update(lossfun, *args)`` (or through a ``StandardUpdater``). The
    loss must be the mean over the batch: per-example gradients are recovered
    as ``N dL/ds``.

    Args (the first eleven in the original code's positional order; the
    others keyword-only):
        lr (float): learning rate.
        momentum (float): heavy-ball momentum ``mu``.
        cov_ema_decay (float): weight ``r`` of the newest statistic, in
            ``(0, 1]``.
        damping (float): Tikhonov damping ``gamma``: ``pi sqrt(gamma)`` and
            ``sqrt(gamma)/pi`` are added to A and G, ``stab_coeff * gamma``
            to BN's F. When a damped factor is still not positive definite
            the damping of that factor is raised (see
            :func:`chainerkfac.linalg.damped_inverse`) with one warning per
            block.
        stab_coeff (float): multiplier of the damping for BN blocks.
        constructor: ``constructor(name, link)`` returns the link's
            :class:`~chainerkfac.fisher_blocks.FisherBlock`, or None for
            momentum SGD on its plain gradient (default:
            :func:`chainerkfac.fisher_blocks.block_for`, with ``bn_fisher``):
            the place to plug in a block of one's own.
        pi_type (str): ``'tracenorm'`` (``pi = sqrt((tr A/dim A)/(tr G/dim
            G))``) or ``'none'`` (``pi = 1``).
        use_cholesky (bool): True (the inverses go through Cholesky, as the
            original's default); False (its LU) is refused.
        loss_scale (float): static loss scale for fp16 training; removed from
            the gradients and from G and F.
        adjust_momentum (bool): use ``mu * lr_t / lr_{t-1}`` on steps whose
            learning rate dropped.
        acc_iters (int): micro-batches per step: gradients and statistics of
            ``acc_iters`` consecutive ``update`` calls are averaged (with
            equal weights) and one step is taken on the last call. A
            snapshot holds no partial accumulation: resume at step
            boundaries.
        bn_fisher (str): ``'full'`` (2C x 2C, the original code), ``'unit'``
            (2x2 per channel, SP-NGD) or ``'diag'`` (the CVPR paper).
        schedule (chainerkfac.stale.Schedule): the refresh schedule as an
            object (a :class:`~chainerkfac.stale.StaleSchedule`,
            :class:`~chainerkfac.stale.FixedSchedule` or one of one's own);
            exclusive with the keywords below, which build one.
        stale (bool): SP-NGD's stale statistics (the default): each
            statistic gets its own refresh interval, adapted to how far it
            drifts (:class:`chainerkfac.stale.StaleSchedule`); statistics
            that are not due are neither computed nor communicated and
            their blocks reuse their inverses. ``False``: the fixed
            schedule below (``factor_interval=inverse_interval=1`` is the
            CVPR behaviour: everything every step).
        stale_threshold, stale_max_interval, stale_warmup, stale_growth,
            stale_loss_ratio: the stale rule's knobs (see
            :class:`~chainerkfac.stale.StaleSchedule`).
        factor_interval (int): with ``stale=False``, refresh every statistic
            every ``factor_interval`` steps.
        inverse_interval (int): with ``stale=False``, recompute inverses
            every ``inverse_interval`` steps (at least ``factor_interval``).
        inverse (str): ``'cholesky'`` (the default): damped inverses of the
            factors, ``(G + sqrt(gamma)/pi I)^-1 grad (A + pi sqrt(gamma)
            I)^-1`` (factored Tikhonov damping); ``'eigen'``:
            eigendecompositions of the (undamped) factors and
            ``Q_G ((Q_G^T grad Q_A) / (l_G l_A^T + gamma)) Q_A^T``, the exact
            ``(A (x) G + gamma I)^-1`` (KAISA's default). Costs: ``syevd``
            is about 4-10x a Cholesky inverse of the same factor, and the
            preconditioning takes 4 GEMMs instead of 2. BN blocks keep their
            inverses (already exact). A decomposition that is not finite
            gives the plain gradient for that step and drops the factor until
            its next refresh.
        fisher (str): ``'empirical'`` (the default, the original's): ``G``
            and BN ``F`` from the gradients of the training loss; ``'mc'``:
            from targets sampled from the model's own predictive
            distribution (the true Fisher's Monte-Carlo estimate, ASDL's
            default), ``mc_samples`` backward passes more on the steps where
            some ``G``/``F`` is due (stale statistics keep it cheap). Needs
            a ``softmax_cross_entropy`` loss (hard or soft targets).
        mc_samples (int): samples of ``fisher='mc'`` (default 1).
        damping_adaptation (bool): Levenberg-Marquardt adaptation of the
            damping (Martens & Grosse 2015, sec. 6.5): every
            ``damping_adaptation_interval`` steps ``k``, the reduction ratio
            ``rho = (L(theta + delta) - L(theta)) / M(delta)`` of the step
            ``delta`` on the step's last micro-batch, with the quadratic
            model ``M(delta) = g . delta + delta^T (C + gamma I) delta / 2``,
            ``C`` the K-FAC curvature of the EMA factors (``A (x) G`` per
            Kronecker block, ``F + (stab_coeff - 1) gamma`` for BN) and
            exact Tikhonov damping, ``g`` the gradient after the optimizer's
            hooks; ``gamma`` is multiplied by ``omega = (19/20)^k`` when
            ``rho > 3/4`` and divided by it when ``rho < 1/4`` (or the model
            predicts no decrease), within ``damping_bounds``. Reported as
            ``kfac/damping`` and ``kfac/reduction_ratio``, serialized. Costs
            on those steps: one forward pass (BN running averages restored),
            a copy of the parameters and gradients, one product with each
            factor pair, one host read (DistributedKFAC: one 3-value
            all-reduce); after a change every damped inverse is recomputed
            at the next step (with ``inverse='eigen'`` none needs to be).
        damping_adaptation_interval (int): ``k`` (default 5).
        damping_bounds (tuple): ``(low, high)`` of the adapted damping.
        kl_clip (float): a bound ``kappa`` on the step (KAISA's ``kl_clip``):
            every direction is scaled by ``min(1, sqrt(kappa / (lr^2 sum(Delta
            . grad))))``, the sum over all blocks (each block's direction as
            taken) and the parameters without a block (their gradient),
            reported as ``kfac/kl_scale``. Costs a dot product and a scale
            per parameter; DistributedKFAC adds one scalar all-reduce (and
            a host synchronisation) per step. None (default): no bound.
        exclude: links handed to momentum SGD on their plain gradient on
            purpose: a list of link names as ``model.namedlinks()`` gives
            them (``'/fc'``), or a predicate ``exclude(name, link)``; also
            the way to train a grouped convolution or a link called twice
            in one forward pass.

    Each step reports (``chainer.report``) ``kfac/refresh_fraction``, the
    fraction of statistics refreshed, ``kfac/mean_interval`` and
    ``kfac/early_refreshes`` (statistics called early by a loss spike).
    """

    def __init__(self, lr=0.01, momentum=0.9, cov_ema_decay=0.99,
                 damping=1e-3, stab_coeff=16.0, constructor=None,
                 pi_type='tracenorm', use_cholesky=True, loss_scale=None,
                 adjust_momentum=False, acc_iters=1, *, bn_fisher='full',
                 schedule=None, stale=True, stale_threshold=0.1,
                 stale_max_interval=20, stale_warmup=5,
                 stale_growth='proportional', stale_loss_ratio=1.5,
                 factor_interval=1, inverse_interval=1, exclude=(),
                 inverse='cholesky', kl_clip=None, fisher='empirical',
                 mc_samples=1, damping_adaptation=False,
                 damping_adaptation_interval=5,
                 damping_bounds=(1e-8, 100.0)):
        super(KFAC, self).__init__()
        _check(lr >= 0, 'lr must be >= 0, got {}'.format(lr))
        _check(0 <= momentum <= 1, 'momentum must be in [0, 1]')
        _check(damping >= 0, 'damping must be >= 0, got {}'.format(damping))
        _check(0 < cov_ema_decay <= 1, 'cov_ema_decay must be in (0, 1], '
               'got {}'.format(cov_ema_decay))
        _check(stab_coeff >= 0, 'stab_coeff must be >= 0')
        _check(bn_fisher in BN_FISHER_MODES, 'bn_fisher must be one of {}, '
               'got {!r}'.format(BN_FISHER_MODES, bn_fisher))
        _check(pi_type in PI_TYPES, 'pi_type must be one of {}, got {!r}'
               .format(PI_TYPES, pi_type))
        _check(int(acc_iters) == acc_iters and acc_iters >= 1,
               'acc_iters must be a positive integer, got {}'.format(
                   acc_iters))
        _check(loss_scale is None or loss_scale > 0, 'loss_scale must be > 0')
        _check(use_cholesky, 'use_cholesky=False (the original code\'s LU '
               'inverses) is not offered: every damped factor is inverted '
               'through its Cholesky factorization')
        _check(constructor is None or callable(constructor),
               'constructor must be a callable (name, link) -> FisherBlock '
               'or None, got {!r}'.format(constructor))
        _check(callable(exclude) or not isinstance(exclude, str),
               'exclude takes link names (a list) or a predicate, got the '
               'string {!r}'.format(exclude))
        _check(inverse in INVERSE_METHODS, 'inverse must be one of {}, got '
               '{!r}'.format(INVERSE_METHODS, inverse))
        self.inverse = inverse
        _check(kl_clip is None or kl_clip > 0, 'kl_clip must be > 0 (or None: '
               'no step bound), got {}'.format(kl_clip))
        self.kl_clip = kl_clip
        self._kl_scale = None
        _check(fisher in FISHER_ESTIMATES, 'fisher must be one of {}, got '
               '{!r}'.format(FISHER_ESTIMATES, fisher))
        _check(int(mc_samples) == mc_samples and mc_samples >= 1,
               'mc_samples must be a positive integer, got {}'.format(
                   mc_samples))
        self.fisher = fisher
        self.mc_samples = int(mc_samples)
        _check(int(damping_adaptation_interval) == damping_adaptation_interval
               and damping_adaptation_interval >= 1,
               'damping_adaptation_interval must be a positive integer, got '
               '{}'.format(damping_adaptation_interval))
        low, high = damping_bounds
        _check(0 < low <= high, 'damping_bounds must be 0 < low <= high, got '
               '{}'.format(damping_bounds))
        self.damping_adaptation = bool(damping_adaptation)
        self.damping_adaptation_interval = int(damping_adaptation_interval)
        self.damping_bounds = (float(low), float(high))
        self._adaptation = None      # (old params, grads) of this step
        self._last_batch = None
        self._reinvert = False
        self.schedule = self._make_schedule(
            schedule, stale, (stale_threshold, stale_max_interval,
                              stale_warmup, stale_growth, stale_loss_ratio),
            factor_interval, inverse_interval)
        self.hyperparam.lr = lr
        self.hyperparam.momentum = momentum
        self.hyperparam.damping = damping
        self.hyperparam.cov_ema_decay = cov_ema_decay
        self.hyperparam.stab_coeff = stab_coeff
        self.hyperparam.adjust_momentum = adjust_momentum
        self.bn_fisher = bn_fisher
        self.constructor = constructor
        self.exclude = exclude
        self.pi_type = pi_type
        self.acc_iters = int(acc_iters)
        if loss_scale is not None:
            self._loss_scale = loss_scale
        self.fisher_blocks = []
        self.owned_blocks = []
        self.plain_links = []
        self.plain_params = []
        self._micro_step = 0
        self._hook = None
        self._status = None
        self._refreshed_keys = set()
        self._present = {}
        self._early_refreshes = 0
        self._loss = None
        #: a :class:`chainerkfac.profiling.StageTimer` to time the stages
        self.timer = None

    _STALE_DEFAULTS = (0.1, 20, 5, 'proportional', 1.5)

    @staticmethod
    def _make_schedule(schedule, stale, stale_args, factor_interval,
                       inverse_interval):
        """The refresh schedule: ``schedule`` itself, else a
        :class:`~chainerkfac.stale.StaleSchedule` of the ``stale_*``
        keywords, or with ``stale=False`` a
        :class:`~chainerkfac.stale.FixedSchedule` of the intervals."""
        fixed = (factor_interval, inverse_interval) != (1, 1)
        if schedule is not None:
            _check(isinstance(schedule, stale_module.Schedule),
                   'schedule must be a chainerkfac.stale.Schedule, got '
                   '{!r}'.format(schedule))
            _check(stale is True and not fixed and
                   tuple(stale_args) == KFAC._STALE_DEFAULTS,
                   'pass either schedule= or the stale/stale_*/'
                   'factor_interval/inverse_interval keywords, not both')
            return schedule
        _check(not stale or not fixed,
               'factor_interval and inverse_interval are the fixed schedule; '
               'pass stale=False to use them')
        try:
            if stale:
                return stale_module.StaleSchedule(*stale_args)
            return stale_module.FixedSchedule(factor_interval,
                                              inverse_interval)
        except ValueError as e:
            raise ValueError('chainerkfac.KFAC: {}'.format(e))

    lr = optimizer.HyperparameterProxy('lr')
    momentum = optimizer.HyperparameterProxy('momentum')
    damping = optimizer.HyperparameterProxy('damping')
    cov_ema_decay = optimizer.HyperparameterProxy('cov_ema_decay')
    stab_coeff = optimizer.HyperparameterProxy('stab_coeff')
    adjust_momentum = optimizer.HyperparameterProxy('adjust_momentum')

    def create_update_rule(self):
        return KFACUpdateRule(self.hyperparam)

    def setup(self, link):
        """Sets up the target link and builds its Fisher blocks.

        Raises:
            ValueError: a link's configuration is unsupported (e.g. a grouped
                convolution); the message names the link.
        """
        blocks, plain = fisher_blocks.create_fisher_blocks(
            link, self.bn_fisher, self.exclude, self.constructor)
        super(KFAC, self).setup(link)
        self.fisher_blocks = blocks
        self.owned_blocks = blocks
        self.plain_links = plain
        covered = set(id(p) for b in blocks for p in b.params)
        self.plain_params = [p for _, p in sorted(link.namedparams())
                             if id(p) not in covered]
        for block in blocks:
            block.record_moments = self.schedule.uses_change
            if isinstance(block, fisher_blocks.KroneckerFactoredBlock):
                block.inverse_method = self.inverse
        self._hook = KFACStatisticsHook(blocks)
        self.schedule.register(
            key for b in blocks for key in b.schedule_keys.values())
        logger.info('chainerkfac: %s', self.fisher_block_summary())
        unsupported = [n for n in plain if n not in self.excluded_links]
        if unsupported:
            warnings.warn(
                'chainerkfac: no Fisher block for links {}; their parameters '
                'get momentum SGD on the plain gradient'.format(
                    ', '.join(unsupported)), UserWarning, stacklevel=2)
        return self

    @property
    def excluded_links(self):
        """Names of the links handed to SGD by ``exclude``."""
        return [n for n in self.plain_links
                if fisher_blocks.is_excluded(self.exclude, n,
                                             self._link_of(n))]

    def _link_of(self, name):
        return dict(self.target.namedlinks()).get(name)

    def fisher_block_summary(self):
        """One line per link with parameters: its block type, or SGD."""
        lines = ['{} {}'.format(b.name, type(b).__name__)
                 for b in self.fisher_blocks]
        lines += ['{} plain-SGD'.format(name) for name in self.plain_links]
        return '\n'.join(lines)

    # --- one update ----------------------------------------------------------
    def update(self, lossfun=None, *args, **kwds):
        """Runs forward/backward of ``lossfun(*args, **kwds)`` and, on the
        last of ``acc_iters`` calls, one K-FAC step."""
        if lossfun is None:
            raise TypeError(
                'chainerkfac.KFAC.update needs the loss function: the '
                'curvature statistics are captured during its forward and '
                'backward passes')
        self._hook.grad_scale = self._loss_scale or 1.0
        last = self._micro_step + 1 == self.acc_iters
        if self._micro_step == 0:
            self._set_due_statistics()
        self._hook.timer = self.timer
        with timed(self.timer, 'forward_backward'), self._hook:
            loss = lossfun(*args, **kwds)
            if last:
                self.after_forward()
            if self.fisher == 'mc':
                self._monte_carlo_backward(loss)
            if self._micro_step == 0:
                self.target.cleargrads()
            loss.backward(loss_scale=self._loss_scale)
            self._hook.capture_backward = True
        self._keep_loss(loss.array)
        if self.damping_adaptation:
            self._last_batch = (lossfun, args, kwds, loss.array)
        del loss
        self._micro_step += 1
        if not last:
            return
        self._micro_step = 0
        if self.acc_iters > 1:
            for param in self.target.params():
                if param.grad is not None:
                    param.grad /= self.acc_iters
        self.step()

    def _monte_carlo_backward(self, loss):
        """``fisher='mc'``: the ``G`` and BN ``F`` statistics due this step
        from ``mc_samples`` backward passes of targets sampled from the
        model's own predictive distribution, ``t ~ softmax(y)``; the true
        gradient's backward that follows feeds no statistic. The logits
        ``y`` are the input of the loss's ``SoftmaxCrossEntropy`` (hard or
        soft targets, as mixup's), whose cached probabilities give ``p``;
        each pass starts from ``dL/dy = (p - onehot(t)) / N`` (times the
        loss scale), and the parameters' gradients it makes are dropped.
        Nothing runs on a step where no ``G``/``F`` is due."""
        if not any(n in b.due for b in self.fisher_blocks
                   for n in b.statistic_names if n != 'A'):
            self._hook.capture_backward = False
            return
        creator = loss.creator
        if not isinstance(creator, softmax_cross_entropy.SoftmaxCrossEntropy):
            raise ValueError(
                "chainerkfac.KFAC: fisher='mc' samples targets from softmax "
                'probabilities, so the loss must be '
                'chainer.functions.softmax_cross_entropy of the model\'s '
                'logits (hard or soft targets); this loss comes from {}'
                .format(type(creator).__name__ if creator else 'no function'))
        logits = creator.inputs[0]
        probabilities = getattr(creator, 'y', None)
        if probabilities is None:
            probabilities = chainer.functions.softmax(
                logits.get_variable().array).array
        n = probabilities.shape[0]
        scale = (self._loss_scale or 1.0) / n
        params = list(self.target.params())
        kept = [p.grad_var for p in params]
        for p in params:
            p.grad_var = None
        for sample in range(self.mc_samples):
            targets = self.sample_targets(probabilities)
            grad = probabilities.copy()
            grad[self.target.xp.arange(n), targets] -= 1
            grad *= probabilities.dtype.type(scale)
            y = logits.get_variable()
            y.grad = grad
            y.backward()
        for p, g in zip(params, kept):
            p.grad_var = g
        self._hook.capture_backward = False

    def sample_targets(self, probabilities):
        """One class per row of ``probabilities`` (``(N, C)``, rows summing
        to 1), drawn from them on the device (inverse CDF of one uniform
        per row, from NumPy's or CuPy's global generator)."""
        xp = backend.get_array_module(probabilities)
        return inverse_cdf_sample(probabilities, xp.random.uniform(
            size=probabilities.shape[0]))

    def _keep_loss(self, array):
        """Sums the micro-batches' losses (0-d, on the device) for the stale
        rule's loss signal."""
        if not self.schedule.uses_change:
            return
        array = array.astype(numpy.float32, copy=False)
        self._loss = (array if self._micro_step == 0
                      else self._loss + array)

    def step_loss(self):
        """This step's loss, the mean of its micro-batches' (0-d device
        array, or None when the schedule does not use it)."""
        if self._loss is None or self.acc_iters == 1:
            return self._loss
        return self._loss / self.acc_iters

    def _set_due_statistics(self):
        """Tells every block which statistics the coming step refreshes."""
        step = self.t + 1
        self.schedule.begin_step(step, self.hyperparam.lr)
        for block in self.fisher_blocks:
            block.capture_step = step
            block.due = set(n for n, key in block.schedule_keys.items()
                            if self.schedule.is_due(key, step))

    def after_forward(self):
        """Called between the forward and backward passes of the last
        micro-batch of a step (a place to start communication early)."""

    def step(self):
        """Takes one step from the gradients in ``param.grad`` and the
        statistics captured by the blocks.

        The stages of the paper, in order:
        :meth:`exchange_statistics_and_gradients` (2), :meth:`update_curvature`
        and :meth:`update_parameters` (3), :meth:`exchange_parameters` (4);
        between 3 and 4, :meth:`settle` brings the step's device statuses to
        the host in one transfer.
        """
        self.reallocate_cleared_grads()
        with timed(self.timer, 'communication'):
            statistics = self.exchange_statistics_and_gradients()
        self.check_nan_in_grads()
        self.call_hooks('pre')
        self.t += 1
        if self.is_safe_to_update():
            status = self._step_status()
            changes = self.update_curvature(statistics, status)
            self.update_parameters(status)
            decisions = self.settle(changes, status)
            with timed(self.timer, 'communication'):
                decisions = self.exchange_parameters(decisions)
            self._apply_schedule(decisions)
            self._report_schedule()
            if self._adaptation is not None:
                self.adapt_damping()
        self.reallocate_cleared_grads()
        self.call_hooks('post')
        self.update_loss_scale()

    def refreshed_keys(self):
        """Schedule keys of the statistics refreshed at this step."""
        return self._refreshed_keys

    #: the decision value that makes a statistic due at the next step
    CALL_EARLY = -1
    #: the decision value of a due statistic no rank captured: still due
    NOT_REFRESHED = -2

    def _apply_schedule(self, decisions):
        """Records the schedule decisions of this step (every statistic's,
        from its owner): a positive value is the next interval of a
        statistic refreshed now, :attr:`CALL_EARLY` makes it due at the next
        step (a refreshed one with interval 1), :attr:`NOT_REFRESHED` (a due
        statistic every rank skipped) and 0 leave it as it is."""
        step = self.t
        refreshed = self.refreshed_keys()
        for key, value in decisions.items():
            if value == self.NOT_REFRESHED:
                continue
            if key in refreshed:
                self.schedule.refreshed(key, step, max(1, value))
            if value == self.CALL_EARLY:
                self.schedule.call_early(key, step)

    def _step_status(self):
        """This step's :class:`~chainerkfac.step_status.StepStatus`, zeroed
        (allocated once per device and number of owned blocks)."""
        xp = self.target.xp
        n = len(self.owned_blocks)
        status = self._status
        if (status is None or status.xp is not xp
                or status.array.size
                != max(n, 1) * step_status.SLOTS_PER_BLOCK):
            status = self._status = step_status.StepStatus(xp, n)
        else:
            status.reset()
        return status

    def exchange_statistics_and_gradients(self):
        """Stage 2: the statistics and gradients of the blocks this process
        owns (every owned block, with the statistics refreshed this step).
        Single process: this step's own, in place.

        Returns:
            list of ``(block, {statistic name: array}, {statistic name:
            (mu2, examples)}, {})``: the statistics, and the per-example
            moments and example counts behind them (the sampling-noise
            estimate of the stale rule,
            :func:`chainerkfac.stale.sampling_noise`); see
            :meth:`update_curvature`.
        """
        return [(b,) + b.take_statistics(with_moments=True) + ({},)
                for b in self.fisher_blocks]

    def exchange_parameters(self, decisions):
        """Stage 4: parameters updated elsewhere, and the schedule decisions
        of the statistics owned elsewhere. Nothing to do in one process.

        Args:
            decisions (dict): schedule key -> integer, for every statistic
                of the blocks this process owns (see
                :meth:`_apply_schedule`).

        Returns:
            dict: the same for every statistic of the model.
        """
        return decisions

    def _report_schedule(self):
        keys = [k for b in self.fisher_blocks
                for k in b.schedule_keys.values()]
        if keys:
            refreshed = sum(1 for b in self.fisher_blocks for _ in b.due)
            chainer.report({'kfac/refresh_fraction': refreshed / len(keys),
                            'kfac/mean_interval': self.schedule.summary(),
                            'kfac/early_refreshes': self._early_refreshes})

    def update_curvature(self, statistics, status):
        """EMA of the new statistics, the stale rule's drift measures, and
        the damped inverses the schedule asks for, all on the device.

        Args:
            statistics: list of ``(block, {name: array}, {name: (mu2,
                examples)}, {name: present})`` of the owned blocks, in
                :attr:`owned_blocks` order; absent names were not refreshed
                this step; ``present`` (DistributedKFAC only): 0-d 0/1
                device arrays, 0 for a statistic every rank skipped.
            status (chainerkfac.step_status.StepStatus): inversion statuses.

        Returns:
            dict: schedule key -> squared relative drift of each refreshed
            statistic (:func:`chainerkfac.stale.drift`; a 0-d device array,
            or a float when known without the device: ``inf`` for a first
            refresh, 0 for a fixed schedule).
        """
        hp, step = self.hyperparam, self.t
        changes = {}
        self._refreshed_keys = set()
        self._present = {}
        for index, (block, stats, moments, present) in enumerate(statistics):
            keys = block.schedule_keys
            elapsed = {}
            for name, new in stats.items():
                key = keys[name]
                self._refreshed_keys.add(key)
                elapsed[name] = self.schedule.elapsed(key, step)
                if not self.schedule.uses_change:
                    changes[key] = 0.0
                    continue
                with timed(self.timer, 'ema'):
                    changes[key] = block.refresh_reference(
                        name, new, moments.get(name, (None, 0)),
                        present.get(name))
            self._present.update((keys[n], m) for n, m in present.items())
            if stats:
                with timed(self.timer, 'ema'):
                    block.update_ema(stats, hp.cov_ema_decay, elapsed,
                                     present)
                    if hp.cov_ema_decay == 1:
                        for name in present:     # the reference is the EMA
                            block.reference[name] = block.ema[name]
            if any(block.ema[n] is None for n in block.statistic_names):
                continue
            names = self.schedule.inverse_due(step, stats,
                                              block.statistic_names)
            if self._reinvert and getattr(block, 'inverse_method',
                                          None) != 'eigen':
                names = list(block.statistic_names)     # the damping moved
            names += [n for n in block.statistic_names
                      if block.inverse[n] is None and n not in names]
            if names:
                with timed(self.timer, 'inversion'):
                    block.compute_inverses(hp.damping, hp.stab_coeff,
                                           self.pi_type, names, status, index)
        self._reinvert = False
        return changes

    def update_parameters(self, status):
        """Stage 3: preconditions and updates the parameters of the owned
        blocks (a block whose inversion failed or whose direction is not
        finite takes its plain gradient, decided on the device), and updates
        the parameters without a block by momentum SGD on their plain
        gradient. With ``kl_clip`` every direction (and plain gradient) is
        first scaled by :meth:`kl_scale`."""
        if (self.damping_adaptation and
                self.t % self.damping_adaptation_interval == 0):
            params = [p for b in self.owned_blocks for p in b.params]
            params += self.plain_params
            self._adaptation = [(p, p.array.copy(), p.grad.copy())
                                for p in params if p.grad is not None]
        pending = []
        for index, block in enumerate(self.owned_blocks):
            block.eigen_damping = self.hyperparam.damping
            prepared = self._precondition_block(block, status, index)
            if prepared is not None:
                pending.append(prepared)
        scale = None
        if self.kl_clip is not None:
            scale = self._kl_scale = self.kl_scale(pending, status)
        with timed(self.timer, 'update'):
            for param in self.plain_params:
                if scale is not None and param.grad is not None:
                    param.grad *= scale
                param.update()
            for prepared in pending:
                self._apply_block(prepared, status, scale)

    def _precondition_block(self, block, status, index):
        """Begins the block's update rules and preconditions its gradients:
        ``(block, index, params, rules, targets, grads, directions)``, or
        None when the block was updated already (a disabled rule: plain
        update) or has nothing to update."""
        params = block.params
        rules = [p.update_rule for p in params]
        if not all(r is not None and r.enabled for r in rules):
            for p in params:
                p.update()
            return None
        targets = []
        for param, rule in zip(params, rules):
            rule.t += 1
            targets.append(rule.begin(param))
        if any(t is None for t in targets):
            return None
        grads = [t.grad for t in targets]
        with timed(self.timer, 'preconditioning'):
            directions = block.precondition(grads)
        slot = status.fallback_slot(index)
        with timed(self.timer, 'update'):
            if directions is not grads:
                for direction in directions:
                    ops.flag_nonfinite(direction, status.array, slot)
        return block, index, params, rules, targets, grads, directions

    def _apply_block(self, prepared, status, scale=None):
        block, index, params, rules, targets, grads, directions = prepared
        slot = status.fallback_slot(index)
        if scale is not None:
            for direction in directions:
                direction *= scale
            if directions is not grads:       # the fallback's plain gradient
                for grad in grads:
                    grad *= scale
        for param, rule, target, direction, grad in zip(
                params, rules, targets, directions, grads):
            rule.apply(target, direction, grad, status.array, slot)
            rule.finish(param, target)

    def adapt_damping(self):
        """The Levenberg-Marquardt rule of ``damping_adaptation`` (see the
        class docstring), after the step's parameters are final."""
        lossfun, args, kwds, old_loss = self._last_batch
        records, self._adaptation = self._adaptation, None
        hp = self.hyperparam
        saved = [(link, link.avg_mean.copy(), link.avg_var.copy())
                 for link in self.target.links()
                 if isinstance(link, chainer.links.BatchNormalization)
                 and link.avg_mean is not None]
        # what the model reports in this forward pass goes nowhere: the
        # current reporter (its observers registered) into a dropped dict
        try:
            reporter = chainer.reporter.get_current_reporter()
        except IndexError:                   # none: reports go nowhere
            reporter = chainer.Reporter()
        with chainer.no_backprop_mode(), reporter.scope({}):
            new_loss = lossfun(*args, **kwds).array
        for link, mean, var in saved:
            link.avg_mean[...] = mean
            link.avg_var[...] = var
        deltas = dict((id(p), (p.array - old, g)) for p, old, g in records)
        model = 0.0
        for block in self.owned_blocks:
            pairs = [deltas.get(id(p)) for p in block.params]
            if any(pair is None for pair in pairs):
                continue
            steps = [d for d, _ in pairs]
            model = model + sum(_dot(g, d) for d, g in pairs) + 0.5 * (
                block.curvature_quadratic(steps, hp.damping, hp.stab_coeff))
        plain = 0.0
        for p in self.plain_params:
            if id(p) in deltas:
                d, g = deltas[id(p)]
                plain = plain + _dot(g, d) + 0.5 * hp.damping * _dot(d, d)
        new, old, predicted = self.reduce_adaptation(
            new_loss, old_loss, model, plain)
        low, high = self.damping_bounds
        omega = (19.0 / 20.0) ** self.damping_adaptation_interval
        # a model that predicts no decrease (or a loss that is not finite)
        # counts as the worst ratio
        rho = ((new - old) / predicted if predicted < 0 else float('-inf'))
        damping = float(hp.damping)
        if rho > 0.75:
            damping = max(low, damping * omega)
        elif not rho >= 0.25:                # also NaN
            damping = min(high, damping / omega)
        if damping != hp.damping:
            hp.damping = damping
            self._reinvert = True
        chainer.report({'kfac/damping': damping,
                        'kfac/reduction_ratio': rho})

    def _serialize_adaptation(self, serializer):
        """The adapted damping and whether the inverses still owe their
        re-inversion with it (an adaptation on the step before a snapshot
        re-inverts at the step after, as an uninterrupted run does). A
        snapshot written without ``damping_adaptation`` starts it from the
        configured damping, with a warning."""
        try:
            damping = float(serializer('adapted_damping',
                                       float(self.hyperparam.damping)))
            pending = int(serializer('adapted_damping_pending',
                                     int(self._reinvert)))
        except KeyError:
            warnings.warn(
                'chainerkfac: the snapshot has no adapted damping (written '
                'without damping_adaptation): adapting from damping={}'
                .format(self.hyperparam.damping), RuntimeWarning)
            return
        self.hyperparam.damping = damping
        self._reinvert = bool(pending)

    def reduce_adaptation(self, new_loss, old_loss, model, plain):
        """``(L(theta + delta), L(theta), M(delta))`` as floats: one
        process: these (one host read); DistributedKFAC: the losses' means
        over the ranks and the model's sum (each owner's blocks, the plain
        parameters once)."""
        return float(new_loss), float(old_loss), float(model + plain)

    def kl_scale(self, pending, status):
        """KL clipping's ``nu = min(1, sqrt(kappa / (lr^2 S)))``, ``S`` the
        sum over the blocks of ``Delta . g`` (the direction each block takes
        this step: its preconditioned gradient, or its plain gradient when
        it falls back, chosen on the device) plus ``g . g`` over the
        parameters without a block (their direction is their gradient).
        ``S`` is :meth:`reduce_kl_sum`'s (DistributedKFAC: over all ranks).
        A 0-d device array in one process, a float in several."""
        xp = self.target.xp
        total = xp.zeros((), numpy.float64)
        for block, index, params, rules, targets, grads, directions in pending:
            plain = sum(_dot(g, g) for g in grads)
            if directions is grads:
                total = total + plain
                continue
            taken = sum(_dot(d, g) for d, g in zip(directions, grads))
            fell_back = status.array[status.fallback_slot(index)] != 0
            total = total + xp.where(fell_back, plain, taken)
        total = self.reduce_kl_sum(total, [p.grad for p in self.plain_params
                                           if p.grad is not None])
        lr2 = float(self.hyperparam.lr) ** 2
        if isinstance(total, float):
            return min(1.0, float(numpy.sqrt(self.kl_clip / (lr2 * total))))\
                if lr2 * total > 0 else 1.0
        bound = xp.sqrt(self.kl_clip / xp.maximum(lr2 * total, 1e-300))
        return xp.minimum(1.0, xp.where(lr2 * total > 0, bound, 1.0))

    def reduce_kl_sum(self, blocks_sum, plain_grads):
        """The sum ``S`` of :meth:`kl_scale` from this process's blocks'
        part and the plain parameters' gradients (one process: all of it,
        on the device)."""
        for g in plain_grads:
            blocks_sum = blocks_sum + _dot(g, g)
        return blocks_sum

    def settle(self, changes, status):
        """The step's one device-to-host transfer, and what the host does
        with it: failed inversions are redone with a raised damping and
        warnings are issued (:meth:`FisherBlock.settle`), the refreshed
        statistics get their next intervals, and a loss spike calls every
        statistic of the owned blocks early
        (:meth:`~chainerkfac.stale.Schedule.observe_loss`).

        Returns:
            dict: the decisions of :meth:`exchange_parameters`, for every
            statistic of the owned blocks.
        """
        on_device = [k for k, c in changes.items() if not isinstance(c, float)]
        checks = self.device_checks()
        loss = self.step_loss()
        present = sorted(self._present)
        scale = self._kl_scale
        device_scale = [] if scale is None or isinstance(scale, float) else [
            scale.astype(numpy.float32)]
        (statuses, values, losses, check_values, presence,
         scales) = step_status.fetch(
            status.array, [changes[k] for k in on_device],
            [] if loss is None else [loss], checks,
            [self._present[k] for k in present], device_scale)
        if scale is not None:
            chainer.report({'kfac/kl_scale': float(scales[0]) if len(scales)
                            else scale})
            self._kl_scale = None
        absent = set(k for k, v in zip(present, presence) if v == 0)
        self.verify_device_checks(check_values)
        width = step_status.SLOTS_PER_BLOCK
        for index, block in enumerate(self.owned_blocks):
            start = status.fallback_slot(index)
            block.settle(statuses[start:start + width])
        changes = dict(changes)
        changes.update(zip(on_device, values))
        schedule, step = self.schedule, self.t
        spike = bool(len(losses)) and schedule.observe_loss(losses[0])
        decisions = {}
        self._early_refreshes = 0
        for block in self.owned_blocks:
            for key in block.schedule_keys.values():
                if key in absent:      # every rank skipped the link
                    decisions[key] = self.NOT_REFRESHED
                elif spike:
                    decisions[key] = self.CALL_EARLY
                    self._early_refreshes += key not in changes
                elif key in changes:
                    decisions[key] = schedule.new_interval(
                        key, step, float(changes[key]))
                else:
                    decisions[key] = 0
        return decisions

    def device_checks(self):
        """0-d device arrays a subclass wants read with the step's fetch
        (none here)."""
        return []

    def verify_device_checks(self, values):
        """Acts on the host values of :meth:`device_checks` (nothing here)."""

    # --- state ---------------------------------------------------------------
    def serialize(self, serializer):
        """Saves/loads the update rules (momentum, ``t``, ``lr_prev``) and
        every block's EMAs and inverses, so a resumed optimizer takes the
        same next step.

        Raises:
            RuntimeError: a save between the micro-batches of an
                ``acc_iters`` step (the partial sums are not part of a
                snapshot, so the resumed run would differ): snapshot at step
                boundaries (every ``acc_iters`` updater iterations).
        """
        if (self._micro_step and not isinstance(
                serializer, chainer.serializer.Deserializer)):
            raise RuntimeError(
                'chainerkfac.KFAC: snapshot taken after {} of the {} '
                'micro-batches of a step (acc_iters): its partial sums would '
                'be lost; trigger snapshots every multiple of acc_iters '
                'updater iterations'.format(self._micro_step,
                                             self.acc_iters))
        super(KFAC, self).serialize(serializer)
        if self.damping_adaptation:
            self._serialize_adaptation(serializer)
        self.schedule.serialize(serializer['schedule'])
        blocks = serializer['fisher_blocks']
        for block in self.fisher_blocks:
            block.serialize(blocks[block.name.strip('/') or 'root'])
