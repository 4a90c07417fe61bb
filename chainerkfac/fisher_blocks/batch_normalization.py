"""Fisher blocks of ``chainer.links.BatchNormalization`` (scale gamma, shift
beta)."""
import numpy
from chainer import backend

from chainerkfac import linalg
from chainerkfac.cuda import ops
from chainerkfac.fisher_blocks.base import batch_sum
from chainerkfac.fisher_blocks.base import compute_dtype
from chainerkfac.fisher_blocks.base import FisherBlock


def per_example_gradients(x, gy, axis, eps, grad_scale):
    """Per-example gradients of gamma and beta, each ``(N, C)``.

    ``g_gamma[n] = sum_t gt * hhat``, ``g_beta[n] = sum_t gt`` with
    ``gt = N dL/dy`` and ``hhat`` the input normalised with the batch
    statistics (``axis``: the reduced axes, batch axis 0 first).
    """
    dtype = compute_dtype(x)
    x = x.astype(dtype, copy=False)
    gy = gy.astype(dtype, copy=False)
    xp = backend.get_array_module(x)
    count = 1
    for a in axis:
        count *= x.shape[a]
    # batch statistics summed in float64 on the CPU (as patched Chainer does)
    hhat = x - batch_sum(x, axis, keepdims=True) / count
    var = batch_sum(hhat * hhat, axis, keepdims=True) / count
    hhat /= xp.sqrt(var + eps)
    spatial = tuple(a for a in axis if a != 0)
    scale = x.shape[0] / grad_scale
    g_gamma = (gy * hhat).sum(axis=spatial) if spatial else gy * hhat
    g_beta = gy.sum(axis=spatial) if spatial else gy.copy()
    g_gamma *= scale
    g_beta *= scale
    return g_gamma, g_beta


def diagonal_inverse(fisher, damping, status, slot):
    """``1 / (f + damping)`` per entry of a diagonal Fisher, on the device.

    An entry whose damped value is not finite and positive follows the
    recovery rule of every block (:data:`chainerkfac.linalg.RECOVERY_TRIES`
    and friends): ``1 / (f + base 10^k)`` for the first ``k`` that works,
    ``base = max(damping, RECOVERY_RELATIVE |f|, RECOVERY_TINY)`` (level 1),
    or 1 if none does (level 2: the plain gradient); ``status[slot]``
    becomes at least the highest level.
    """
    xp = backend.get_array_module(fisher)
    t = fisher.dtype.type
    damped = fisher + t(damping)
    ok = xp.isfinite(damped) & (damped > 0)
    inverse = xp.where(ok, 1 / xp.where(ok, damped, 1), 1).astype(
        fisher.dtype)
    base = xp.maximum(xp.maximum(t(damping), t(linalg.RECOVERY_RELATIVE) *
                                 abs(fisher)), t(linalg.RECOVERY_TINY))
    pending = ~ok & xp.isfinite(fisher)
    recovered = xp.zeros_like(ok)
    power = t(1)
    for _ in range(linalg.RECOVERY_TRIES):
        raised = fisher + base * power
        works = pending & ~recovered & xp.isfinite(raised) & (raised > 0)
        inverse = xp.where(works, 1 / xp.where(works, raised, 1), inverse)
        recovered |= works
        power = power * t(10)
    level = xp.where(ok.all(), 0, xp.where((ok | recovered).all(), 1, 2))
    status[slot] = xp.maximum(status[slot], level.astype(numpy.int32))
    return inverse.astype(fisher.dtype, copy=False)


class BatchNormalizationBlock(FisherBlock):
    """Block of a batch normalization's ``[gamma; beta]`` (``2C`` values).

    With per-example ``f_n = [g_gamma[n]; g_beta[n]]`` and damping
    ``lambda = stab_coeff * gamma_damping`` (no pi), three shapes of the
    Fisher ``F = (1/N) sum_n f_n f_n^T``:

    - ``'full'``: the ``2C x 2C`` matrix (the original code);
      statistic ``F`` of shape ``(2C, 2C)``.
    - ``'unit'``: one ``2x2`` block per channel (SP-NGD's unit-wise natural
      gradient), inverted in closed form; ``F`` of shape ``(C, 2, 2)``.
    - ``'diag'``: the diagonal (the CVPR paper); ``F`` of shape ``(2C,)``.
    """

    statistic_names = ('F',)
    param_names = ('gamma', 'beta')

    def __init__(self, name, link, mode='full'):
        if mode not in ('full', 'unit', 'diag'):
            raise ValueError("bn_fisher must be 'full', 'unit' or 'diag', "
                             "got {!r}".format(mode))
        super(BatchNormalizationBlock, self).__init__(name, link)
        self.mode = mode
        self._x = None

    def statistic_shapes(self):
        c = self.link.gamma.shape[0]
        return {'F': {'full': (2 * c, 2 * c), 'unit': (c, 2, 2),
                      'diag': (2 * c,)}[self.mode]}

    def inverted_dims(self):
        """``'full'``: one ``2C``; ``'unit'``: ``C`` blocks of 2 (closed
        form); ``'diag'``: ``2C`` scalars."""
        c = self.link.gamma.shape[0]
        return {'full': [2 * c], 'unit': [2] * c, 'diag': [1] * (2 * c)}[
            self.mode]

    def preconditioning_flops(self):
        """``2 d^2`` per inverted ``d x d`` (a matrix-vector product)."""
        return 2.0 * sum(d * d for d in self.inverted_dims())

    def start_capture(self):
        super(BatchNormalizationBlock, self).start_capture()
        self._x = None

    def forward(self, function, in_data):
        if 'F' in self.due:
            self._x = in_data[0]

    def backward(self, function, in_data, gy, grad_scale):
        x = self._x      # kept: a Monte-Carlo Fisher runs several backwards
        if x is None:
            return
        g_gamma, g_beta = per_example_gradients(
            x, gy, tuple(function.axis), function.eps, grad_scale)
        n = x.shape[0]
        xp = backend.get_array_module(g_gamma)
        gg, bb = g_gamma * g_gamma, g_beta * g_beta
        if self.mode == 'full':
            f = xp.concatenate([g_gamma, g_beta], axis=1)
            stat = f.T @ f
            # x_n = f_n f_n^T: ||x_n||^2 = ||f_n||^4
            per_example = (batch_sum(gg + bb, 1) ** 2
                           if self.record_moments else None)
        elif self.mode == 'unit':
            stat = xp.empty((g_gamma.shape[1], 2, 2), dtype=g_gamma.dtype)
            stat[:, 0, 0] = batch_sum(gg, 0)
            stat[:, 1, 1] = batch_sum(bb, 0)
            stat[:, 0, 1] = stat[:, 1, 0] = batch_sum(g_gamma * g_beta, 0)
            # per channel ||[g b]^T [g b]||^2 = (g^2 + b^2)^2
            per_example = (batch_sum((gg + bb) ** 2, 1)
                           if self.record_moments else None)
        else:
            stat = xp.concatenate([batch_sum(gg, 0), batch_sum(bb, 0)])
            per_example = (batch_sum(gg * gg + bb * bb, 1)
                           if self.record_moments else None)
        stat /= n
        moment = (batch_sum(per_example, 0) / n if self.record_moments
                  else None)
        self.accumulate('F', stat, moment, n)

    def compute_inverses(self, damping, stab_coeff, pi_type, names, status,
                         index):
        """``(F + stab_coeff gamma I)^-1`` on the device, in the shape of
        the mode. ``'full'`` goes through the Cholesky path (a failure is
        recovered in :meth:`settle`); ``'unit'`` and ``'diag'`` raise the
        damping of the channels that need it on the device and report the
        highest level in their status slot (0: none, 1: raised, 2: some
        channels left unpreconditioned)."""
        fisher = self.ema['F']
        value = stab_coeff * damping
        if self.mode == 'full':
            self._damped_cholesky_inverse('F', fisher, value, status, index)
        elif self.mode == 'unit':
            self.inverse['F'] = ops.unit_fisher_inverse(
                fisher, value, status.array, status.statistic_slot(index, 0))
        else:
            self.inverse['F'] = diagonal_inverse(
                fisher, value, status.array, status.statistic_slot(index, 0))
        self._inverted = ('F',)

    def _settle_statistic(self, name, code):
        if self.mode == 'full':
            self._recover_cholesky(name)
        elif code == 1:
            self.warn_once('damping', 'damped Fisher is not positive definite '
                           'for some channels; their damping was raised '
                           '(warned once per block)')
        else:
            self.warn_once('identity', 'Fisher cannot be inverted for some '
                           'channels; they use the plain gradient')

    def _describe(self, name):
        return 'Fisher'

    def curvature_quadratic(self, deltas, damping, stab_coeff):
        """``d^T (F + stab_coeff gamma I) d`` for the step ``d = [dgamma;
        dbeta]`` in the mode's shape of ``F`` (the EMA), 0-d on the
        device."""
        fisher = self.ema['F']
        g, b = (x.astype(fisher.dtype, copy=False) for x in deltas)
        xp = backend.get_array_module(fisher)
        if self.mode == 'full':
            d = xp.concatenate([g, b])
            quadratic = d @ (fisher @ d)
        elif self.mode == 'unit':
            quadratic = (fisher[:, 0, 0] * g * g + fisher[:, 1, 1] * b * b +
                         2 * fisher[:, 0, 1] * g * b).sum()
        else:
            c = g.shape[0]
            quadratic = (fisher[:c] * g * g).sum() + (
                fisher[c:] * b * b).sum()
        return quadratic + stab_coeff * damping * ((g * g).sum() +
                                                    (b * b).sum())

    def precondition(self, grads):
        inverse = self.inverse['F']
        if inverse is None:
            return grads
        xp = backend.get_array_module(grads[0])
        d_gamma, d_beta = grads
        dtype = d_gamma.dtype
        g = d_gamma.astype(inverse.dtype, copy=False)
        b = d_beta.astype(inverse.dtype, copy=False)
        if self.mode == 'full':
            out = inverse @ xp.concatenate([g, b])
            c = g.shape[0]
            new_g, new_b = out[:c], out[c:]
        elif self.mode == 'unit':
            new_g = inverse[:, 0, 0] * g + inverse[:, 0, 1] * b
            new_b = inverse[:, 1, 0] * g + inverse[:, 1, 1] * b
        else:
            c = g.shape[0]
            new_g, new_b = inverse[:c] * g, inverse[c:] * b
        return [new_g.astype(dtype, copy=False),
                new_b.astype(dtype, copy=False)]
