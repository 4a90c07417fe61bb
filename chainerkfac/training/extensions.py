"""Trainer extensions and update-rule hooks of the entry points.

Two reproduce ``examples/imagenet/train.py`` of the original code
(tyohei/chainerkfac): :class:`PolynomialLRDecay` is its ``LrPolynomialDecay``
and :class:`WeightRescaling` its ``NormalizeWeightUR``.
:class:`CommunicationVolume` reports the bytes a rank sent per update, and
:func:`add_plot_reports` sets up the loss and accuracy plots every entry
point draws.
"""
import math

import chainer
import chainer.links as L
import numpy
from chainer import backend
from chainer.training import extension
from chainer.training import extensions as chainer_extensions


def polynomial_decay(epoch, lr0, power, start_epoch, end_epoch):
    """The original's polynomial schedule at fractional epoch ``e``::

        lr(e) = lr0                                    if e < e_s
              = lr0 (1 - (e - e_s)/(e_end - e_s))^p    if e_s <= e < e_end
              = 0                                      if e >= e_end

    (``e_s = start_epoch``, ``e_end = end_epoch``, ``p = power``).

    There is no warmup: the original's branch commented "linear warmup"
    keeps ``lr0``.
    """
    if epoch < start_epoch:
        return float(lr0)
    if epoch < end_epoch:
        rate = 1.0 - (epoch - start_epoch) / float(end_epoch - start_epoch)
        return float(lr0) * rate ** power
    return 0.0


def effective_end_epoch(epoch, lr_end_epoch=None):
    """``e_end = max(epoch, lr_end_epoch)`` as the original computes it from
    the trainer's epoch count and ``polynomial_epoch``; ``epoch`` when
    ``lr_end_epoch`` is None. With ``lr_end_epoch > epoch`` (all the
    original's configs) training stops while the lr is still non-zero."""
    if lr_end_epoch is None:
        return epoch
    return max(epoch, lr_end_epoch)


class PolynomialLRDecay(extension.Extension):
    """Sets ``optimizer.<attr>`` to :func:`polynomial_decay` of the epoch.

    The fractional epoch ``e`` is ``updater.epoch_detail`` (examples seen /
    dataset size; with ``chainermn.scatter_dataset`` shards this is the
    fraction of the global epoch), or ``updater.iteration /
    iters_per_epoch`` if ``iters_per_epoch`` is given. The caller passes the
    end epoch: use :func:`effective_end_epoch` for the original's
    ``max(trainer epochs, polynomial_epoch)``.

    Timing. The extension runs every iteration and at :meth:`initialize`,
    so the first update already uses ``lr(e)`` at the start of training (or
    of the resumed run). With K-FAC's ``acc_iters`` one trainer iteration is
    one micro-batch and a step is taken every ``acc_iters`` iterations; the
    value is then only refreshed when ``iteration % acc_iters == 0``, so
    each step uses ``lr(e)`` at the examples seen *before* its first
    micro-batch, as the original (triggered every ``acc_iters``
    iterations). With ``acc_iters == 1`` this is every iteration. The
    momentum adjustment ``mu lr_t / lr_{t-1}`` of
    :class:`~chainerkfac.optimizers.KFACUpdateRule` therefore compares the
    lr of consecutive steps, as the original's ``lr_pre``.

    Serialization: the value is a function of the updater's position alone
    (restored from a trainer snapshot), so there is no state to save and a
    resumed run sets exactly the lr of an uninterrupted one.

    Args:
        attr (str): optimizer attribute to set.
        lr0 (float): ``lr0``.
        power (float): ``p > 0``.
        start_epoch (float): ``e_start``.
        end_epoch (float): ``e_end > e_start``.
        iters_per_epoch (float): if given, ``e = iteration / iters_per_epoch``.
        acc_iters (int): micro-batches per optimizer step; None reads the
            optimizer's ``acc_iters`` (1 if it has none).
        optimizer: the optimizer; None means the updater's ``'main'``.
    """

    trigger = 1, 'iteration'

    def __init__(self, attr='lr', *, lr0, power, start_epoch, end_epoch,
                 iters_per_epoch=None, acc_iters=None, optimizer=None):
        if lr0 < 0:
            raise ValueError('PolynomialLRDecay: lr0 must be >= 0, got '
                             '{}'.format(lr0))
        if not power > 0:
            raise ValueError('PolynomialLRDecay: power must be > 0, got '
                             '{}'.format(power))
        if not end_epoch > start_epoch:
            raise ValueError(
                'PolynomialLRDecay: end_epoch ({}) must be > start_epoch '
                '({})'.format(end_epoch, start_epoch))
        if iters_per_epoch is not None and not iters_per_epoch > 0:
            raise ValueError('PolynomialLRDecay: iters_per_epoch must be > 0')
        if acc_iters is not None and (int(acc_iters) != acc_iters
                                      or acc_iters < 1):
            raise ValueError('PolynomialLRDecay: acc_iters must be a '
                             'positive integer, got {}'.format(acc_iters))
        self.attr = attr
        self.lr0 = float(lr0)
        self.power = float(power)
        self.start_epoch = float(start_epoch)
        self.end_epoch = float(end_epoch)
        self.iters_per_epoch = iters_per_epoch
        self.acc_iters = acc_iters
        self._optimizer = optimizer
        self.last_value = None

    def value(self, epoch):
        """The scheduled value at fractional epoch ``epoch``."""
        return polynomial_decay(epoch, self.lr0, self.power,
                                self.start_epoch, self.end_epoch)

    def epoch_of(self, updater):
        if self.iters_per_epoch is not None:
            return updater.iteration / float(self.iters_per_epoch)
        return updater.epoch_detail

    def _get_optimizer(self, trainer):
        return self._optimizer or trainer.updater.get_optimizer('main')

    def _set(self, trainer):
        value = self.value(self.epoch_of(trainer.updater))
        setattr(self._get_optimizer(trainer), self.attr, value)
        self.last_value = value

    def initialize(self, trainer):
        self._set(trainer)

    def __call__(self, trainer):
        acc = self.acc_iters
        if acc is None:
            acc = getattr(self._get_optimizer(trainer), 'acc_iters', 1)
        if trainer.updater.iteration % acc == 0:
            self._set(trainer)

    def serialize(self, serializer):
        """Nothing to save: the value depends only on the updater's
        position, which the trainer's snapshot restores."""


def make_lr_schedule(config, iters_per_epoch=None, optimizer=None):
    """The LR extension of a :func:`~chainerkfac.training.config.load_config`
    dict: a :class:`PolynomialLRDecay` ending at
    ``max(epoch, lr_end_epoch)``, or None for ``lr_schedule='constant'``."""
    if config['lr_schedule'] == 'constant':
        return None
    return PolynomialLRDecay(
        'lr', lr0=config['lr'], power=config['lr_power'],
        start_epoch=config['lr_start_epoch'],
        end_epoch=effective_end_epoch(config['epoch'], config['lr_end_epoch']),
        iters_per_epoch=iters_per_epoch, acc_iters=config['acc_iters'],
        optimizer=optimizer)


class WeightRescaling(object):
    """Update-rule hook (timing ``'post'``) capping ``||W||_F``.

    After each update of a weight ``W`` with ``d_out = W.shape[0]``::

        s = sqrt(gain * d_out) / ||W||_F,   W <- s W  if s < 1

    i.e. the Frobenius norm is capped at its expected He-initialisation
    value (``gain = 2``: ``E||W||^2 = 2 d_out``); weights below the cap are
    left untouched (the original only shrinks; it is not an exact
    renormalisation). This replaces weight decay in the original's ImageNet
    recipe. The hook acts on the parameter it is given, i.e. on the fp32
    master copy under ``use_fp32_update()`` (copied back to fp16 after the
    post-update hooks). The norm is computed in at least fp32; the scale is
    applied without a host synchronisation on GPUs.

    Differences from ``NormalizeWeightUR``: no ``1e-9`` added to the norm
    (the cap is exact; a zero weight is left as is), and the original's
    ``--nw_skip_scale_comp`` option (reusing a geometric-mean scale for up
    to 10 steps, off by default) is left out.
    """

    name = 'WeightRescaling'
    timing = 'post'

    def __init__(self, gain=2.0):
        if not gain > 0:
            raise ValueError('WeightRescaling: gain must be > 0')
        self.gain = float(gain)

    def cap(self, shape):
        """``sqrt(gain * shape[0])``."""
        return math.sqrt(self.gain * shape[0])

    def __call__(self, rule, param):
        w = param.array
        if w is None or w.size == 0:
            return
        xp = backend.get_array_module(w)
        dtype = numpy.promote_types(w.dtype, numpy.float32)
        norm = xp.sqrt(xp.sum(xp.square(w.astype(dtype, copy=False))))
        tiny = numpy.finfo(dtype).tiny
        scale = xp.minimum(dtype.type(1), dtype.type(self.cap(w.shape))
                           / xp.maximum(norm, tiny))
        w *= scale.astype(w.dtype)


def add_weight_rescaling(model, gain=2.0,
                         link_types=(L.Convolution2D, L.Linear)):
    """Registers one :class:`WeightRescaling` on the ``W`` of every
    ``Convolution2D`` and ``Linear`` of ``model`` (not biases, not BN).

    Call after ``optimizer.setup(model)`` (the update rules must exist).
    Parameters that already hold a hook named ``'WeightRescaling'`` are
    skipped.

    Returns:
        int: the number of weights the hook was registered on.
    """
    hook = WeightRescaling(gain)
    count = 0
    for name, link in sorted(model.namedlinks()):
        if not isinstance(link, link_types):
            continue
        weight = getattr(link, 'W', None)
        if weight is None:
            continue
        rule = weight.update_rule
        if rule is None:
            raise RuntimeError(
                'add_weight_rescaling: {}/W has no update rule; call '
                'optimizer.setup(model) first'.format(name))
        try:
            rule.add_hook(hook, timing='post')
        except KeyError:
            continue
        count += 1
    return count


class CommunicationVolume(extension.Extension):
    """Reports ``comm/MB_per_update``: MB this rank sent (``comm.bytes_sent``,
    a chainerkfac communicator's counter) per K-FAC update of ``acc_iters``
    iterations."""

    trigger = (1, 'iteration')

    def __init__(self, comm, acc_iters):
        self.comm, self.acc_iters = comm, acc_iters
        self._last = 0

    def __call__(self, trainer):
        sent = self.comm.bytes_sent
        chainer.report({'comm/MB_per_update': (sent - self._last)
                        * self.acc_iters / 2 ** 20})
        self._last = sent


#: the plots every entry point draws: training and validation loss, accuracy
LOSS_AND_ACCURACY = ((['main/loss', 'validation/main/loss'], 'loss.png'),
                     (['main/accuracy', 'validation/main/accuracy'],
                      'accuracy.png'))


def add_plot_reports(trainer, x_key='epoch', trigger=None, extra=()):
    """Extends ``trainer`` with a ``PlotReport`` for each of
    :data:`LOSS_AND_ACCURACY` and then of ``extra`` (``(keys, file name)``
    pairs), when matplotlib can draw them (``PlotReport.available()``).

    Args:
        x_key (str): ``'epoch'`` or ``'iteration'``.
        trigger: None (``PlotReport``'s default, every epoch), or a function
            returning a new trigger for each plot (triggers keep state).

    Returns:
        int: the number of plots added.
    """
    if not chainer_extensions.PlotReport.available():
        return 0
    plots = list(LOSS_AND_ACCURACY) + list(extra)
    for keys, name in plots:
        kwargs = {} if trigger is None else {'trigger': trigger()}
        trainer.extend(chainer_extensions.PlotReport(
            keys, x_key, file_name=name, **kwargs))
    return len(plots)
