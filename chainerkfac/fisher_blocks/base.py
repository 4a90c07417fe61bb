"""Base class of the Fisher blocks: the curvature of one link's parameters."""
import warnings
import zlib

import chainer
import numpy
from chainer import backend

from chainerkfac import linalg
from chainerkfac import stale


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


def example_moment(columns, n_examples, scale, with_bias=False, probes=None):
    """Per-example mean ``mu2 = (1/N) sum_n ||x_n||_F^2`` of a statistic
    ``X = (1/N) sum_n x_n`` whose example ``n`` contributes
    ``x_n = scale * sum_{t in n} cbar_t cbar_t^T`` (``cbar = [c; 1]`` with a
    bias), as a 0-d array on the columns' device.

    It is the input of the sampling-noise estimate of the stale rule
    (:func:`chainerkfac.stale.sampling_noise`):
    ``E||X - E X||^2 ~= (mu2 - ||X||^2) / (N - 1)``. It is a sum over examples,
    so the mean over ranks of each rank's ``mu2`` is the global one.

    Args:
        columns: ``(D, N*T)`` array; example ``n`` owns the ``T`` columns
            ``n*T .. n*T + T - 1`` (im2col order; ``T = 1`` for Linear).
        n_examples (int): N.
        scale (float): the contribution's factor.
        with_bias (bool): append the constant-one row.
        probes: for ``T > 1``, a ``(D [+1], K)`` array of Rademacher
            vectors ``z``: ``mu2`` is then estimated without forming the
            ``x_n`` as ``(1/K) sum_k (1/N) sum_n ||x_n z_k||^2``, unbiased
            over ``z`` (``E[z z^T] = I``): ``u = Z^T C`` (one GEMM) and
            ``x_n z = C_n u_n`` (a batched product over the examples), two
            passes over the columns, ``4 K D N T`` flops against the
            statistic's ``2 D^2 N T`` (memory-bound: measured at about 0.5-1.3
            times the statistic's time on one CPU core, D = 288, N T = 200k,
            on refresh steps only). The owner subtracts ``(1/K) ||X Z||_F^2``
            for the same ``Z`` (:func:`statistic_square_norm`), which makes
            the difference equal ``(1/(K N)) sum_k sum_n ||(x_n - X) z_k||^2``
            exactly.

    For ``T = 1`` it is exact: ``scale^2 ||cbar_n||^4``.
    """
    xp = backend.get_array_module(columns)
    d, m = columns.shape
    per = m // n_examples
    if per == 1:
        norms = batch_sum(columns * columns, 0)
        if with_bias:
            norms = norms + 1
        return (scale * scale) * batch_sum(norms * norms, 0) / n_examples
    if probes is None:
        raise ValueError('example_moment needs probes when examples own '
                         'several columns')
    k = probes.shape[1]
    u = probes[:d].T @ columns                             # (K, N T)
    if with_bias:
        u += probes[d][:, None]
    u = u.reshape(k, n_examples, per).transpose(1, 2, 0)   # (N, T, K)
    y = xp.matmul(columns.reshape(d, n_examples, per).transpose(1, 0, 2), u)
    total = (y * y).sum()                                  # y: (N, D, K)
    if with_bias:
        s = u.sum(axis=1)                                  # the ones row
        total = total + (s * s).sum()
    return (scale * scale) * total / (k * n_examples)


def statistic_square_norm(statistic, probes=None):
    """``||X||_F^2``, or ``(1/K) ||X Z||_F^2`` for the probes ``Z`` that
    :func:`example_moment` used (0-d, on the device)."""
    if probes is None:
        return (statistic * statistic).sum()
    xz = statistic @ probes
    return (xz * xz).sum() / probes.shape[1]


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
        ema (dict): statistic name -> EMA array (``None`` before the first
            step).
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
        #: the step (1-based) the current capture belongs to (set by the
        #: optimizer; selects the noise probes)
        self.capture_step = 1
        #: whether captures also record the per-example moments of the
        #: stale rule's noise estimate (the optimizer turns it off when its
        #: schedule does not use them)
        self.record_moments = True
        self._moment_sums = dict.fromkeys(self.statistic_names)
        self._examples = dict.fromkeys(self.statistic_names, 0)
        #: statistic name -> whether its noise moment used probes
        self.probed = dict.fromkeys(self.statistic_names, False)
        self._probe_banks = {}
        # The stale rule's state of each statistic, on its owner:
        #: name -> the statistic at its last refresh (the EMA itself when
        #: ``cov_ema_decay`` is 1)
        self.reference = dict.fromkeys(self.statistic_names)
        #: name -> the sampling-noise variance of :attr:`reference` (0-d)
        self.reference_noise = dict.fromkeys(self.statistic_names)

    # --- parameters --------------------------------------------------------
    @property
    def param_names(self):
        """Names of the link's parameters, in the order of the block's
        vector."""
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

    def inverted_dims(self):
        """The sizes ``d`` of the (``d x d``) matrices the block inverts at a
        full refresh (the owner's cost model: ``sum d^3``)."""
        raise NotImplementedError

    def preconditioning_flops(self):
        """Flops of one :meth:`precondition` call."""
        raise NotImplementedError

    # --- capture (called by the hook) --------------------------------------
    def start_capture(self):
        self._forward_seen = False

    def capture_forward(self, function, in_data):
        if self._forward_seen:
            raise RuntimeError(
                'chainerkfac: link {} was called more than once in one '
                'update; K-FAC blocks do not support weight sharing '
                '(exclude=[{!r}] gives it momentum SGD)'.format(self.name,
                                                                 self.name))
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

    def accumulate(self, name, value, moment=None, examples=0):
        """Adds one micro-batch's statistic ``name`` (its value, and its
        per-example moment ``mu2`` over ``examples`` examples, see
        :func:`example_moment`)."""
        if self._sums[name] is None:
            self._sums[name] = value
            self._moment_sums[name] = moment
        else:
            self._sums[name] += value
            if moment is not None and self._moment_sums[name] is not None:
                self._moment_sums[name] = self._moment_sums[name] + moment
        self._counts[name] += 1
        self._examples[name] += examples

    def take_statistics(self, names=None, with_moments=False):
        """Returns {name: mean over the micro-batches since the last call}.

        Statistics not captured since the last call are absent. ``names``
        restricts the take to those statistics (default: all; an empty list
        takes none). With ``with_moments``, returns ``(values, moments)``,
        ``moments[name] = (mu2, examples)``: the mean per-example moment
        (a 0-d array, or None) and the number of examples behind the value.
        """
        out, moments = {}, {}
        for name in self.statistic_names if names is None else names:
            if name not in self._sums:
                continue
            total, count = self._sums[name], self._counts[name]
            if total is not None:
                out[name] = total / count if count > 1 else total
                moment = self._moment_sums[name]
                if moment is not None and count > 1:
                    moment = moment / count
                moments[name] = (moment, self._examples[name])
            self._sums[name], self._counts[name] = None, 0
            self._moment_sums[name], self._examples[name] = None, 0
        return (out, moments) if with_moments else out

    def noise_probes(self, name, size, xp, dtype, count=2, sets=8):
        """The ``(size, count)`` Rademacher probes of statistic ``name`` at
        :attr:`capture_step`: ``sets`` fixed sets per statistic (seeded by
        its schedule key, so every rank and process draws the same ones),
        used in turn, step after step. Kept on the device."""
        key = (name, size, xp.__name__, numpy.dtype(dtype).str)
        bank = self._probe_banks.get(key)
        if bank is None:
            seed = zlib.crc32(self.schedule_keys[name].encode())
            signs = numpy.random.RandomState(seed).randint(
                0, 2, (size, count * sets)) * 2 - 1
            bank = xp.asarray(signs.astype(dtype))
            self._probe_banks[key] = bank
        s = (self.capture_step - 1) % (bank.shape[1] // count)
        return bank[:, s * count:(s + 1) * count]

    # --- curvature ---------------------------------------------------------
    def update_ema(self, statistics, decay, elapsed=None, present=None):
        """``ema = w new + (1 - w) ema`` with ``w = 1 - (1 - r)^k``
        (``r = decay``, the weight of the newest statistic: the original
        code's convention; 1 keeps the newest only), where ``k`` is the
        number of steps since the statistic's previous refresh
        (``elapsed[name]``, default 1). The result equals ``k`` every-step
        updates ``ema = r new + (1 - r) ema`` with the same statistic, so a
        statistic refreshed every ``k`` steps keeps the weighting of the
        every-step EMA instead of lagging ``k`` times further behind. The
        first statistic initialises the EMA.

        ``present[name]``, a 0-d 0/1 device array (DistributedKFAC: whether
        the ranks captured the statistic; 0 when every rank skipped the
        link), multiplies ``w``: an absent statistic leaves the EMA as it
        was, decided on the device."""
        present = present or {}
        for name, new in statistics.items():
            old = self.ema[name]
            k = 1 if elapsed is None else elapsed.get(name, 1)
            weight = 1.0 - (1.0 - decay) ** k
            mask = present.get(name)
            if mask is not None and old is not None:
                weight = weight * mask
            elif old is None or weight == 1:
                self.ema[name] = new
                continue
            self.ema[name] = weight * new + (1 - weight) * old

    def statistic_square_norm(self, name, statistic):
        """``||X||_F^2`` of a reduced statistic, or its probe estimate when
        its per-example moment was estimated with probes (0-d, device)."""
        probes = None
        if self.probed[name]:
            probes = self.noise_probes(
                name, statistic.shape[0],
                backend.get_array_module(statistic), statistic.dtype)
        return statistic_square_norm(statistic, probes)

    def refresh_reference(self, name, new, moment, present=None):
        """The stale rule's measure for a refresh of statistic ``name``.

        Args:
            new: the statistic of this step (reduced over ranks).
            moment: ``(mu2, examples)``: its per-example moment and the
                number of examples behind it (over all ranks).

        Returns:
            the squared relative drift ``d^2`` since the previous refresh
            (:func:`chainerkfac.stale.drift`, 0-d on the device), or ``inf``
            for the first refresh. ``new`` and its sampling noise become the
            reference of the next refresh (with ``cov_ema_decay`` 1 that is
            the EMA itself; otherwise one more array of the statistic's
            size is kept). ``present`` (a 0-d 0/1 device array, see
            :meth:`update_ema`): 0 keeps the previous reference.
        """
        mu2, examples = moment
        noise = stale.sampling_noise(
            mu2, self.statistic_square_norm(name, new), examples)
        reference = self.reference[name]
        if reference is None:
            change = float('inf')
        else:
            previous = self.reference_noise[name]
            change = stale.drift(new, noise, reference,
                                 0.0 if previous is None else previous)
        if (present is not None and reference is not None and
                reference is not self.ema[name]):   # (the EMA is masked)
            new = present * new + (1 - present) * reference
            previous = self.reference_noise[name]
            noise = present * noise + (1 - present) * (
                0.0 if previous is None else previous)
        self.reference[name] = new
        self.reference_noise[name] = noise
        return change

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
        # kept in the factor's dtype, as a snapshot restores it
        self._diagonal[name] = status.xp.asarray(diagonal, factor.dtype)
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

    def warn_once(self, key, message):
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn('chainerkfac: Fisher block {}: {}'.format(
                self.name, message), RuntimeWarning, stacklevel=3)

    # --- state -------------------------------------------------------------
    def serialize(self, serializer):
        """Saves/loads the EMAs, inverses (an empty array stands for None;
        an eigendecomposition ``(values, vectors)`` is ``inv_<name>`` =
        vectors and ``eigval_<name>`` = values) and damping floors."""
        loading = isinstance(serializer, chainer.serializer.Deserializer)
        empty = numpy.zeros((0,), numpy.float32)
        for name in self.statistic_names:
            if loading:
                value = serializer('ema_' + name, None)
                self.ema[name] = (None if value is None or value.size == 0
                                  else self.link.device.send(value))
                vectors = serializer('inv_' + name, None)
                try:
                    values = serializer('eigval_' + name, None)
                except KeyError:   # written before the eigen option
                    values = None
                if vectors is None or vectors.size == 0:
                    self.inverse[name] = None
                elif values is not None and values.size:
                    self.inverse[name] = (self.link.device.send(values),
                                          self.link.device.send(vectors))
                else:
                    self.inverse[name] = self.link.device.send(vectors)
                continue
            ema, inverse = self.ema[name], self.inverse[name]
            serializer('ema_' + name, empty if ema is None else ema)
            values = None
            if isinstance(inverse, tuple):
                values, inverse = inverse
            serializer('inv_' + name, empty if inverse is None else inverse)
            serializer('eigval_' + name, empty if values is None else values)
        for name in self.statistic_names:
            key = 'damping_floor_' + name
            if loading:
                try:
                    self.damping_floor[name] = float(serializer(key, 0.0))
                except KeyError:  # a snapshot from before floors existed
                    warnings.warn(
                        'chainerkfac: the snapshot has no damping floor for '
                        'Fisher block {} (written by an older version): it '
                        'starts from none'.format(self.name), RuntimeWarning)
                    self.damping_floor[name] = 0.0
            else:
                serializer(key, self.damping_floor[name])
        self._serialize_stale_state(serializer, loading)

    def _serialize_stale_state(self, serializer, loading):
        """The stale rule's per-statistic state: the reference statistic
        (not stored again when it is the EMA) and its sampling noise (-1
        stands for none)."""
        for name in self.statistic_names:
            keys = ('ref_is_ema_' + name, 'ref_' + name, 'ref_noise_' + name)
            if not loading:
                reference = self.reference[name]
                is_ema = reference is not None and reference is self.ema[name]
                serializer(keys[0], int(is_ema))
                serializer(keys[1], numpy.zeros((0,), numpy.float32)
                           if reference is None or is_ema else reference)
                noise = self.reference_noise[name]
                serializer(keys[2], -1.0 if noise is None else float(noise))
                continue
            try:
                is_ema = int(serializer(keys[0], 0))
            except KeyError:
                warnings.warn(
                    'chainerkfac: the snapshot has no stale-statistics state '
                    'for Fisher block {} (written by an older version): its '
                    'next refresh compares with the EMA'.format(self.name),
                    RuntimeWarning)
                self.reference[name] = self.ema[name]
                self.reference_noise[name] = None
                continue
            value = serializer(keys[1], None)
            if is_ema:
                self.reference[name] = self.ema[name]
            else:
                self.reference[name] = (
                    None if value is None or value.size == 0
                    else self.link.device.send(value))
            noise = float(serializer(keys[2], -1.0))
            self.reference_noise[name] = None if noise < 0 else noise
        self._serialize_diagonals(serializer, loading)

    def _serialize_diagonals(self, serializer, loading):
        """The diagonal each inverse was made with (-1: none), which a later
        inversion of its partner factor keeps the damping product with."""
        for name in self.statistic_names:
            key = 'diagonal_' + name
            if not loading:
                value = self._diagonal.get(name)
                serializer(key, -1.0 if value is None else float(value))
                continue
            try:
                value = float(serializer(key, -1.0))
            except KeyError:   # an older snapshot: the next pi is fresh
                value = -1.0
            if value < 0 or self.ema[name] is None:
                self._diagonal.pop(name, None)
            else:
                self._diagonal[name] = self.link.xp.asarray(
                    value, self.ema[name].dtype)
