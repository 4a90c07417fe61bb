"""The conv block's A for strides, paddings and dilations, against loops."""
import chainer
import chainer.functions as F
import chainer.links as L
import numpy
import pytest

from chainerkfac.optimizers import KFAC


def brute_force_a(x, kh, kw, stride, pad, dilate, bias):
    n, c, h, w = x.shape
    sy, sx = stride
    ph, pw = pad
    dy, dx = dilate
    xp = numpy.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho = (h + 2 * ph - (kh - 1) * dy - 1) // sy + 1
    wo = (w + 2 * pw - (kw - 1) * dx - 1) // sx + 1
    d = c * kh * kw + (1 if bias else 0)
    a = numpy.zeros((d, d))
    for i in range(n):
        for oy in range(ho):
            for ox in range(wo):
                patch = [xp[i, ch, oy * sy + ky * dy, ox * sx + kx * dx]
                         for ch in range(c) for ky in range(kh)
                         for kx in range(kw)]
                if bias:
                    patch.append(1.0)
                patch = numpy.array(patch)
                a += numpy.outer(patch, patch)
    return a / n


@pytest.mark.parametrize('ksize,stride,pad,dilate,bias', [
    (3, (2, 1), (1, 0), 1, True),
    (3, 1, 2, 2, False),
    ((2, 3), (1, 2), (0, 1), (2, 1), True),
    (1, 2, 0, 1, False),          # the strided 1x1 fast path
])
def test_a_factor_matches_explicit_patches(rng, ksize, stride, pad, dilate,
                                           bias):
    with chainer.using_config('dtype', numpy.float64):
        conv = L.Convolution2D(2, 3, ksize, stride=stride, pad=pad,
                               dilate=dilate, nobias=not bias)
    x = rng.randn(2, 2, 7, 6)
    opt = KFAC(lr=0.0, cov_ema_decay=1.0)
    opt.setup(conv)
    opt.update(lambda x: F.sum(conv(x) ** 2), x)
    kh, kw = conv.W.shape[2:]
    as_pair = lambda v: v if isinstance(v, tuple) else (v, v)  # NOQA: E731 (one line)
    expected = brute_force_a(x, kh, kw, as_pair(stride), as_pair(pad),
                             as_pair(dilate), bias)
    numpy.testing.assert_allclose(opt.fisher_blocks[0].ema['A'], expected,
                                  rtol=1e-10, atol=1e-12)
