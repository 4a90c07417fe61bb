"""Base class of the Fisher blocks: the curvature of one link's parameters."""
import warnings

import chainer
import numpy


def compute_dtype(array):
    """Statistics of fp16 activations are accumulated in fp32, others as is."""
    return numpy.float32 if array.dtype == numpy.float16 else array.dtype


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

    def compute_inverses(self, damping, stab_coeff, pi_type, names=None):
        """Recomputes the inverses of ``names`` (default: all) from
        :attr:`ema`; never modifies the EMA."""
        raise NotImplementedError

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
        """Saves/loads the EMAs and inverses (an empty array stands for None)."""
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

    def to_device(self, device):
        for table in (self.ema, self.inverse):
            for name, value in table.items():
                if value is not None:
                    table[name] = device.send(value)
