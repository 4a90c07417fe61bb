"""Base class of the Fisher blocks: the curvature of one link's parameters."""
import warnings

import chainer
import numpy

from chainerkfac import linalg


def compute_dtype(array):
    """Statistics of fp16 activations are accumulated in fp32, others as is."""
    return numpy.float32 if array.dtype == numpy.float16 else array.dtype


def batch_sum(x, axis, keepdims=False):
    """``x.sum(axis)`` in x's dtype, accumulated in float64 on NumPy arrays.

    For sums over the N (or N x T) rows of a batch: NumPy adds the rows of a
    reduction over a non-innermost axis one after another in x's dtype, so a
    float32 sum over 32768 rows is off by up to ~1e-4 relative (see
    ``chainerkfac/_compat.py``, patch 5); in float64 it is exact to float32's
    rounding. CuPy arrays are summed as they are (CuPy reduces in a tree).
    """
    if isinstance(x, numpy.ndarray):
        return x.sum(axis=axis, dtype=numpy.float64,
                     keepdims=keepdims).astype(x.dtype, copy=False)
    return x.sum(axis=axis, keepdims=keepdims)


class FisherBlock(object):
    """Curvature approximation of the parameters of one link.

    A block captures statistics from the function hook during the forward and
    backward passes of an update (``capture_forward``/``capture_backward``),
    accumulates them over micro-batches, and, at the step, keeps their
    exponential moving average (:attr:`ema`), the damped inverses
    (:attr:`inverse`) and turns gradients into preconditioned gradients.

    Subclasses define :attr:`statistic_names`, the capture methods,
    :meth:`compute_inverses` and :meth:`precondition`.

    Attributes:
        name (str): path of the link in the model, e.g. ``'/res2/a/conv1'``.
        link (chainer.Link): the link.
        ema (dict): statistic name -> EMA array (``None`` before the first step).
        inverse (dict): statistic name -> damped inverse used to precondition.
    """

    statistic_names = ()

    def __init__(self, name, link):
        self.name = name
        self.link = link
        #: statistic name -> its key in the optimizer's refresh schedule
        self.schedule_keys = {n: name + '/' + n for n in self.statistic_names}
        self.ema = dict.fromkeys(self.statistic_names)
        self.inverse = dict.fromkeys(self.statistic_names)
        self._sums = dict.fromkeys(self.statistic_names)
        self._counts = dict.fromkeys(self.statistic_names, 0)
        self._forward_seen = False
        self._warned = set()
        #: statistic name -> smallest diagonal its damped copy gets: raised
        #: (sticky) after a damped copy proved not positive definite
        self.damping_floor = dict.fromkeys(self.statistic_names, 0.0)
        #: statistic name -> diagonal used by the last inversion (device)
        self._diagonal = {}
        self._inverted = ()
        #: statistics to capture in the current update (the schedule's)
        self.due = set(self.statistic_names)

    # --- parameters --------------------------------------------------------
    @property
    def param_names(self):
        """Names of the link's parameters, in the order of the block's vector."""
        raise NotImplementedError

    @property
    def params(self):
        return [getattr(self.link, n) for n in self.param_names]

    def key_array(self):
        """The array the hook uses to recognise this link's function calls."""
        return getattr(self.link, self.param_names[0]).array

    def statistic_shapes(self):
        """{statistic name: shape}, from the link's parameter shapes."""
        raise NotImplementedError

    # --- capture (called by the hook) --------------------------------------
    def start_capture(self):
        self._forward_seen = False

    def capture_forward(self, function, in_data):
        if self._forward_seen:
            raise RuntimeError(
                'chainerkfac: link {} was called more than once in one update; '
                'K-FAC blocks do not support weight sharing'.format(self.name))
        self._forward_seen = True
        self.forward(function, in_data)

    def capture_backward(self, function, in_data, out_grad, grad_scale):
        gy = out_grad[0]
        if gy is not None:
            self.backward(function, in_data, gy, grad_scale)

    def forward(self, function, in_data):
        """Hook on the link's forward: records input statistics."""

    def backward(self, function, in_data, gy, grad_scale):
        """Hook on the link's backward; ``gy``: gradient of the loss w.r.t.
        the output, multiplied by ``grad_scale`` (the loss scale)."""

    def accumulate(self, name, value):
        """Adds one micro-batch's statistic ``name``."""
        if self._sums[name] is None:
            self._sums[name] = value
        else:
            self._sums[name] += value
        self._counts[name] += 1

    def take_statistics(self, names=None):
        """Returns {name: mean over the micro-batches since the last call}.

        Statistics not captured since the last call are absent. ``names``
        restricts the take to those statistics (default: all).
        """
        out = {}
        for name in names or self.statistic_names:
            if name not in self._sums:
                continue
            total, count = self._sums[name], self._counts[name]
            if total is not None:
                out[name] = total / count if count > 1 else total
            self._sums[name], self._counts[name] = None, 0
        return out

    # --- curvature ---------------------------------------------------------
    def update_ema(self, statistics, decay):
        """``ema = decay * new + (1 - decay) * ema`` (the original code's
        convention: ``decay`` weighs the *new* statistic; 1 keeps the newest
        only). The first statistic initialises the EMA."""
        for name, new in statistics.items():
            old = self.ema[name]
            if old is None or decay == 1:
                self.ema[name] = new
            else:
                self.ema[name] = decay * new + (1 - decay) * old

    def compute_inverses(self, damping, stab_coeff, pi_type, names, status,
                         index):
        """Recomputes the inverses of ``names`` from :attr:`ema` on the
        device, never modifying the EMA and never reading back to the host.

        Args:
            status (chainerkfac.step_status.StepStatus): where each inversion
                writes its status (slot ``status.statistic_slot(index, i)``
                for ``statistic_names[i]``) and where a failed one raises the
                block's fallback flag, so this step's update takes the plain
                gradient.
            index (int): the block's index among the owned blocks.

        :meth:`settle` then acts on the statuses, on the host.
        """
        raise NotImplementedError

    def _damped_cholesky_inverse(self, name, factor, diagonal, status,
                                 index):
        """``(factor + diagonal I)^-1`` with its status in the step's slot;
        the diagonal is at least :attr:`damping_floor`."""
        floor = self.damping_floor[name]
        if floor:
            diagonal = (max(diagonal, floor) if isinstance(diagonal, float)
                        else status.xp.maximum(diagonal, floor))
        slot = status.statistic_slot(index, self.statistic_names.index(name))
        self.inverse[name] = linalg.cholesky_inverse(
            linalg.add_diagonal(factor, diagonal), status.array, slot,
            overwrite=True)
        self._diagonal[name] = diagonal
        status.flag_fallback_if(index, status.array[slot] != 0)

    def settle(self, statuses):
        """Acts on this step's statuses, on the host, after the fetch.

        Args:
            statuses: the block's slots (NumPy floats): ``[fallback flag,
                status of statistic 0, status of statistic 1, ...]``.

        A failed Cholesky inversion is redone with a raised damping
        (:func:`chainerkfac.linalg.damped_inverse`, warned once per block;
        the raised diagonal becomes the factor's :attr:`damping_floor`), or,
        if nothing helps, the factor is dropped and the block uses the plain
        gradient. A fallback without a failed inversion means the
        preconditioned direction was not finite (warned once). Returns
        nothing; the step that failed has already taken the plain gradient.
        """
        failed = False
        for position, name in enumerate(self.statistic_names):
            if name in self._inverted and statuses[1 + position] != 0:
                failed = True
                self._settle_statistic(name, int(statuses[1 + position]))
        self._inverted = ()
        if statuses[0] != 0 and not failed:
            self.warn_once('nonfinite', 'preconditioned gradient is not '
                           'finite; the plain gradient was used this step')

    def _settle_statistic(self, name, code):
        """Recovers statistic ``name`` whose inversion reported ``code``."""
        self._recover_cholesky(name)

    def _recover_cholesky(self, name):
        diagonal = float(self._diagonal[name])
        try:
            inverse, added = linalg.damped_inverse(self.ema[name], diagonal)
        except linalg.NotPositiveDefiniteError as e:
            self.warn_once('identity', '{} cannot be inverted ({}); using the '
                           'plain gradient'.format(self._describe(name), e))
            self.inverse[name] = None
            return
        self.inverse[name] = inverse
        if added != diagonal:
            self.damping_floor[name] = added
            self.warn_once('damping', (
                'damped {} is not positive definite; its damping was raised '
                'from {:.3g} to {:.3g} (warned once per block)').format(
                    self._describe(name), diagonal, added))

    def _describe(self, name):
        return 'factor {}'.format(name)

    def precondition(self, grads):
        """Maps the list of gradients (order of :attr:`param_names`) to the
        list of preconditioned gradients."""
        raise NotImplementedError

    @property
    def ready(self):
        return all(self.inverse[n] is not None for n in self.statistic_names)

    def warn_once(self, key, message):
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn('chainerkfac: Fisher block {}: {}'.format(
                self.name, message), RuntimeWarning, stacklevel=3)

    # --- state -------------------------------------------------------------
    def serialize(self, serializer):
        """Saves/loads the EMAs, inverses (an empty array stands for None) and
        damping floors."""
        loading = isinstance(serializer, chainer.serializer.Deserializer)
        for table, prefix in ((self.ema, 'ema_'), (self.inverse, 'inv_')):
            for name in self.statistic_names:
                if loading:
                    value = serializer(prefix + name, None)
                    table[name] = (None if value is None or value.size == 0
                                   else self.link.device.send(value))
                else:
                    value = table[name]
                    serializer(prefix + name, numpy.zeros((0,), numpy.float32)
                               if value is None else value)
        for name in self.statistic_names:
            key = 'damping_floor_' + name
            if loading:
                try:
                    self.damping_floor[name] = float(serializer(key, 0.0))
                except KeyError:  # a snapshot from before floors existed
                    self.damping_floor[name] = 0.0
            else:
                serializer(key, self.damping_floor[name])

    def to_device(self, device):
        for table in (self.ema, self.inverse):
            for name, value in table.items():
                if value is not None:
                    table[name] = device.send(value)
