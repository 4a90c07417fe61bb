"""The configuration schema and the shipped configs/*.json."""
import glob
import json
import os

import pytest

from chainerkfac.training import config as config_module
from chainerkfac.training import effective_end_epoch
from chainerkfac.training import for_processes
from chainerkfac.training import global_batchsize
from chainerkfac.training import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', '*.json')))

# The original's examples/imagenet/configs (what its train.py ran):
# size: (global batch, trainer epochs, lr0, p, e_start, polynomial_epoch,
#        momentum, damping, mixup alpha)
ORIGINAL = {
    '4k': (4096, 36, 8.18e-3, 11, 1, 53, 0.997, 2.5e-4, 0.4),
    '8k': (8192, 36, 1.25e-2, 8, 1, 53.5, 0.993, 2.5e-4, 0.4),
    '16k': (16384, 36, 2.5e-2, 8, 1, 53.5, 0.985, 2.5e-4, 0.4),
    '32k': (32768, 46, 3.0e-2, 3.5, 1.5, 49.5, 0.97, 2.0e-4, 0.6),
    '64k': (65536, 61, 4.0e-2, 2.9, 2, 64.5, 0.95, 1.5e-4, 0.6),
    '128k': (131072, 81, 7.0e-2, 3.0, 1, 95.0, 0.93, 1.0e-4, 1.0),
}
ARCHS = ('resnet50', 'resnet50_d')


def path_of(size, arch):
    return os.path.join(ROOT, 'configs', 'bs{}_{}.json'.format(size, arch))


def write(tmp_path, obj):
    path = tmp_path / 'c.json'
    path.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)
    return str(path)


def test_configs_exist():
    names = set(os.path.basename(p) for p in CONFIGS)
    expected = set('bs{}_{}.json'.format(s, a) for s in ORIGINAL
                   for a in ARCHS)
    assert expected | {'demo_fashion_mnist.json'} <= names


@pytest.mark.parametrize('path', CONFIGS, ids=os.path.basename)
def test_every_config_loads_and_sets_every_key(path):
    config = load_config(path)
    with open(path) as f:
        raw = json.load(f)
    assert set(raw) == set(config_module.SCHEMA), 'configs are explicit'
    assert config['notes']
    assert global_batchsize(config) == (config['batchsize']
                                        * config['n_processes']
                                        * config['acc_iters'])


@pytest.mark.parametrize('arch', ARCHS)
@pytest.mark.parametrize('size', sorted(ORIGINAL))
def test_reproduction_facts(size, arch):
    batch, epoch, lr, p, start, end, momentum, damping, alpha = \
        ORIGINAL[size]
    c = load_config(path_of(size, arch))
    assert c['arch'] == arch
    assert (c['batchsize'], c['val_batchsize'], c['crop_size']) == (32, 16,
                                                                     224)
    assert global_batchsize(c) == batch
    assert c['n_processes'] * 32 * c['acc_iters'] == batch
    assert (c['epoch'], c['lr'], c['lr_power'], c['lr_start_epoch'],
            c['lr_end_epoch'], c['momentum'], c['damping'],
            c['mixup_alpha']) == (epoch, lr, p, start, end, momentum,
                                  damping, alpha)
    # what the original actually ran, not what its files say
    assert c['stab_coeff'] == 16
    assert '64' in c['notes'] and 'stab_coeff' in c['notes']
    assert c['cov_ema_decay'] == 1.0
    assert c['stale'] is False     # every statistic every step
    assert c['weight_rescaling'] and c['adjust_momentum']
    assert c['running_mixup']
    assert (c['random_erasing_p'], c['random_erasing_area'],
            c['random_erasing_aspect']) == (0.5, [0.02, 0.25], [0.3, 1.0])
    assert c['weight_decay'] == 0
    assert c['lr_schedule'] == 'polynomial'
    assert c['bn_fisher'] == 'full' and c['pi_type'] == 'tracenorm'
    assert not c['fp16'] and c['comm_dtype'] == 'float32'
    # the decay ends after the trainer stops (lr > 0 at the end)
    assert effective_end_epoch(c['epoch'], c['lr_end_epoch']) == end > epoch
    # README's epochs are epoch - 1: say so
    assert 'epoch - 1' in c['notes']


def test_resnet50_and_resnet50_d_differ_only_in_arch_and_notes():
    for size in ORIGINAL:
        a, b = (load_config(path_of(size, arch)) for arch in ARCHS)
        for key in ('arch', 'notes'):
            a.pop(key), b.pop(key)
        assert a == b, size


def test_per_size_series():
    cs = [load_config(path_of(s, 'resnet50_d'))
          for s in ('4k', '8k', '16k', '32k', '64k', '128k')]
    assert [global_batchsize(c) for c in cs] == [4096 * 2 ** i
                                                 for i in range(6)]
    assert [c['epoch'] for c in cs] == [36, 36, 36, 46, 61, 81]
    assert [c['damping'] for c in cs] == [2.5e-4, 2.5e-4, 2.5e-4, 2e-4,
                                          1.5e-4, 1e-4]
    assert [c['mixup_alpha'] for c in cs] == [0.4, 0.4, 0.4, 0.6, 0.6, 1.0]


def test_for_processes_keeps_global_batch():
    c = load_config(path_of('4k', 'resnet50_d'))
    eight = for_processes(c, 8)
    assert (eight['n_processes'], eight['acc_iters']) == (8, 16)
    assert global_batchsize(eight) == 4096
    c = load_config(path_of('128k', 'resnet50'))
    assert for_processes(c, 128)['acc_iters'] == 32
    with pytest.raises(ValueError, match='multiple'):
        for_processes(c, 3)


def test_global_batchsize():
    c = load_config(overrides={'batchsize': 16, 'acc_iters': 4})
    assert global_batchsize(c, 8) == 512
    with pytest.raises(ValueError, match='number of processes'):
        global_batchsize(c)


def test_demo_config():
    c = load_config(os.path.join(ROOT, 'configs', 'demo_fashion_mnist.json'))
    assert (c['arch'], c['crop_size'], c['n_processes']) == ('resnet8', 28,
                                                             2)
    assert c['mixup_alpha'] == 0 and c['random_erasing_p'] == 0
    assert effective_end_epoch(c['epoch'], c['lr_end_epoch']) == c['epoch']
    assert c['lr_start_epoch'] < c['epoch']


# --- schema ------------------------------------------------------------------
def test_defaults():
    c = load_config()
    assert c == dict(config_module.DEFAULTS)
    assert set(config_module.DOCS) == set(c)
    assert all(config_module.DOCS.values())
    assert c['stab_coeff'] == 16 and c['bn_fisher'] == 'full'
    c['random_erasing_area'].append(1)
    assert config_module.DEFAULTS['random_erasing_area'] == [0.02, 0.25]
    assert 'label_smoothing' not in c


def test_file_values_and_overrides(tmp_path):
    path = write(tmp_path, {'lr': 0.5, 'epoch': 3, 'lr_end_epoch': None})
    c = load_config(path, overrides={'epoch': 4})
    assert (c['lr'], c['epoch'], c['lr_end_epoch']) == (0.5, 4, None)
    assert c['batchsize'] == 32


def test_unknown_keys_are_all_listed(tmp_path):
    # (the original's keys, e.g. polynomial_epoch, are known: see
    # test_original_configs.py)
    path = write(tmp_path, {'lr': 0.1, 'label_smoothing': 0.1,
                            'polynomial_epochs': 53, 'stab_coef': 64})
    with pytest.raises(ValueError) as e:
        load_config(path)
    message = str(e.value)
    assert 'label_smoothing, polynomial_epochs, stab_coef;' in message
    assert 'valid keys' in message
    for key in config_module.SCHEMA:
        assert key in message
    with pytest.raises(ValueError, match='foo'):
        load_config(overrides={'foo': 1})


@pytest.mark.parametrize('key,value,words', [
    ('lr', -0.1, 'lr must be >= 0'),
    ('bn_fisher', 'block', "'full', 'unit', 'diag'"),
    ('pi_type', 'trace', 'tracenorm'),
    ('batchsize', 0, 'batchsize must be >= 1'),
    ('batchsize', 32.0, 'batchsize must be an integer'),
    ('acc_iters', True, 'acc_iters must be an integer'),
    ('momentum', 1.5, 'momentum must be <= 1'),
    ('cov_ema_decay', 0, 'cov_ema_decay must be > 0'),
    ('damping', '1e-3', 'damping must be a number'),
    ('adjust_momentum', 'yes', 'adjust_momentum must be true or false'),
    ('random_erasing_area', [0.3, 0.1], 'low <= high'),
    ('random_erasing_area', [0.1], 'list of 2'),
    ('random_erasing_aspect', [0, 1], '0 < low'),
    ('random_erasing_p', 2, 'random_erasing_p must be <= 1'),
    ('mixup_alpha', -1, 'mixup_alpha must be >= 0'),
    ('comm_dtype', 'bfloat16', "'float32', 'float16'"),
    ('lr_schedule', 'cosine', "'polynomial', 'constant'"),
    ('lr_power', 0, 'lr_power must be > 0'),
    ('loss_scale', 0, 'loss_scale must be > 0'),
    ('n_processes', 0, 'n_processes must be >= 1'),
    ('arch', '', 'arch must be a non-empty string'),
    ('notes', 3, 'notes must be a string'),
])
def test_bad_values(key, value, words):
    with pytest.raises(ValueError) as e:
        load_config(overrides={key: value})
    assert words in str(e.value)
    assert repr(value) in str(e.value)


def test_all_bad_values_listed_with_the_path(tmp_path):
    path = write(tmp_path, {'lr': -1, 'damping': -1})
    with pytest.raises(ValueError) as e:
        load_config(path)
    message = str(e.value)
    assert path in message and 'lr must' in message and 'damping must' in \
        message


def test_schedule_end_after_start():
    with pytest.raises(ValueError, match='lr_start_epoch'):
        load_config(overrides={'epoch': 5, 'lr_end_epoch': None,
                               'lr_start_epoch': 5})
    load_config(overrides={'epoch': 5, 'lr_end_epoch': None,
                           'lr_start_epoch': 5, 'lr_schedule': 'constant'})


def test_bad_files(tmp_path):
    with pytest.raises(ValueError, match='not valid JSON'):
        load_config(write(tmp_path, '{"lr": 0.1,}'))
    with pytest.raises(ValueError, match='JSON object'):
        load_config(write(tmp_path, '[1, 2]'))
