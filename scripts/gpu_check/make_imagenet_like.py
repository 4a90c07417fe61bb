#!/usr/bin/env python
"""Writes a tiny ImageNet-layout folder of generated JPEGs, for smoke runs.

    python scripts/gpu_check/make_imagenet_like.py DIR [--n_train 64]
        [--n_val 32] [--n_class 10] [--size 256]

Creates ``DIR/train/<class>/<i>.JPEG``, ``DIR/val/<i>.JPEG``,
``DIR/train.txt`` and ``DIR/val.txt`` (``relative/path label`` lines, what
``train_imagenet.py`` reads), and ``DIR/fp16.json``: the ResNet-50
configuration ``configs/bs4k_resnet50.json`` with fp16 training and a static
loss scale. The images are smooth random colour fields with noise, so that
JPEG decoding, cropping and the network see varied, natural-sized input.
"""
import argparse
import json
import os

import numpy
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def image(rng, size):
    coarse = rng.randint(0, 256, (4, 4, 3)).astype(numpy.float32)
    smooth = numpy.kron(coarse, numpy.ones((size // 4 + 1, size // 4 + 1, 1),
                                           numpy.float32))[:size, :size]
    noisy = smooth + rng.normal(0, 20, smooth.shape)
    return Image.fromarray(numpy.clip(noisy, 0, 255).astype(numpy.uint8))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('dir')
    p.add_argument('--n_train', type=int, default=64)
    p.add_argument('--n_val', type=int, default=32)
    p.add_argument('--n_class', type=int, default=10)
    p.add_argument('--size', type=int, default=256)
    p.add_argument('--seed', type=int, default=0)
    args = p.parse_args(argv)
    rng = numpy.random.RandomState(args.seed)
    for split, n in (('train', args.n_train), ('val', args.n_val)):
        lines = []
        for i in range(n):
            label = i % args.n_class
            rel = ('n{:08d}/{}_{}.JPEG'.format(label, split, i)
                   if split == 'train' else '{}_{}.JPEG'.format(split, i))
            path = os.path.join(args.dir, split, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            image(rng, args.size).save(path, quality=90)
            lines.append('{} {}'.format(rel, label))
        with open(os.path.join(args.dir, split + '.txt'), 'w') as f:
            f.write('\n'.join(lines) + '\n')
    with open(os.path.join(ROOT, 'configs', 'bs4k_resnet50.json')) as f:
        config = json.load(f)
    config.update(fp16=True, loss_scale=128.0,
                  notes='bs4k_resnet50.json with fp16 training (GPU smoke)')
    with open(os.path.join(args.dir, 'fp16.json'), 'w') as f:
        json.dump(config, f, indent=1)
    print('{}: {} train and {} val images of {}x{}, {} classes'.format(
        args.dir, args.n_train, args.n_val, args.size, args.size,
        args.n_class))


if __name__ == '__main__':
    main()
