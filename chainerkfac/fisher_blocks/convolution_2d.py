"""Fisher block of ``chainer.links.Convolution2D`` (KFC, Grosse & Martens
2016)."""
from chainer import backend
from chainer.utils import conv

from chainerkfac.fisher_blocks.base import compute_dtype
from chainerkfac.fisher_blocks.base import example_moment
from chainerkfac.fisher_blocks import kronecker


def patches_matrix(x, kh, kw, function):
    """im2col of ``x`` as a ``(C*kh*kw, N*Ho*Wo)`` matrix.

    Rows are ordered (channel, kh, kw) like ``W.reshape(out, -1)``; the
    stride, padding, dilation and ``cover_all`` are the function call's own.
    """
    f = function
    n, c = x.shape[:2]
    if (kh, kw) == (1, 1) and (f.ph, f.pw) == (0, 0) and not f.cover_all:
        col = x[:, :, ::f.sy, ::f.sx]            # (N, C, Ho, Wo)
        return col.transpose(1, 0, 2, 3).reshape(c, -1)
    im2col = (conv.im2col_cpu if backend.get_array_module(x).__name__ ==
              'numpy' else conv.im2col_gpu)
    col = im2col(x, kh, kw, f.sy, f.sx, f.ph, f.pw, cover_all=f.cover_all,
                 dy=f.dy, dx=f.dx)               # (N, C, kh, kw, Ho, Wo)
    return col.transpose(1, 2, 3, 0, 4, 5).reshape(c * kh * kw, -1)


class Convolution2DBlock(kronecker.KroneckerFactoredBlock):
    """K-FAC block of a 2-D convolution (any ksize, stride, pad, dilation).

    With im2col patches ``abar_{n,t}`` over the T output positions:
    ``A = (1/N) sum_n sum_t abar abar^T`` (summed over positions) and
    ``G = (1/(N T)) sum_n sum_t gt gt^T`` (averaged over positions),
    ``gt = N dL/ds``. Grouped convolutions are rejected at set-up.
    """

    def forward(self, function, in_data):
        if 'A' not in self.due:
            return
        x, w = in_data[0], in_data[1]
        x = x.astype(compute_dtype(x), copy=False)
        patches = patches_matrix(x, w.shape[2], w.shape[3], function)
        n = x.shape[0]
        moment = None
        if self.record_moments:
            moment = example_moment(patches, n, 1.0, self.has_bias,
                                    self._probes_for('A', patches, n))
        self.accumulate('A', kronecker.input_second_moment(
            patches, n, self.has_bias), moment, n)

    def backward(self, function, in_data, gy, grad_scale):
        if 'G' not in self.due:
            return
        gy = gy.astype(compute_dtype(gy), copy=False)
        n, c_out, ho, wo = gy.shape
        grads = gy.transpose(1, 0, 2, 3).reshape(c_out, -1)
        # (1/(N T)) sum (N gy)(N gy)^T, with the loss scale removed
        moment = None
        if self.record_moments:
            moment = example_moment(
                grads, n, n * n / (ho * wo) / grad_scale ** 2, False,
                self._probes_for('G', grads, n))
        self.accumulate('G', kronecker.output_second_moment(
            grads, n / (ho * wo) / grad_scale ** 2), moment, n)

    def _probes_for(self, name, columns, n_examples):
        """The noise probes of a statistic whose examples own several
        columns (None when each owns one: the moment is then exact)."""
        self.probed[name] = columns.shape[1] > n_examples
        if not self.probed[name]:
            return None
        size = self.statistic_shapes()[name][0]
        return self.noise_probes(name, size, backend.get_array_module(
            columns), columns.dtype)
