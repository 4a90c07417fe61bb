"""train_imagenet.py end to end under mpiexec, and its errors on bad input."""
import json
import os

import numpy
import pytest

import image_fixtures
from mpi_helpers import run_python

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'train_imagenet.py')


def run_script(n, args, timeout=240, **env_extra):
    """train_imagenet.py ARGS, under ``mpiexec -n N`` when ``n``."""
    return run_python(n, SCRIPT, args, timeout, **env_extra)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('imagenet'))
    image_fixtures.make_dataset(root)
    image_fixtures.write_config(os.path.join(root, 'tiny.json'))
    return root


def base_args(data, out, **extra):
    args = [os.path.join(data, 'train.txt'), os.path.join(data, 'val.txt'),
            '--train_root', os.path.join(data, 'train'),
            '--val_root', os.path.join(data, 'val'),
            '--config', os.path.join(data, 'tiny.json'), '--out', out,
            '--no_progress', '--log_interval', '1', '--loaderjob', '2']
    for k, v in extra.items():
        args += ['--' + k, v]
    return args


def snapshot_arrays(path, prefixes=('updater/', 'extensions/random_state/')):
    with numpy.load(path) as f:
        return {k: f[k] for k in f.files if k.startswith(prefixes)}


def test_runs_evaluates_snapshots_and_resumes_exactly(data, tmp_path):
    a, b = str(tmp_path / 'a'), str(tmp_path / 'b')
    result = run_script(2, base_args(data, a, iterations=4,
                                     snapshot_interval=2))
    assert result.returncode == 0, result.stdout
    assert 'validation/main/accuracy' in result.stdout
    assert 'final: iteration 4 validation accuracy' in result.stdout
    with open(os.path.join(a, 'log')) as f:
        log = json.load(f)
    assert [e['iteration'] for e in log] == [1, 2, 3, 4]   # --log_interval 1
    assert 'kfac/refresh_fraction' in log[0] and 'lr' in log[0]
    for name in ('snapshot_iter_2/shared.npz', 'snapshot_iter_2/rank0.npz',
                 'snapshot_iter_2/rank1.npz', 'snapshot_iter_4/shared.npz',
                 'snapshot_iter_4/rank0.npz', 'snapshot_iter_4/rank1.npz',
                 'log', 'config.json', 'loss.png'):
        assert os.path.exists(os.path.join(a, name)), name
    result = run_script(2, base_args(
        data, b, iterations=4, snapshot_interval=2,
        resume=os.path.join(a, 'snapshot_iter_2')))
    assert result.returncode == 0, result.stdout
    # no extra snapshot (the triggers' state is restored too)
    assert set(os.listdir(b)) == set(os.listdir(a)) - {'snapshot_iter_2'}
    # the model, the optimizer's state (shared and owned), the iterators and
    # the random states are those of the uninterrupted run
    for name in ('shared.npz', 'rank0.npz', 'rank1.npz'):
        uninterrupted = snapshot_arrays(os.path.join(a, 'snapshot_iter_4',
                                                     name))
        resumed = snapshot_arrays(os.path.join(b, 'snapshot_iter_4', name))
        assert uninterrupted.keys() == resumed.keys() and uninterrupted
        for k in uninterrupted:
            numpy.testing.assert_array_equal(resumed[k], uninterrupted[k],
                                             err_msg=k)


def expect_error(result, *fragments):
    assert result.returncode != 0, result.stdout
    for fragment in fragments:
        assert fragment in result.stdout, result.stdout
    assert 'Traceback' not in result.stdout, result.stdout


def test_missing_list(data, tmp_path):
    args = base_args(data, str(tmp_path))
    args[0] = os.path.join(data, 'nope.txt')
    expect_error(run_script(2, args), 'nope.txt')


def test_missing_root(data, tmp_path):
    args = base_args(data, str(tmp_path))
    args[args.index('--val_root') + 1] = '/no/such/dir'
    expect_error(run_script(0, args), '--val_root', '/no/such/dir')


def test_malformed_line(data, tmp_path):
    bad = tmp_path / 'bad.txt'
    bad.write_text('imgs/train_0.png 0\nimgs/train_1.jpg one\n')
    args = base_args(data, str(tmp_path / 'out'))
    args[0] = str(bad)
    expect_error(run_script(2, args), 'bad.txt', ':2')


def test_label_outside_the_model(data, tmp_path):
    args = base_args(data, str(tmp_path), n_class=2)
    expect_error(run_script(0, args), 'train.txt', 'label 2')


def test_corrupt_image_is_named_or_skipped(data, tmp_path):
    broken = os.path.join(data, 'train', 'imgs', 'broken.jpg')
    with open(broken, 'wb') as f:
        f.write(b'\xff\xd8 definitely not a jpeg')
    lst = tmp_path / 'with_broken.txt'
    lst.write_text('\n'.join(['imgs/broken.jpg 0'] + [
        'imgs/train_{}.{} {}'.format(i, image_fixtures.MODES[i % 6][0], i % 3)
        for i in range(7)]) + '\n')
    args = base_args(data, str(tmp_path / 'x'), iterations=2, batchsize=8)
    args[0] = str(lst)
    expect_error(run_script(0, args), 'broken.jpg')
    ok = run_script(0, args + ['--skip_corrupt'])
    assert ok.returncode == 0, ok.stdout
    assert 'skipped' in ok.stdout


def test_resume_from_another_model_is_an_error(data, tmp_path):
    a = str(tmp_path / 'a')
    assert run_script(0, base_args(data, a, iterations=1)).returncode == 0
    other = image_fixtures.write_config(str(tmp_path / 'other.json'),
                                        arch='resnet20')
    args = base_args(data, str(tmp_path / 'b'), iterations=2,
                     resume=os.path.join(a, 'snapshot_iter_1'))
    args[args.index('--config') + 1] = other
    expect_error(run_script(0, args), 'does not match')


def test_unknown_config_key(data, tmp_path):
    cfg = image_fixtures.write_config(str(tmp_path / 'bad.json'),
                                      learning_rate=0.1)
    args = base_args(data, str(tmp_path))
    args[args.index('--config') + 1] = cfg
    expect_error(run_script(0, args), 'learning_rate')


def test_fp16_training_with_fp32_master_weights(data, tmp_path):
    cfg = image_fixtures.write_config(str(tmp_path / 'fp16.json'), fp16=True,
                                      loss_scale=128.0, mixup_alpha=0.0)
    args = base_args(data, str(tmp_path / 'out'), iterations=2)
    args[args.index('--config') + 1] = cfg
    result = run_script(2, args)
    assert result.returncode == 0, result.stdout
    with numpy.load(str(tmp_path / 'out' / 'snapshot_iter_2' /
                        'shared.npz')) as f:
        w = f['updater/model:main/predictor/fc/W']
    assert w.dtype == numpy.float16 and numpy.isfinite(w).all()


def test_curvature_options_reach_the_optimizer(data, tmp_path):
    """The issue-18 flags, with mixup's soft targets, on 2 ranks: they land
    in the resolved configuration and the optimizer reports what they do."""
    out = str(tmp_path / 'out')
    args = base_args(data, out, iterations=4, inverse='eigen', fisher='mc',
                     mc_samples='2', kl_clip='1e-3',
                     damping_adaptation_interval='2')
    result = run_script(2, args + ['--damping_adaptation'])
    assert result.returncode == 0, result.stdout
    with open(os.path.join(out, 'config.json')) as f:
        resolved = json.load(f)
    resolved = resolved.get('config', resolved)
    assert (resolved['inverse'], resolved['fisher'], resolved['mc_samples'],
            resolved['kl_clip'], resolved['damping_adaptation'],
            resolved['damping_adaptation_interval']) == (
                'eigen', 'mc', 2, 1e-3, True, 2)
    with open(os.path.join(out, 'log')) as f:
        log = json.load(f)
    assert all('kfac/kl_scale' in e for e in log)
    assert [e['iteration'] for e in log if 'kfac/damping' in e] == [2, 4]
    assert all(numpy.isfinite(e['main/loss']) for e in log)


# --gpu: without a GPU (forced with CUDA_VISIBLE_DEVICES='', so that this
# holds on a GPU machine too) one line and exit status 2 on every rank; the
# runs on a GPU are marked ``gpu`` and skipped without one (they have not run
# on a GPU from this repository's machines yet: scripts/gpu_check.sh runs
# them).

def gpu_problem():
    from chainerkfac.training import device
    return device.gpu_problem()


needs_gpu = pytest.mark.skipif(gpu_problem() is not None,
                               reason='no usable GPU: {}'.format(
                                   gpu_problem()))


@pytest.mark.parametrize('n', [0, 2])
def test_gpu_without_a_gpu_is_one_line_on_every_rank(data, tmp_path, n):
    result = run_script(n, base_args(data, str(tmp_path), iterations=1) +
                        ['--gpu'], CUDA_VISIBLE_DEVICES='')
    assert result.returncode == 2, result.stdout
    assert 'Traceback' not in result.stdout, result.stdout
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    errors = [line for line in lines if 'no usable GPU' in line]
    assert len(errors) == 1, result.stdout
    assert errors[0].startswith('train_imagenet.py: error{}: --gpu: '.format(
        ' (rank 0)' if n else '')), result.stdout
    import importlib.util
    if importlib.util.find_spec('cupy') is None:   # nothing else at all
        assert lines == errors, result.stdout
    assert not os.path.exists(str(tmp_path / 'config.json'))


def model_arrays(path):
    with numpy.load(path) as f:
        return {k: f[k] for k in f.files if k.startswith('updater/model:')}


@pytest.mark.gpu
@needs_gpu
def test_gpu_training_matches_cpu_training(data, tmp_path):
    """Two K-FAC steps (mixup, erasing, weight rescaling: the tiny config) on
    the GPU and on the CPU from the same seed and batches."""
    results = {}
    for where in ('cpu', 'gpu'):
        out = str(tmp_path / where)
        args = base_args(data, out, iterations=2, loaderjob='0')
        result = run_script(0, args + (['--gpu'] if where == 'gpu' else []))
        assert result.returncode == 0, result.stdout
        results[where] = model_arrays(os.path.join(out, 'snapshot_iter_2',
                                                   'shared.npz'))
    assert results['cpu'].keys() == results['gpu'].keys()
    for k, cpu in results['cpu'].items():
        scale = max(float(abs(cpu).max()), 1e-6)
        numpy.testing.assert_allclose(results['gpu'][k], cpu, rtol=1e-3,
                                      atol=1e-3 * scale, err_msg=k)


@pytest.mark.gpu
@needs_gpu
def test_gpu_fp16_training(data, tmp_path):
    cfg = image_fixtures.write_config(str(tmp_path / 'fp16.json'), fp16=True,
                                      loss_scale=128.0)
    args = base_args(data, str(tmp_path / 'out'), iterations=2)
    args[args.index('--config') + 1] = cfg
    result = run_script(0, args + ['--gpu', '--use_tensor_core'])
    assert result.returncode == 0, result.stdout
    assert 'use_cudnn_tensor_core=always' in result.stdout, result.stdout
    arrays = model_arrays(str(tmp_path / 'out' / 'snapshot_iter_2' /
                              'shared.npz'))
    w = arrays['updater/model:main/predictor/fc/W']
    assert w.dtype == numpy.float16
    assert all(numpy.isfinite(a).all() for a in arrays.values())


@pytest.mark.gpu
@needs_gpu
def test_gpu_two_ranks_need_two_gpus(data, tmp_path):
    import cupy
    if cupy.cuda.runtime.getDeviceCount() >= 2:
        pytest.skip('this node has two GPUs or more')
    result = run_script(2, base_args(data, str(tmp_path), iterations=1) +
                        ['--gpu'])
    assert result.returncode == 2, result.stdout
    assert 'Traceback' not in result.stdout, result.stdout
    assert result.stdout.count('no usable GPU') == 1, result.stdout
    assert '2 processes on this node need one GPU each' in result.stdout
