"""The original code's twelve ImageNet configuration files, unchanged, in
resolve_config and in train_imagenet.py (issue 11, item 1)."""
import json
import os

import pytest

import image_fixtures
import original_configs
from chainerkfac.training import config as config_module
from chainerkfac.training import original as original_module
from mpi_helpers import run_python

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'train_imagenet.py')
NAMES = list(original_configs.configs())
#: what the original's ResNet-50-D file is here
ARCH = 'resnet50_d'


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    return original_configs.write_all(
        str(tmp_path_factory.mktemp('original_configs')))


def check_resolved(config, original, name):
    """The resolved configuration holds every value of the file ``name``
    key by key (stab_coeff: what the original ran, 16)."""
    given = original_configs.configs()[name]
    assert list(original) == [k for k in given
                              if k in original_module.ORIGINAL_ONLY]
    for key, value in given.items():
        ours, value_of = original_configs.RESOLVED[key]
        if key in original:
            assert original[key]['value'] == value, key
            assert original[key]['sets'] == ours, key
        if value_of is not None:
            assert value_of(config) == value, key
            assert type(value_of(config)) is type(value), key
    assert config['arch'] == ARCH
    assert config['stab_coeff'] == 16.0
    assert config['random_erasing_aspect'] == [given['re_aspect_rl'], 1.0]


@pytest.mark.parametrize('name', NAMES)
def test_resolves_key_by_key(files, name):
    resolved = config_module.resolve_config(files[name])
    check_resolved(resolved.config, resolved.original['file'], name)
    assert resolved.original['overrides'] == {}
    assert resolved.run_options == {}
    # the one warning: the file's stab_coeff is not what ran
    assert len(resolved.warnings) == 1
    (line,) = resolved.warnings
    assert '\n' not in line
    for words in ('stab_coeff', 'says 64.0', 'used 16.0', 'using 16.0',
                  '--stab_coeff 64.0', files[name]):
        assert words in line
    # what the rest of the configuration is: the original's code path
    c = resolved.config
    assert (c['lr_schedule'], c['stale'], c['bn_fisher'], c['pi_type'],
            c['weight_decay'], c['fp16'], c['comm_dtype'], c['crop_size']) \
        == ('polynomial', False, 'full', 'tracenorm', 0.0, False, 'float32',
            224)


def test_the_files_value_of_stab_coeff_on_request(files):
    resolved = config_module.resolve_config(files[NAMES[0]],
                                            {'stab_coeff': 64.0})
    assert resolved.config['stab_coeff'] == 64.0 and not resolved.warnings


def test_load_config_warns(files):
    with pytest.warns(config_module.OriginalConfigWarning, match='64.0'):
        c = config_module.load_config(files[NAMES[0]])
    assert c['stab_coeff'] == 16.0


def write(tmp_path, obj, name='c.json'):
    path = str(tmp_path / name)
    with open(path, 'w') as f:
        json.dump(obj, f)
    return path


def original(**changes):
    c = dict(original_configs.configs()[NAMES[0]])
    for k, v in changes.items():
        if v is None:
            c.pop(k)
        else:
            c[k] = v
    return c


def test_a_key_neither_format_knows_is_an_error(tmp_path):
    path = write(tmp_path, original(learning_rate=0.1, re_area_rm=0.2))
    with pytest.raises(ValueError) as e:
        config_module.resolve_config(path)
    message = str(e.value)
    assert 'unknown configuration key(s): learning_rate, re_area_rm' in \
        message
    for key in ('lr_power', 'polynomial_decay_p', 'arch_file', 'iterator'):
        assert key in message


def test_one_setting_under_both_names_is_an_error(tmp_path):
    path = write(tmp_path, original(lr_end_epoch=60))
    with pytest.raises(ValueError, match='polynomial_epoch and lr_end_epoch'):
        config_module.resolve_config(path)
    path = write(tmp_path, original(random_erasing_area=[0.1, 0.2]))
    with pytest.raises(ValueError, match='re_area_rl and random_erasing_area'):
        config_module.resolve_config(path)


@pytest.mark.parametrize('arch_file,arch_name,arch', [
    ('models/resnet50_d.py', 'ResNet50', 'resnet50_d'),
    ('models/resnet50.py', 'ResNet50', 'resnet50'),   # the original default
    ('resnet50_d.py', None, 'resnet50_d'),            # arch_name: default
    (None, 'ResNet50', 'resnet50'),                   # arch_file: default
])
def test_arch_file_and_name(tmp_path, arch_file, arch_name, arch):
    path = write(tmp_path, original(arch_file=arch_file,
                                    arch_name=arch_name))
    assert config_module.resolve_config(path).config['arch'] == arch


@pytest.mark.parametrize('arch_file,arch_name', [
    ('models/vgg.py', 'ResNet50'), ('models/resnet50_d.py', 'ResNet101')])
def test_models_the_original_did_not_have(tmp_path, arch_file, arch_name):
    path = write(tmp_path, original(arch_file=arch_file, arch_name=arch_name))
    with pytest.raises(ValueError) as e:
        config_module.resolve_config(path)
    assert arch_file in str(e.value) and '--arch' in str(e.value)


def test_lr_plan_other_than_polynomial_is_constant(tmp_path):
    path = write(tmp_path, original(lr_plan='step'))
    resolved = config_module.resolve_config(path)
    assert resolved.config['lr_schedule'] == 'constant'
    assert any("lr_plan 'step'" in w for w in resolved.warnings)


def test_nw_skip_scale_comp_is_not_honoured_and_says_so(tmp_path):
    path = write(tmp_path, original(nw_skip_scale_comp=True))
    resolved = config_module.resolve_config(path)
    assert resolved.config['weight_rescaling'] is True
    assert any(w.startswith('nw_skip_scale_comp: not honoured')
               for w in resolved.warnings)
    path = write(tmp_path, original(nw_skip_scale_comp=False))
    assert len(config_module.resolve_config(path).warnings) == 1  # stab


def test_normalize_weight_and_adjust_momentum_false_in_a_file(tmp_path):
    path = write(tmp_path, original(normalize_weight=False,
                                    adjust_momentum=False))
    c = config_module.resolve_config(path).config
    assert c['weight_rescaling'] is False and c['adjust_momentum'] is False


def test_run_options_in_a_file(tmp_path):
    path = write(tmp_path, original(iterator='serial', loaderjob=3,
                                    test=True, mean='m.npy'))
    resolved = config_module.resolve_config(path)
    assert resolved.run_options == {'iterator': 'serial', 'loaderjob': 3,
                                    'test': True, 'mean': 'm.npy'}
    with pytest.raises(ValueError, match='iterator must be'):
        config_module.resolve_config(write(tmp_path,
                                           original(iterator='fork')))
    with pytest.raises(ValueError, match="'train' is a command-line"):
        config_module.resolve_config(write(tmp_path, original(train='x')))


def test_overrides_in_either_format(tmp_path):
    path = write(tmp_path, original())
    c = config_module.resolve_config(path, {
        're_area_rl': 0.05, 'polynomial_epoch': 60, 'lr_power': 2.0}).config
    assert c['random_erasing_area'] == [0.05, 0.25]   # rh: the file's
    assert c['lr_end_epoch'] == 60 and c['lr_power'] == 2.0


def test_our_format_keeps_its_stab_coeff(tmp_path):
    path = write(tmp_path, {'stab_coeff': 64.0, 'lr': 0.1})
    resolved = config_module.resolve_config(path)
    assert resolved.config['stab_coeff'] == 64.0 and not resolved.warnings


def test_bad_original_value_names_both_keys(tmp_path):
    path = write(tmp_path, original(polynomial_decay_p=-1))
    with pytest.raises(ValueError) as e:
        config_module.resolve_config(path)
    assert 'lr_power must be > 0' in str(e.value)
    assert 'polynomial_decay_p -> lr_power' in str(e.value)


# --- the twelve files through train_imagenet.py ------------------------------
@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return image_fixtures.make_dataset(str(tmp_path_factory.mktemp('data')))


#: tiny runs: a small model, image and batch (the file's other values are
#: kept, acc_iters included: 2 K-FAC updates are 2 x acc_iters micro-batches)
TINY = ['--arch', 'resnet8', '--crop_size', '16', '--batchsize', '2',
        '--val_batchsize', '4', '--iterations', '2', '--loaderjob', '0',
        '--snapshot_interval', '100000', '--no_progress']
OVERRIDDEN = {'arch': 'resnet8', 'crop_size': 16, 'batchsize': 2,
              'val_batchsize': 4}


def run_script(n, args, timeout=120, **env_extra):
    """train_imagenet.py ARGS, under ``mpiexec -n N`` when ``n``."""
    return run_python(n, SCRIPT, args, timeout, **env_extra)


@pytest.mark.parametrize('name', NAMES)
def test_train_imagenet_runs_each_file(files, data, tmp_path, name):
    # bs4k on 8 GPUs under mpiexec -n 2 (acc_iters 16), the rest in one
    n = 2 if name == 'bs4k.resnet50.8gpu.json' else 0
    out = str(tmp_path / 'out')
    result = run_script(n, [
        os.path.join(data, 'train.txt'), os.path.join(data, 'val.txt'),
        '--train_root', os.path.join(data, 'train'),
        '--val_root', os.path.join(data, 'val'),
        '--config', files[name], '--out', out] + TINY)
    assert result.returncode == 0, result.stdout
    warnings = [line for line in result.stdout.splitlines()
                if line.startswith('train_imagenet.py: warning:')]
    assert len(warnings) == 1 and 'stab_coeff' in warnings[0], result.stdout
    with open(os.path.join(out, 'config.json')) as f:
        dump = json.load(f)
    config = dump['config']
    assert set(config) == set(config_module.SCHEMA)   # every value stated
    for key, value in OVERRIDDEN.items():
        assert config[key] == value
    # the file's values, key by key, except what the command line overrode
    given = original_configs.configs()[name]
    for key, value in given.items():
        ours, value_of = original_configs.RESOLVED[key]
        if ours not in OVERRIDDEN and value_of is not None:
            assert value_of(config) == value, key
    assert config['stab_coeff'] == 16.0
    assert dump['warnings'] == [w.split('warning: ', 1)[1] for w in warnings]
    file_keys = dump['original_keys']['file']
    assert {k: v['value'] for k, v in file_keys.items()} == {
        k: v for k, v in given.items() if k in original_module.ORIGINAL_ONLY}
    assert file_keys['arch_file']['sets'] == 'arch'
    assert dump['global_batchsize'] == 2 * (n or 1) * given['acc_iters']
    with open(os.path.join(out, 'log')) as f:
        log = json.load(f)
    assert log[-1]['iteration'] == 2 * given['acc_iters']
    # issue 11 item 5: the original's loss and the minimised one
    assert 'main/loss' in log[-1] and 'main/mixup_loss' in log[-1]
