"""A tiny ImageNet-layout dataset of odd images, for the script's tests."""
import json
import os

import numpy
from PIL import Image

MODES = [('png', 'L'), ('jpg', 'RGB'), ('png', 'RGBA'), ('png', 'P'),
         ('jpg', 'L'), ('png', 'RGB')]
SIZES = [(30, 37), (41, 33), (16, 16), (12, 20), (25, 25)]


def write_image(path, mode, size, rng):
    w, h = size
    a = rng.randint(0, 256, (h, w, 4)).astype(numpy.uint8)
    base = Image.fromarray(a, 'RGBA')
    image = base.convert(mode) if mode != 'RGBA' else base
    image.save(path)


def make_dataset(root, n_train=24, n_val=8, n_class=3, seed=0):
    """Writes ``root/{train,val}/...`` images and ``root/{train,val}.txt``."""
    rng = numpy.random.RandomState(seed)
    for split, n in (('train', n_train), ('val', n_val)):
        lines = []
        os.makedirs(os.path.join(root, split, 'imgs'), exist_ok=True)
        for i in range(n):
            ext, mode = MODES[i % len(MODES)]
            rel = 'imgs/{}_{}.{}'.format(split, i, ext)
            write_image(os.path.join(root, split, rel), mode,
                        SIZES[i % len(SIZES)], rng)
            lines.append('{} {}'.format(rel, i % n_class))
        with open(os.path.join(root, split + '.txt'), 'w') as f:
            f.write('\n'.join(lines) + '\n')
    return root


TINY_CONFIG = dict(
    arch='resnet8', crop_size=16, batchsize=4, val_batchsize=4, epoch=1,
    lr=0.02, momentum=0.9, damping=1e-2, cov_ema_decay=0.5, bn_fisher='unit',
    stale=True, mixup_alpha=0.4, running_mixup=True, random_erasing_p=0.5,
    weight_rescaling=True, lr_schedule='polynomial', lr_power=2.0,
    lr_start_epoch=0.0, lr_end_epoch=2.0)


def write_config(path, **overrides):
    with open(path, 'w') as f:
        json.dump(dict(TINY_CONFIG, **overrides), f)
    return path
