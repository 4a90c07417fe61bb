"""The original code's twelve ImageNet configurations, as test fixtures.

These mirror, key by key (same keys, same order, same values and the same
JSON types: ``1`` is an integer where the original wrote ``1``, ``8.0`` a
float where it wrote ``8.0``), the files ``examples/imagenet/configs/
bs{4k,8k,16k,32k,64k,128k}.resnet50.{N}gpu.json`` of tyohei/chainerkfac, as
``docs/migrating.md`` and ``configs/README.md`` describe them. They are built
here from that documented table rather than copied.
"""
import collections
import json
import os

#: per file: (size, GPUs, acc_iters, epoch, lr, epoch_lr_decay_start,
#: polynomial_decay_p, polynomial_epoch, momentum, damping, mixup_alpha)
TABLE = [
    ('4k', 8, 16, 36, 8.18e-3, 1, 11, 53, 0.997, 2.5e-4, 0.4),
    ('4k', 128, 1, 36, 8.18e-3, 1, 11, 53, 0.997, 2.5e-4, 0.4),
    ('8k', 128, 2, 36, 1.25e-2, 1, 8.0, 53.5, 0.993, 2.5e-4, 0.4),
    ('8k', 256, 1, 36, 1.25e-2, 1, 8.0, 53.5, 0.993, 2.5e-4, 0.4),
    ('16k', 128, 4, 36, 2.5e-2, 1, 8.0, 53.5, 0.985, 2.5e-4, 0.4),
    ('16k', 512, 1, 36, 2.5e-2, 1, 8.0, 53.5, 0.985, 2.5e-4, 0.4),
    ('32k', 128, 8, 46, 3.0e-2, 1.5, 3.5, 49.5, 0.97, 2.0e-4, 0.6),
    ('32k', 1024, 1, 46, 3.0e-2, 1.5, 3.5, 49.5, 0.97, 2.0e-4, 0.6),
    ('64k', 128, 16, 61, 4.0e-2, 2, 2.9, 64.5, 0.95, 1.5e-4, 0.6),
    ('64k', 2048, 1, 61, 4.0e-2, 2, 2.9, 64.5, 0.95, 1.5e-4, 0.6),
    ('128k', 128, 32, 81, 7.0e-2, 1, 3.0, 95.0, 0.93, 1.0e-4, 1.0),
    ('128k', 4096, 1, 81, 7.0e-2, 1, 3.0, 95.0, 0.93, 1.0e-4, 1.0),
]


def name_of(size, gpus):
    return 'bs{}.resnet50.{}gpu.json'.format(size, gpus)


def config_of(size, gpus, acc_iters, epoch, lr, decay_start, p, poly_epoch,
              momentum, damping, alpha):
    """One file's object, its keys in the original's order."""
    return collections.OrderedDict([
        ('arch_file', 'models/resnet50_d.py'),
        ('arch_name', 'ResNet50'),
        ('batchsize', 32),
        ('val_batchsize', 16),
        ('acc_iters', acc_iters),
        ('epoch', epoch),
        ('normalize_weight', True),
        ('lr', lr),
        ('lr_plan', 'polynomial'),
        ('epoch_lr_decay_start', decay_start),
        ('polynomial_decay_p', p),
        ('polynomial_epoch', poly_epoch),
        ('momentum', momentum),
        ('adjust_momentum', True),
        ('cov_ema_decay', 1.0),
        ('damping', damping),
        ('stab_coeff', 64.0),
        ('mixup_alpha', alpha),
        ('running_mixup', True),
        ('re_rate', 0.5),
        ('re_area_rl', 0.02),
        ('re_area_rh', 0.25),
        ('re_aspect_rl', 0.3),
    ])


def configs():
    """``{file name: OrderedDict}`` for the twelve files."""
    return collections.OrderedDict(
        (name_of(row[0], row[1]), config_of(*row)) for row in TABLE)


def write_all(directory):
    """Writes the twelve files into ``directory``; returns
    ``{file name: path}``."""
    os.makedirs(directory, exist_ok=True)
    paths = collections.OrderedDict()
    for name, config in configs().items():
        path = os.path.join(directory, name)
        with open(path, 'w') as f:
            json.dump(config, f, indent=4)
        paths[name] = path
    return paths


#: where each of the original's keys lands here: our key, and a function of
#: the resolved configuration giving the value the file's key holds there
#: (None for stab_coeff: its resolved value is what ran, 16, not the file's)
RESOLVED = collections.OrderedDict([
    ('arch_file', ('arch', None)),
    ('arch_name', ('arch', None)),
    ('batchsize', ('batchsize', lambda c: c['batchsize'])),
    ('val_batchsize', ('val_batchsize', lambda c: c['val_batchsize'])),
    ('acc_iters', ('acc_iters', lambda c: c['acc_iters'])),
    ('epoch', ('epoch', lambda c: c['epoch'])),
    ('normalize_weight', ('weight_rescaling',
                          lambda c: c['weight_rescaling'])),
    ('lr', ('lr', lambda c: c['lr'])),
    ('lr_plan', ('lr_schedule', lambda c: c['lr_schedule'])),
    ('epoch_lr_decay_start', ('lr_start_epoch',
                              lambda c: c['lr_start_epoch'])),
    ('polynomial_decay_p', ('lr_power', lambda c: c['lr_power'])),
    ('polynomial_epoch', ('lr_end_epoch', lambda c: c['lr_end_epoch'])),
    ('momentum', ('momentum', lambda c: c['momentum'])),
    ('adjust_momentum', ('adjust_momentum', lambda c: c['adjust_momentum'])),
    ('cov_ema_decay', ('cov_ema_decay', lambda c: c['cov_ema_decay'])),
    ('damping', ('damping', lambda c: c['damping'])),
    ('stab_coeff', ('stab_coeff', None)),
    ('mixup_alpha', ('mixup_alpha', lambda c: c['mixup_alpha'])),
    ('running_mixup', ('running_mixup', lambda c: c['running_mixup'])),
    ('re_rate', ('random_erasing_p', lambda c: c['random_erasing_p'])),
    ('re_area_rl', ('random_erasing_area',
                    lambda c: c['random_erasing_area'][0])),
    ('re_area_rh', ('random_erasing_area',
                    lambda c: c['random_erasing_area'][1])),
    ('re_aspect_rl', ('random_erasing_aspect',
                      lambda c: c['random_erasing_aspect'][0])),
])
