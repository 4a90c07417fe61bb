"""The original repository's examples, here: ``examples/mnist/train.py`` and
``examples/cifar10/train.py`` run end to end, as a user runs them (``python
SCRIPT`` or ``mpiexec -n N python SCRIPT --distributed``), on the CPU
(``--no_cuda``), on tiny data sets written here in the real formats (MNIST /
Fashion-MNIST idx files, CIFAR-10 python batches), and reach the stated
validation accuracy.

The data are learnable on purpose: an MNIST class is a bright bar at one of
ten heights, a CIFAR-10 class one of ten colours; pixel noise on top. Chance
is 0.1; every training run below must end above ``MIN_ACCURACY``.
"""
import gzip
import importlib.util
import json
import os
import pickle
import subprocess
import sys

import numpy
import pytest

from chainerkfac.training import device as device_module
from mpi_helpers import MPIEXEC

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST = os.path.join(ROOT, 'examples', 'mnist', 'train.py')
CIFAR = os.path.join(ROOT, 'examples', 'cifar10', 'train.py')
#: final validation accuracy every training run here must exceed
MIN_ACCURACY = 0.9


# --- data in the real formats ---------------------------------------------
def write_idx(path, array, compress):
    """An idx file of unsigned bytes (magic 0x08, then the dimensions)."""
    header = numpy.array([0x800 + array.ndim] + list(array.shape), '>u4')
    data = header.tobytes() + numpy.ascontiguousarray(
        array, numpy.uint8).tobytes()
    if compress:
        with gzip.open(path + '.gz', 'wb') as f:
            f.write(data)
    else:
        with open(path, 'wb') as f:
            f.write(data)


def bar_images(n, rng):
    """Class k: a bright bar across rows 3 + 2k, 4 + 2k on dim noise."""
    labels = rng.randint(0, 10, n)
    images = rng.randint(0, 60, (n, 28, 28))
    for image, k in zip(images, labels):
        image[3 + 2 * k:5 + 2 * k, 4:24] = 220
    return images.astype(numpy.uint8), labels.astype(numpy.uint8)


def write_mnist(directory, n_train=800, n_test=200, all_gzip=False):
    """The four MNIST files; images gzipped, labels plain (both occur)
    unless ``all_gzip`` (Debian's Fashion-MNIST: every file gzipped)."""
    os.makedirs(directory)
    rng = numpy.random.RandomState(0)
    for split, n in (('train', n_train), ('t10k', n_test)):
        images, labels = bar_images(n, rng)
        write_idx(os.path.join(directory, split + '-images-idx3-ubyte'),
                  images, True)
        write_idx(os.path.join(directory, split + '-labels-idx1-ubyte'),
                  labels, all_gzip)
    return directory


COLOURS = numpy.array([[r, g, b] for r in (40, 215) for g in (40, 215)
                       for b in (40, 215)] + [[128, 128, 128],
                                              [215, 128, 40]])


def write_cifar(directory, per_batch=80, n_test=100):
    """``data_batch_1..5`` and ``test_batch`` as the CIFAR-10 python
    version has them (Python 2 pickles of dicts with byte-string keys;
    data N x 3072 uint8, channel-major; labels a list)."""
    os.makedirs(directory)
    rng = numpy.random.RandomState(0)
    names = ['data_batch_{}'.format(i) for i in range(1, 6)]
    for name, n in [(b, per_batch) for b in names] + [('test_batch', n_test)]:
        labels = rng.randint(0, 10, n)
        data = COLOURS[labels][:, :, None] + rng.randint(-30, 30,
                                                         (n, 3, 1024))
        batch = {b'batch_label': name.encode(),
                 b'data': numpy.clip(data, 0, 255).astype(
                     numpy.uint8).reshape(n, 3072),
                 b'labels': [int(k) for k in labels]}
        with open(os.path.join(directory, name), 'wb') as f:
            pickle.dump(batch, f, protocol=2)
    return directory


# --- running the examples -------------------------------------------------
def run_example(script, *args, n=None, timeout=150):
    """``python SCRIPT ARGS``, or under ``mpiexec -n N``; output merged."""
    cmd = [sys.executable, script] + [str(a) for a in args]
    if n is not None:
        cmd = [MPIEXEC, '-n', str(n)] + cmd
    env = dict(os.environ, OMP_NUM_THREADS='1', OPENBLAS_NUM_THREADS='1',
               PYTHONUNBUFFERED='1')
    try:
        return subprocess.run(cmd, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                              timeout=timeout, universal_newlines=True)
    except subprocess.TimeoutExpired as e:
        pytest.fail('{} timed out after {} s; output:\n{}'.format(
            ' '.join(cmd), timeout, e.output))


def final_entry(out):
    with open(os.path.join(out, 'log')) as f:
        return json.load(f)[-1]


def check_trained(result, out, epochs):
    assert result.returncode == 0, result.stdout
    last = final_entry(out)
    print('{}: epoch {}, validation accuracy {:.4f}'.format(
        out, last['epoch'], last['validation/main/accuracy']))
    assert last['epoch'] == epochs, result.stdout
    assert last['validation/main/accuracy'] > MIN_ACCURACY, result.stdout
    assert result.stdout.count('final: ') == 1, result.stdout  # rank 0 only
    return last


def error_lines(result, script):
    prog = os.path.relpath(script, ROOT)
    return [line for line in result.stdout.splitlines()
            if line.startswith(prog + ': error:')]


# --- MNIST ----------------------------------------------------------------
@pytest.fixture(scope='module')
def mnist_dir(tmp_path_factory):
    return write_mnist(str(tmp_path_factory.mktemp('mnist') / 'idx'))


@pytest.fixture(scope='module')
def mnist_distributed(mnist_dir, tmp_path_factory):
    """2 ranks, K-FAC (DistributedKFAC), the CNN; a snapshot at epoch 2."""
    out = str(tmp_path_factory.mktemp('mnist_run') / 'result')
    result = run_example(
        MNIST, '--distributed', '--no_cuda', '--arch', 'cnn',
        '--data_dir', mnist_dir, '--batch_size', 50, '--num_epochs', 3,
        '--snapshot_interval', 2, '--out', out, n=2)
    return result, out


def test_mnist_distributed_kfac(mnist_distributed):
    result, out = mnist_distributed
    check_trained(result, out, 3)
    assert 'distributed: 2 processes, MpiCommunicator' in result.stdout
    # a sharded snapshot (each rank writes the blocks it owns) at epoch 2
    # (400 examples per rank, 8 steps an epoch), none at epoch 3
    assert sorted(os.listdir(os.path.join(out, 'snapshot_iter_16'))) == [
        'rank0.npz', 'rank1.npz', 'shared.npz']
    assert not os.path.exists(os.path.join(out, 'snapshot_iter_24'))


def test_mnist_distributed_resume_on_three_processes(mnist_distributed,
                                                     mnist_dir, tmp_path):
    _, out = mnist_distributed
    resumed = str(tmp_path / 'resumed')
    result = run_example(
        MNIST, '--distributed', '--no_cuda', '--arch', 'cnn',
        '--data_dir', mnist_dir, '--batch_size', 50, '--num_epochs', 3,
        '--out', resumed, '--resume', os.path.join(out, 'snapshot_iter_16'),
        n=3)
    check_trained(result, resumed, 3)
    with open(os.path.join(resumed, 'log')) as f:
        log = json.load(f)
    assert [e['epoch'] for e in log] == [1, 2, 3]   # epochs 1-2 resumed


def test_mnist_distributed_first_order_baseline(mnist_dir, tmp_path):
    out = str(tmp_path / 'result')
    result = run_example(
        MNIST, '--distributed', '--no_cuda', '--optimizer', 'momentum_sgd',
        '--data_dir', mnist_dir, '--batch_size', 50, '--num_epochs', 2,
        '--out', out, n=2)
    check_trained(result, out, 2)


def test_mnist_single_process_mlp_with_plot(mnist_dir, tmp_path):
    out = str(tmp_path / 'result')
    result = run_example(MNIST, '--no_cuda', '--data_dir', mnist_dir,
                         '--num_epochs', 2, '--plot', '--out', out)
    check_trained(result, out, 2)   # batch 100: 8 steps an epoch
    assert os.path.isfile(os.path.join(out, 'snapshot_iter_16'))
    from chainer.training import extensions
    if extensions.PlotReport.available():
        assert os.path.isfile(os.path.join(out, 'accuracy.png'))


def test_fashion_mnist_format_single_process_adam(tmp_path):
    """--dataset fashion-mnist reads the Debian package's files (all
    gzipped) through chainerkfac.datasets.fashion_mnist."""
    data = write_mnist(str(tmp_path / 'fashion'), all_gzip=True)
    out = str(tmp_path / 'result')
    result = run_example(MNIST, '--no_cuda', '--dataset', 'fashion-mnist',
                         '--data_dir', data, '--optimizer', 'adam',
                         '--num_epochs', 1, '--out', out)
    check_trained(result, out, 1)


def test_mnist_missing_data_is_one_line(tmp_path):
    empty = str(tmp_path / 'nothing')
    result = run_example(MNIST, '--no_cuda', '--data_dir', empty)
    assert result.returncode == 2, result.stdout
    lines = error_lines(result, MNIST)
    assert len(lines) == 1, result.stdout
    assert 'MNIST not found: {}'.format(empty) in lines[0]
    assert 'train-images-idx3-ubyte' in lines[0] and '--data_dir' in lines[0]


# --- CIFAR-10 -------------------------------------------------------------
@pytest.fixture(scope='module')
def cifar_dir(tmp_path_factory):
    # the directory the archive unpacks to, under the one given to the script
    parent = tmp_path_factory.mktemp('cifar')
    write_cifar(str(parent / 'cifar-10-batches-py'))
    return str(parent)


def test_cifar10_distributed_resnet50(cifar_dir, tmp_path):
    """The original's ResNet-50 (its 107 K-FAC blocks, channels / 16) on 2
    ranks: 200 images each, 8 steps an epoch."""
    out = str(tmp_path / 'result')
    result = run_example(
        CIFAR, '--distributed', '--no_cuda', '--arch', 'resnet50',
        '--width', 0.0625, '--data_dir', cifar_dir, '--batch_size', 25,
        '--num_epochs', 7, '--out', out, n=2)
    check_trained(result, out, 7)
    assert os.path.isdir(os.path.join(out, 'snapshot_iter_56'))


def test_cifar10_single_process_vgg(cifar_dir, tmp_path):
    out = str(tmp_path / 'result')
    result = run_example(
        CIFAR, '--no_cuda', '--arch', 'vgg', '--width', 0.0625,
        '--data_dir', os.path.join(cifar_dir, 'cifar-10-batches-py'),
        '--batch_size', 25, '--num_epochs', 3, '--out', out)
    check_trained(result, out, 3)


def test_cifar10_missing_data_is_one_line_on_every_rank(tmp_path):
    empty = str(tmp_path / 'cifar-10-batches-py')
    result = run_example(CIFAR, '--distributed', '--no_cuda',
                         '--data_dir', empty, n=2)
    assert result.returncode != 0, result.stdout
    lines = error_lines(result, CIFAR)
    assert len(lines) == 1, result.stdout   # rank 0's; both ranks stopped
    assert 'CIFAR-10 not found: {} has no data_batch_1'.format(empty) \
        in lines[0]
    assert 'tar xzf cifar-10-python.tar.gz -C {}'.format(tmp_path) in lines[0]


# --- options --------------------------------------------------------------
def load_example(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('path, arch, batch', [(MNIST, 'cnn', 100),
                                               (CIFAR, 'vgg', 64)])
def test_original_flags_reach_their_values(path, arch, batch):
    example = load_example(path, 'example_' + arch)
    defaults = example.parse_args([])
    assert (defaults.batch_size, defaults.num_epochs,
            defaults.snapshot_interval, defaults.optimizer, defaults.out,
            defaults.no_cuda, defaults.distributed) == (
                batch, 20, -1, 'kfac', 'result', False, False)
    args = example.parse_args([
        '--batch_size', '7', '--num_epochs', '3', '--snapshot_interval', '2',
        '--no_cuda', '--out', 'o', '--resume', 'r', '--optimizer', 'adam',
        '--arch', arch, '--plot', '--distributed'])
    assert (args.batch_size, args.num_epochs, args.snapshot_interval,
            args.no_cuda, args.out, args.resume, args.optimizer, args.arch,
            args.plot, args.distributed) == (
                7, 3, 2, True, 'o', 'r', 'adam', arch, True, True)
    # K-FAC's defaults are the original's KFAC() defaults
    kfac = example.build_optimizer(defaults, None)
    hyper = kfac.hyperparam
    assert (hyper.lr, hyper.momentum, hyper.damping, hyper.cov_ema_decay) == (
        0.001, 0.9, 0.03, 0.99)
    assert kfac.bn_fisher == 'full' and kfac.hyperparam.stab_coeff == 16.0


@pytest.mark.skipif(device_module.gpu_problem() is None,
                    reason='a GPU is usable here: GPU training would start')
def test_default_gpu_training_without_gpu_is_one_line(mnist_dir):
    result = run_example(MNIST, '--data_dir', mnist_dir)
    assert result.returncode == device_module.EXIT_STATUS, result.stdout
    lines = error_lines(result, MNIST)
    assert len(lines) == 1 and 'no usable GPU' in lines[0], result.stdout
    assert '--no_cuda' in lines[0]


# --- example_support's pieces that the two examples share ------------------
def test_make_parser_groups_the_original_options():
    from chainerkfac.training import example_support as support
    p, added = support.make_parser(
        'ex.py', 'First line.\nmore', 'the epilog', 10, ('kfac', 'sgd'),
        ('SGD', 'sgd'), {'mlp': None}, 'mlp')
    added.add_argument('--extra', default='x')
    assert p.prog == 'ex.py' and p.description == 'First line.'
    assert p.epilog == 'the epilog'
    titles = [g.title for g in p._action_groups]
    assert titles[-2:] == ["the original example's options",
                           'options added here']
    args = p.parse_args(['--optimizer', 'sgd'])
    assert (args.batch_size, args.optimizer, args.arch, args.extra) == (
        10, 'sgd', 'mlp', 'x')


class _Log(object):
    log = [{'epoch': 2, 'validation/main/accuracy': 0.5,
            'validation/main/loss': 1.25}]


class _Trainer(object):
    def get_extension(self, name):
        assert name == 'LogReport'
        return _Log()


class _Comm(object):
    def __init__(self, rank, size):
        self.rank, self.size = rank, size


def test_report_final_is_rank_0s_line(capsys):
    from chainerkfac.training import example_support as support
    support.report_final(_Trainer(), None, 'mnist mlp kfac')
    support.report_final(_Trainer(), _Comm(1, 3), 'not printed')
    support.report_final(_Trainer(), _Comm(0, 3), 'cifar10 vgg')
    assert capsys.readouterr().out == (
        'final: mnist mlp kfac on 1 process(es): epoch 2, validation '
        'accuracy 0.5000, loss 1.2500\n'
        'final: cifar10 vgg on 3 process(es): epoch 2, validation accuracy '
        '0.5000, loss 1.2500\n')
