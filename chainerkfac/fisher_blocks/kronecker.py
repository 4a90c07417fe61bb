"""Kronecker-factored blocks: ``F ~= A (x) G`` for a weight matrix
``[W, b]``."""
import math

import numpy
from chainer import backend

from chainerkfac import linalg
from chainerkfac.fisher_blocks.base import batch_sum
from chainerkfac.fisher_blocks.base import FisherBlock


def input_second_moment(patches, n_examples, with_bias):
    """``A = (1/N) sum_j abar_j abar_j^T`` with ``abar_j = [a_j; 1]`` if bias.

    Args:
        patches: ``(D, M)`` array whose columns ``a_j`` are the M input vectors
            (M = N for Linear, N*T for a convolution).
        n_examples (int): N, the number of examples.
        with_bias (bool): append the constant-one input of the bias.

    The ones row is never materialised: its products are row sums (in
    float64 on the CPU: :func:`~chainerkfac.fisher_blocks.base.batch_sum`) and
    M. The products go through BLAS, exact to ~2e-6 of the entries' scale
    ``sqrt(A_ii A_jj)`` at M = 1.6M rows (OpenBLAS, float32).
    """
    d, m = patches.shape
    xp = backend.get_array_module(patches)
    size = d + 1 if with_bias else d
    a = xp.empty((size, size), dtype=patches.dtype)
    a[:d, :d] = patches @ patches.T
    if with_bias:
        sums = batch_sum(patches, 1)
        a[:d, d] = sums
        a[d, :d] = sums
        a[d, d] = m
    a /= n_examples
    return a


def output_second_moment(grads, scale):
    """``G = scale * sum_j g_j g_j^T`` for the columns of a ``(D, M)``
    array."""
    g = grads @ grads.T
    g *= scale
    return g


class KroneckerFactoredBlock(FisherBlock):
    """Block of a link ``s = W a + b`` (Linear, Convolution2D).

    The Fisher of ``vec([W, b])`` is approximated by ``A (x) G`` with
    ``A = E[abar abar^T]`` and ``G = E[g g^T]``; the preconditioned gradient is
    ``(G + sqrt(gamma)/pi I)^-1 [dW, db] (A + pi sqrt(gamma) I)^-1``
    (factored Tikhonov damping, ``pi`` by the trace-norm rule or 1).
    """

    statistic_names = ('A', 'G')
    #: ``'cholesky'``: damped inverses (factored Tikhonov damping);
    #: ``'eigen'``: eigendecompositions of the factors, with the damping
    #: added to the eigenvalue products (exact Tikhonov damping); set by the
    #: optimizer (``KFAC(inverse=...)``)
    inverse_method = 'cholesky'
    #: the damping of the eigenbasis preconditioning (set every step)
    eigen_damping = 0.0

    @property
    def has_bias(self):
        return getattr(self.link, 'b', None) is not None

    @property
    def param_names(self):
        return ('W', 'b') if self.has_bias else ('W',)

    def statistic_shapes(self):
        w = self.link.W
        d_in = 1
        for n in w.shape[1:]:
            d_in *= n
        d_in += 1 if self.has_bias else 0
        return {'A': (d_in, d_in), 'G': (w.shape[0], w.shape[0])}

    def inverted_dims(self):
        """``[d_in (+1 with a bias), d_out]``: A and G."""
        if self.link.W.array is None:
            raise ValueError(
                'chainerkfac: link {} is not initialised; run one forward '
                'pass (or give its input size) before the first distributed '
                'update'.format(self.name))
        shapes = self.statistic_shapes()
        return [shapes['A'][0], shapes['G'][0]]

    def preconditioning_flops(self):
        """``G^-1 M A^-1`` for ``M`` of ``d_out x d_in``:
        ``2 d_out d_in (d_out + d_in)``."""
        d_in, d_out = self.inverted_dims()
        return 2.0 * d_in * d_out * (d_in + d_out)

    def compute_inverses(self, damping, stab_coeff, pi_type, names, status,
                         index):
        """``(A + pi sqrt(gamma) I)^-1`` and ``(G + sqrt(gamma)/pi I)^-1``
        for the factors in ``names``, with ``pi`` on the device.

        When only one factor is re-inverted (stale statistics) while the
        other keeps its inverse, the new one gets the diagonal
        ``gamma / d_other``, ``d_other`` being the diagonal the other was
        inverted with: the two dampings keep the product ``gamma`` of
        factored Tikhonov damping (a ``pi`` from the new traces would change
        the product to ``gamma pi_new / pi_old``, i.e. change the damping
        whenever the traces moved). ``pi`` is renewed when both are."""
        if self.inverse_method == 'eigen':
            self._compute_eigenbases(names, status, index)
            return
        a, g = self.ema['A'], self.ema['G']
        partner = {'A': 'G', 'G': 'A'}
        if (len(names) == 1 and damping > 0 and
                self.inverse[partner[names[0]]] is not None and
                partner[names[0]] in self._diagonal):
            name = names[0]
            self._damped_cholesky_inverse(
                name, self.ema[name], damping / self._diagonal[partner[name]],
                status, index)
            self._inverted = (name,)
            return
        pi = linalg.pi_tracenorm(a, g) if pi_type == 'tracenorm' else 1.0
        root = math.sqrt(damping)
        for name, factor, diagonal in (('A', a, pi * root),
                                       ('G', g, root / pi)):
            if name in names:
                self._damped_cholesky_inverse(name, factor, diagonal, status,
                                              index)
        self._inverted = tuple(names)

    def curvature_quadratic(self, deltas, damping, stab_coeff):
        """``vec(D)^T (A (x) G + gamma I) vec(D) = sum((G D A) * D) +
        gamma ||D||^2`` for the step ``D = [dW, db]`` (the EMA factors,
        exact Tikhonov damping: the quadratic model of damping adaptation),
        0-d on the device."""
        matrix = self._matrix(deltas)
        a = self.ema['A'].astype(matrix.dtype, copy=False)
        g = self.ema['G'].astype(matrix.dtype, copy=False)
        return ((g @ matrix @ a) * matrix).sum() + damping * (
            matrix * matrix).sum()

    def _matrix(self, arrays):
        """``[W, b]`` as a ``(d_out, d_in [+1])`` matrix (in at least
        float32)."""
        xp = backend.get_array_module(arrays[0])
        w = arrays[0]
        dtype = numpy.promote_types(w.dtype, numpy.float32)
        matrix = w.reshape(w.shape[0], -1).astype(dtype, copy=False)
        if self.has_bias:
            matrix = xp.concatenate(
                [matrix, arrays[1].reshape(-1, 1).astype(dtype, copy=False)],
                1)
        return matrix

    def _compute_eigenbases(self, names, status, index):
        """``A = Q_A diag(l_A) Q_A^T``, ``G = Q_G diag(l_G) Q_G^T`` for the
        factors in ``names`` (the EMAs, undamped); a failed one flags the
        block's fallback (this step takes the plain gradient) and is
        dropped at :meth:`settle`. The partner of a stale refresh keeps its
        eigenbasis: with exact damping there is no split to keep."""
        for position, name in enumerate(self.statistic_names):
            if name not in names:
                continue
            slot = status.statistic_slot(index, position)
            self.inverse[name] = linalg.symmetric_eigh(
                self.ema[name], status.array, slot)
            status.flag_fallback_if(index, status.array[slot] != 0)
        self._inverted = tuple(names)

    def _recover_cholesky(self, name):
        if self.inverse_method != 'eigen':
            return super(KroneckerFactoredBlock, self)._recover_cholesky(name)
        self.warn_once('identity', 'the eigendecomposition of factor {} '
                       'failed (not finite); the block uses the plain '
                       'gradient until its next refresh'.format(name))
        self.inverse[name] = None

    def _precondition_eigen(self, matrix):
        """``Q_G ((Q_G^T M Q_A) / (l_G l_A^T + gamma)) Q_A^T``: the exact
        ``(A (x) G + gamma I)^-1 vec(M)`` of the EMA factors, 4 GEMMs."""
        (l_a, q_a), (l_g, q_g) = self.inverse['A'], self.inverse['G']
        dtype = matrix.dtype
        m = matrix.astype(q_a.dtype, copy=False)
        v = q_g.T @ m @ q_a
        v /= l_g[:, None] * l_a[None, :] + q_a.dtype.type(self.eigen_damping)
        return (q_g @ v @ q_a.T).astype(dtype, copy=False)

    def precondition(self, grads):
        a_inv, g_inv = self.inverse['A'], self.inverse['G']
        if a_inv is None or g_inv is None:
            return grads
        xp = backend.get_array_module(grads[0])
        gw = grads[0]
        out_size = gw.shape[0]
        matrix = gw.reshape(out_size, -1)
        if self.has_bias:
            matrix = xp.concatenate([matrix, grads[1].reshape(out_size, 1)], 1)
        if self.inverse_method == 'eigen':
            matrix = self._precondition_eigen(matrix)
        else:
            dtype = matrix.dtype
            matrix = g_inv @ matrix.astype(a_inv.dtype, copy=False) @ a_inv
            matrix = matrix.astype(dtype, copy=False)
        if self.has_bias:
            return [matrix[:, :-1].reshape(gw.shape), matrix[:, -1].copy()]
        return [matrix.reshape(gw.shape)]
