#!/usr/bin/env python
"""Computes the per-pixel mean image (``mean.npy``) of a list file's images.

    python scripts/compute_mean.py TRAIN_LIST --root DIR [-o mean.npy]
        [--size H W] [--channels 3] [--jobs N] [--skip_corrupt]

This is the ``mean.npy`` the original code's ImageNet recipe expects
(``train.py --mean``): a ``(C, H, W)`` float32 array, the average of the
images on the 0-255 scale, RGB as Pillow decodes them. ``train_imagenet.py
--mean mean.npy`` then subtracts its top-left ``crop x crop`` window from
every crop and divides by 255, as the original's ``datasets.py`` did.

The list holds ``relative/path label`` lines (as ``train_imagenet.py``
reads them), relative to ``--root``. The original recipe's images are
resized to one size beforehand (e.g. 256x256, as Chainer's ImageNet
example); every image must then have the first image's size. With
``--size H W`` each image is resized to ``H x W`` (bilinear) first.

Streaming: one image at a time is decoded and added to a float64 sum, so the
memory is one image and one sum per process, whatever the number of images.
"""
import argparse
import os
import sys
import time

try:
    import chainerkfac  # NOQA: F401 (before chainer: chainerkfac/_compat.py)
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    import chainerkfac  # NOQA: F401 (as above)
import numpy

from chainerkfac.datasets import image_list


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('list', help='list file: relative/path label per line')
    p.add_argument('--root', '-R', default='.',
                   help='directory the list is relative to (default .)')
    p.add_argument('--output', '-o', default='mean.npy')
    p.add_argument('--size', type=int, nargs=2, metavar=('H', 'W'),
                   help='resize every image to H x W first (default: all '
                   'images must have the first one\'s size)')
    p.add_argument('--channels', type=int, choices=(1, 3), default=3)
    p.add_argument('--jobs', type=int, default=1,
                   help='decoding processes (default 1)')
    p.add_argument('--skip_corrupt', action='store_true',
                   help='skip undecodable images (counted) instead of '
                   'stopping with an error naming the file')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    try:
        pairs = image_list.read_image_list(args.list, args.root)
        mean, n, skipped = image_list.mean_image(
            pairs, size=args.size, channels=args.channels,
            jobs=max(args.jobs, 1), skip_corrupt=args.skip_corrupt)
    except (ValueError, OSError) as e:
        sys.stderr.write('compute_mean.py: error: {}\n'.format(e))
        return 2
    numpy.save(args.output, mean)
    print('{}: mean of {} images{}, shape {} (C, H, W), per-channel means '
          '{} (0-255), {:.1f} s'.format(
              args.output, n, ' ({} corrupt skipped)'.format(skipped)
              if skipped else '', mean.shape,
              ' '.join('{:.3f}'.format(m) for m in mean.mean(axis=(1, 2))),
              time.time() - start))
    return 0


if __name__ == '__main__':
    sys.exit(main())
