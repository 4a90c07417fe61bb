"""Fisher blocks of ``chainer.links.BatchNormalization`` (scale gamma, shift beta)."""
from chainer import backend

from chainerkfac import linalg
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
    mean = x.mean(axis=axis, keepdims=True)
    var = x.var(axis=axis, keepdims=True)
    hhat = (x - mean) / xp.sqrt(var + eps)
    spatial = tuple(a for a in axis if a != 0)
    scale = x.shape[0] / grad_scale
    g_gamma = (gy * hhat).sum(axis=spatial) if spatial else gy * hhat
    g_beta = gy.sum(axis=spatial) if spatial else gy.copy()
    g_gamma *= scale
    g_beta *= scale
    return g_gamma, g_beta


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

    def start_capture(self):
        super(BatchNormalizationBlock, self).start_capture()
        self._x = None

    def forward(self, function, in_data):
        if 'F' in self.due:
            self._x = in_data[0]

    def backward(self, function, in_data, gy, grad_scale):
        x, self._x = self._x, None
        if x is None:
            return
        g_gamma, g_beta = per_example_gradients(
            x, gy, tuple(function.axis), function.eps, grad_scale)
        n = x.shape[0]
        xp = backend.get_array_module(g_gamma)
        if self.mode == 'full':
            f = xp.concatenate([g_gamma, g_beta], axis=1)
            stat = f.T @ f
        elif self.mode == 'unit':
            stat = xp.empty((g_gamma.shape[1], 2, 2), dtype=g_gamma.dtype)
            stat[:, 0, 0] = (g_gamma * g_gamma).sum(axis=0)
            stat[:, 1, 1] = (g_beta * g_beta).sum(axis=0)
            stat[:, 0, 1] = stat[:, 1, 0] = (g_gamma * g_beta).sum(axis=0)
        else:
            stat = xp.concatenate([(g_gamma * g_gamma).sum(axis=0),
                                   (g_beta * g_beta).sum(axis=0)])
        stat /= n
        self.accumulate('F', stat)

    def compute_inverses(self, damping, stab_coeff, pi_type, names=None):
        fisher = self.ema['F']
        value = stab_coeff * damping
        if self.mode == 'full':
            try:
                inverse, added = linalg.damped_inverse(fisher, value)
            except linalg.NotPositiveDefiniteError as e:
                self.warn_once('identity', 'Fisher cannot be inverted ({}); '
                               'using the plain gradient'.format(e))
                inverse, added = None, value
        elif self.mode == 'unit':
            inverse, added = self._unit_inverse(fisher, value)
        else:
            inverse, added = self._diag_inverse(fisher, value)
        if inverse is not None and added != value:
            self.warn_once('damping', (
                'damped Fisher is not positive definite; its damping was '
                'raised from {:.3g} to {:.3g} (warned once per block)').format(
                    value, added))
        self.inverse['F'] = inverse

    def _escalate(self, fisher, value, invert):
        """Tries ``value``, then larger diagonals, like ``damped_inverse``."""
        inverse, ok = invert(fisher, value)
        if bool(ok.all()):
            return inverse, value
        scale = abs(float(fisher.sum())) / max(fisher.size, 1)
        base = max(value, 1e-6 * scale, 1e-30)
        for k in range(8):
            added = base * 10.0 ** k
            inverse, ok = invert(fisher, added)
            if bool(ok.all()):
                return inverse, added
        self.warn_once('identity', 'Fisher cannot be inverted; using the '
                       'plain gradient')
        return None, value

    def _unit_inverse(self, fisher, value):
        return self._escalate(fisher, value, linalg.symmetric_2x2_inverse)

    def _diag_inverse(self, fisher, value):
        xp = backend.get_array_module(fisher)

        def invert(f, lam):
            damped = f + lam
            ok = (damped > 0) & xp.isfinite(damped)
            return 1 / xp.where(ok, damped, 1), ok
        return self._escalate(fisher, value, invert)

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
        return [new_g.astype(dtype, copy=False), new_b.astype(dtype, copy=False)]
