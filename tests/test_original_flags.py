"""The original code's train.py flags in train_imagenet.py: each reaches the
value it sets (issue 11, item 2)."""
import json
import os
import subprocess
import sys

import chainer
import numpy
import pytest

import image_fixtures
import original_configs
import train_imagenet
from chainerkfac.training.classifier import Classifier
from models import resnet
from mpi_helpers import MPIEXEC

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'train_imagenet.py')
LISTS = ['train.txt', 'val.txt']

#: every option of the original's examples/imagenet/train.py argparse
ORIGINAL_FLAGS = (
    '--train_root', '--val_root', '--mean', '--loaderjob', '--iterator',
    '--arch_file', '--arch_name', '--initmodel', '--resume', '--batchsize',
    '--val_batchsize', '--acc_iters', '--epoch', '-E', '--normalize_weight',
    '--nw_skip_scale_comp', '--lr', '--lr_plan', '--epoch_lr_decay_start',
    '--polynomial_decay_p', '--polynomial_epoch', '--momentum',
    '--adjust_momentum', '--mixup_alpha', '--running_mixup', '--re_rate',
    '--re_area_rl', '--re_area_rh', '--re_aspect_rl', '--cov_ema_decay',
    '--damping', '--use_tensor_core', '--communicate_after_forward',
    '--test', '--stats', '--config', '--config_out', '--out', '-o')


def resolve(*argv, config=None):
    argv = LISTS + list(argv) + (['--config', config] if config else [])
    args = train_imagenet.parse_args(argv)
    return args, train_imagenet.build_config(args)


@pytest.fixture(scope='module')
def original_file(tmp_path_factory):
    """bs4k.resnet50.8gpu.json of the original, with weight rescaling,
    the momentum adjustment and running mixup off (so that the flags that
    turn them on have something to do)."""
    config = original_configs.configs()['bs4k.resnet50.8gpu.json']
    config.update(normalize_weight=False, adjust_momentum=False,
                  running_mixup=False)
    path = str(tmp_path_factory.mktemp('flags') / 'original.json')
    with open(path, 'w') as f:
        json.dump(config, f)
    return path


# flag(s), the configuration key it sets, the value there
CONFIG_FLAGS = [
    (['--arch_file', 'models/resnet50_d.py', '--arch_name', 'ResNet50'],
     'arch', 'resnet50_d'),
    (['--arch_file', 'models/resnet50.py'], 'arch', 'resnet50'),
    (['--batchsize', '7'], 'batchsize', 7),
    (['--val_batchsize', '5'], 'val_batchsize', 5),
    (['--acc_iters', '4'], 'acc_iters', 4),
    (['--epoch', '3'], 'epoch', 3),
    (['-E', '4'], 'epoch', 4),
    (['--normalize_weight'], 'weight_rescaling', True),
    (['--no_normalize_weight'], 'weight_rescaling', False),
    (['--lr', '0.5'], 'lr', 0.5),
    (['--lr_plan', 'constant'], 'lr_schedule', 'constant'),
    (['--lr_plan', 'polynomial'], 'lr_schedule', 'polynomial'),
    (['--epoch_lr_decay_start', '2'], 'lr_start_epoch', 2),
    (['--polynomial_decay_p', '3'], 'lr_power', 3),
    (['--polynomial_epoch', '60'], 'lr_end_epoch', 60),
    (['--momentum', '0.5'], 'momentum', 0.5),
    (['--adjust_momentum'], 'adjust_momentum', True),
    (['--no_adjust_momentum'], 'adjust_momentum', False),
    (['--mixup_alpha', '0.2'], 'mixup_alpha', 0.2),
    (['--running_mixup'], 'running_mixup', True),
    (['--no_running_mixup'], 'running_mixup', False),
    (['--re_rate', '0.3'], 'random_erasing_p', 0.3),
    (['--re_area_rl', '0.1'], 'random_erasing_area', [0.1, 0.25]),
    (['--re_area_rh', '0.4'], 'random_erasing_area', [0.02, 0.4]),
    (['--re_aspect_rl', '0.5'], 'random_erasing_aspect', [0.5, 1.0]),
    (['--cov_ema_decay', '0.5'], 'cov_ema_decay', 0.5),
    (['--damping', '0.01'], 'damping', 0.01),
    (['--communicate_after_forward'], 'communicate_after_forward', True),
    (['--stab_coeff', '64'], 'stab_coeff', 64),
]


@pytest.mark.parametrize('with_file', [False, True])
@pytest.mark.parametrize('argv,key,value', CONFIG_FLAGS,
                         ids=lambda v: ' '.join(v) if isinstance(v, list)
                         and isinstance(v[0], str) else None)
def test_flag_reaches_the_configuration(original_file, with_file, argv, key,
                                        value):
    """Alone, and over the original's file (the flag wins here; the
    original let the file win)."""
    _, resolved = resolve(*argv, config=original_file if with_file else None)
    assert resolved.config[key] == value
    if with_file and key != 'stab_coeff':
        # the file's stab_coeff is still replaced by what ran, and said so
        assert resolved.config['stab_coeff'] == 16.0
        assert len(resolved.warnings) == 1


def test_the_flags_defaults_are_the_originals_defaults():
    """Without a file and flags: the original train.py's defaults (its
    default model file did not exist; its ResNet-50 is ours)."""
    _, resolved = resolve()
    c = resolved.config
    assert (c['batchsize'], c['val_batchsize'], c['acc_iters'], c['epoch'],
            c['weight_rescaling'], c['lr'], c['lr_schedule'],
            c['lr_start_epoch'], c['lr_power'], c['lr_end_epoch'],
            c['momentum'], c['adjust_momentum'], c['mixup_alpha'],
            c['running_mixup'], c['random_erasing_p'],
            c['random_erasing_area'], c['random_erasing_aspect'],
            c['cov_ema_decay'], c['damping'], c['communicate_after_forward'],
            c['stab_coeff']) == (
        32, 16, 1, 36, True, 8.18e-3, 'polynomial', 1, 11, 53, 0.997, True,
        0.4, True, 0.5, [0.02, 0.25], [0.3, 1.0], 1.0, 2.5e-4, False, 16)
    assert c['arch'] == 'resnet50'


def test_nw_skip_scale_comp_says_it_is_not_honoured():
    _, resolved = resolve('--nw_skip_scale_comp')
    (line,) = resolved.warnings
    assert line.startswith('nw_skip_scale_comp: not honoured;')
    assert resolved.config['weight_rescaling'] is True


def test_arch_twice_is_an_error():
    with pytest.raises(train_imagenet.UsageError, match='give one'):
        resolve('--arch', 'resnet8', '--arch_file', 'models/resnet50.py')


def test_run_flags():
    args = train_imagenet.parse_args(LISTS)
    # the original's defaults where they are the same
    assert (args.train_root, args.val_root, args.iterator, args.out,
            args.config_out, args.resume, args.initmodel, args.test,
            args.stats, args.use_tensor_core) == (
        '.', '.', 'thread', 'result', 'config.json', None, None, False,
        False, False)
    args = train_imagenet.parse_args(LISTS + [
        '--train_root', 'a', '--val_root', 'b', '--mean', 'm.npy',
        '--loaderjob', '3', '--iterator', 'process', '--initmodel', 'w.npz',
        '--resume', '', '--test', '--stats', '--config_out', 'c.json',
        '-o', 'o', '--use_tensor_core', '--config', 'x.json'])
    assert (args.train_root, args.val_root, args.mean, args.loaderjob,
            args.iterator, args.initmodel, args.resume, args.test,
            args.stats, args.config_out, args.out, args.use_tensor_core,
            args.config) == ('a', 'b', 'm.npy', 3, 'process', 'w.npz', None,
                             True, True, 'c.json', 'o', True, 'x.json')
    assert {'train_root', 'iterator', 'out', 'test'} <= set(args.given)
    assert 'seed' not in args.given
    with pytest.raises(SystemExit):
        train_imagenet.parse_args(LISTS + ['--iterator', 'fork'])


def test_run_options_from_a_file_unless_given(tmp_path):
    config = original_configs.configs()['bs4k.resnet50.128gpu.json']
    config.update(iterator='serial', loaderjob=3, test=True, out='from_file')
    path = str(tmp_path / 'c.json')
    with open(path, 'w') as f:
        json.dump(config, f)
    args, resolved = resolve('--loaderjob', '1', config=path)
    applied = train_imagenet.apply_run_options(args, resolved)
    assert sorted(applied) == ['iterator', 'out', 'test']
    assert (args.iterator, args.loaderjob, args.test, args.out) == (
        'serial', 1, True, 'from_file')


def test_help_groups_every_original_flag():
    parser = train_imagenet.build_parser()
    text = parser.format_help()
    titles = [g.title for g in parser._action_groups]
    for title in ('data', 'configuration', 'model', 'mini-batch and length',
                  'K-FAC optimizer', 'learning-rate schedule',
                  'augmentation', 'device', 'run, logging and snapshots'):
        assert title in titles and title + ':' in text
    options = {s for a in parser._actions for s in a.option_strings}
    assert set(ORIGINAL_FLAGS) <= options
    for flag in ('--no_normalize_weight', '--no_adjust_momentum',
                 '--no_running_mixup', '--stab_coeff'):
        assert flag in options


@pytest.mark.parametrize('kind,loaderjob,cls', [
    ('thread', 2, chainer.iterators.MultithreadIterator),
    ('process', 2, chainer.iterators.MultiprocessIterator),
    ('serial', 2, chainer.iterators.SerialIterator),
    ('thread', 0, chainer.iterators.SerialIterator),
])
def test_iterator_kinds(monkeypatch, kind, loaderjob, cls):
    monkeypatch.setattr(train_imagenet, 'start_loader_server', lambda: None)
    monkeypatch.setattr(train_imagenet.multiprocessing, 'get_start_method',
                        lambda allow_none=False: 'forkserver')
    args = train_imagenet.parse_args(LISTS + ['--iterator', kind,
                                              '--loaderjob', str(loaderjob)])
    config = {'batchsize': 2, 'val_batchsize': 2}
    train, val = train_imagenet.make_iterators(
        args, config, list(range(4)), list(range(4)),
        chainer.iterators.ShuffleOrderSampler())
    assert type(train) is cls and type(val) is cls
    if kind == 'process':
        assert train.n_processes == loaderjob
    for it in (train, val):
        it.finalize()


def small_model(n_class=3):
    numpy.random.seed(1)
    return Classifier(resnet.get_model('resnet8', n_class))


def model_arrays(link, prefix):
    """Every parameter and persistent value of ``link``, under ``prefix``
    (as save_npz would write them)."""
    serializer = chainer.serializers.DictionarySerializer()
    serializer.save(link)
    return {prefix + k: v for k, v in serializer.target.items()}


@pytest.mark.parametrize('prefix', train_imagenet.INITMODEL_PREFIXES)
def test_initmodel_layouts(tmp_path, prefix):
    """A bare model, a saved Classifier, the original's trainer snapshot
    (its model had no predictor) and this script's shared.npz."""
    source = small_model()
    arrays = model_arrays(source.predictor, prefix)
    arrays['updater/iterator:main/epoch'] = numpy.asarray(0)  # ignored
    path = str(tmp_path / 'w.npz')
    numpy.savez(path, **arrays)
    numpy.random.seed(2)
    model = Classifier(resnet.get_model('resnet8', 3))
    assert train_imagenet.load_initmodel(model, path) == prefix
    for (name, a), (_, b) in zip(sorted(source.namedparams()),
                                 sorted(model.namedparams())):
        numpy.testing.assert_array_equal(a.array, b.array, err_msg=name)


def test_initmodel_errors(tmp_path):
    path = str(tmp_path / 'w.npz')
    chainer.serializers.save_npz(path, small_model(n_class=5))
    with pytest.raises(train_imagenet.UsageError, match='--n_class'):
        train_imagenet.load_initmodel(small_model(n_class=3), path)
    numpy.savez(path, x=numpy.zeros(2))
    with pytest.raises(train_imagenet.UsageError, match='no parameters'):
        train_imagenet.load_initmodel(small_model(), path)


# --- end to end --------------------------------------------------------------
@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('data'))
    image_fixtures.make_dataset(root)
    image_fixtures.write_config(os.path.join(root, 'tiny.json'))
    return root


def run_script(n, data, *args, timeout=120):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1',
               PYTHONPATH=ROOT)
    cmd = ([MPIEXEC, '-n', str(n)] if n else []) + [
        sys.executable, '-W', 'ignore', SCRIPT,
        os.path.join(data, 'train.txt'), os.path.join(data, 'val.txt'),
        '--train_root', os.path.join(data, 'train'),
        '--val_root', os.path.join(data, 'val'),
        '--config', os.path.join(data, 'tiny.json'),
        '--no_progress'] + [str(a) for a in args]
    try:
        result = subprocess.run(cmd, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=env,
                                timeout=timeout, universal_newlines=True)
    except subprocess.TimeoutExpired as e:
        pytest.fail('{} timed out; output:\n{}'.format(' '.join(cmd),
                                                       e.output))
    assert result.returncode == 0, result.stdout
    return result


def test_end_to_end_test_stats_config_out_initmodel_mean(data, tmp_path):
    """--test (evaluate and log every 10 iterations), --stats, --config_out,
    -o, --initmodel (the original's trainer-snapshot layout) and --mean (a
    mean image) in one run."""
    weights = str(tmp_path / 'snapshot_iter_1')   # the original's name
    numpy.savez(weights + '.npz', **model_arrays(small_model().predictor,
                                                 'updater/model:main/'))
    mean = str(tmp_path / 'mean.npy')
    numpy.save(mean, numpy.full((3, 20, 20), 120, numpy.float32))
    out = str(tmp_path / 'out')
    result = run_script(0, data, '--test', '--stats', '--config_out',
                        'resolved.json', '-o', out, '--initmodel',
                        weights + '.npz', '--mean', mean, '--iterations',
                        '12', '--loaderjob', '0')
    assert "initmodel: loaded {} (under 'updater/model:main/')".format(
        weights + '.npz') in result.stdout
    assert os.path.exists(os.path.join(out, 'resolved.json'))
    assert not os.path.exists(os.path.join(out, 'config.json'))
    with open(os.path.join(out, 'log')) as f:
        log = json.load(f)
    # one epoch is 6 iterations: --test evaluates at 10 (and the end), not
    # at the epoch, and logs every 10
    assert [e['iteration'] for e in log] == [10, 12]
    assert all('validation/main/loss' in e for e in log)
    assert 'predictor/fc/W/data/mean' in log[0]        # --stats
    with open(os.path.join(out, 'resolved.json')) as f:
        dump = json.load(f)
    assert dump['args']['mean'] == mean and dump['args']['test'] is True


def test_end_to_end_process_loaders_under_mpiexec(data, tmp_path):
    out = str(tmp_path / 'out')
    run_script(2, data, '--iterator', 'process', '--loaderjob', '2',
               '--iterations', '2', '-o', out)
    with open(os.path.join(out, 'config.json')) as f:
        assert json.load(f)['args']['iterator'] == 'process'
    with open(os.path.join(out, 'log')) as f:
        assert json.load(f)[-1]['iteration'] == 2
