"""``--gpu`` in the entry points, the GPU benchmarks and gpu_equivalence.py.

Without a GPU (forced with ``CUDA_VISIBLE_DEVICES=''`` so that this holds on a
GPU machine too) every entry point's GPU run ends with one line naming what is
missing and exit status 2; the GPU benchmarks' ``--cpu-smoke`` runs and
``gpu_equivalence.py --cpu`` run end to end on the CPU. The tests marked
``gpu`` need CuPy and a CUDA device and are skipped without them; they have
not run on a GPU from this repository's machines yet (``scripts/gpu_check.sh``
runs them on one). ``train_imagenet.py``'s own are in test_train_imagenet.py.
"""
import importlib.util
import os
import subprocess
import sys
import types

import pytest

from cuda_helpers import stand_in_libraries  # NOQA: I100
from mpi_helpers import run_command  # NOQA: I100

# chainerkfac before chainer: it makes Chainer 7.8.1 import on NumPy 2
from chainerkfac.training import device as device_module  # NOQA: I100
import chainer  # NOQA: I100
from mpi_helpers import run_mpi
from mpi_helpers import run_mpi_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION_MNIST = '/usr/share/datasets/fashion-mnist'
HAS_OPS = importlib.util.find_spec('chainerkfac.cuda') is not None and \
    importlib.util.find_spec('chainerkfac.cuda.ops') is not None
GPU_PROBLEM = device_module.gpu_problem()
needs_gpu = pytest.mark.skipif(GPU_PROBLEM is not None,
                               reason='no usable GPU: {}'.format(GPU_PROBLEM))
needs_fashion_mnist = pytest.mark.skipif(
    not os.path.isdir(FASHION_MNIST),
    reason='Fashion-MNIST ({}) is not installed'.format(FASHION_MNIST))


def run(script, *args, hide_gpus=False, timeout=240):
    env = {'CUDA_VISIBLE_DEVICES': ''} if hide_gpus else {}
    cmd = [sys.executable, os.path.join(ROOT, script)] + [str(a) for a in args]
    return run_command(cmd, timeout, **env)


def assert_one_line_error(result, prog):
    """Exit status 2, no traceback and one line ``PROG: error...: no usable
    GPU: ...``; nothing else at all where CuPy is not even installed."""
    out = result.stdout
    assert result.returncode == device_module.EXIT_STATUS, out
    assert 'Traceback' not in out, out
    lines = [line for line in out.splitlines() if 'no usable GPU' in line]
    assert len(lines) == 1 and lines[0].startswith(prog + ': error'), out
    if importlib.util.find_spec('cupy') is None:
        assert [line for line in out.splitlines() if line.strip()] == lines
    return lines[0]


# ------------------------------------------------ without a GPU (CPU tests)

@pytest.mark.parametrize('script,args', [
    ('examples/train_fashion_mnist.py', ['--gpu']),
    ('benchmarks/step_time.py', ['--gpu']),
    ('benchmarks/stale_accuracy.py', ['--gpu']),
    ('benchmarks/gpu_step_time.py', []),
    ('benchmarks/pack_bandwidth.py', []),
    ('benchmarks/comm_volume.py', ['--time', 'mpi', '--gpu', '--model',
                                   'resnet20', '--repeat', 1]),
])
def test_gpu_run_without_a_gpu_is_one_line(script, args):
    line = assert_one_line_error(run(script, *args, hide_gpus=True),
                                 os.path.basename(script))
    assert '--cpu-smoke' in line or '--gpu' in line


#: a GPU entry point run as though the driver saw one device: CuPy itself
#: and every library it loads are real, only the device query is stood in
AS_IF_ONE_DEVICE = """
import runpy, sys
import chainerkfac
import cupy
cupy.is_available = lambda: True
cupy.cuda.runtime.getDeviceCount = lambda: 1
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
"""


@pytest.mark.skipif(importlib.util.find_spec('cupy') is None,
                    reason='needs CuPy installed (the NumPy-2 leg)')
def test_a_missing_cuda_library_stops_before_training():
    """CuPy installed, no driver: with the device query answered, --gpu
    stops with one line naming the first CUDA library CuPy cannot load (the
    NumPy-2 leg has no cuSOLVER), before any training step."""
    import cupy

    from chainerkfac.cuda import availability
    missing = availability.library_problem(cupy_version=cupy.__version__)
    if missing is None:  # pragma: no cover - a complete GPU stack
        pytest.skip('every CUDA library loads here')
    result = run_command(
        [sys.executable, '-c', AS_IF_ONE_DEVICE,
         os.path.join(ROOT, 'benchmarks', 'gpu_step_time.py')], 120)
    line = assert_one_line_error(result, 'gpu_step_time.py')
    assert line.endswith('no usable GPU: ' + missing), line
    assert 'K-FAC every step' not in result.stdout, result.stdout


def test_gpu_equivalence_without_a_gpu_is_one_line(monkeypatch):
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '')
    result = run_mpi(2, 'gpu_equivalence.py', timeout=120)
    line = assert_one_line_error(result, 'gpu_equivalence.py')
    assert 'error (rank 0)' in line


def assert_gpu_equivalence_records(records, gpu):
    """gpu_equivalence.py's records: both scenarios on every rank, within
    their rtol of one process on the device (and, on a GPU, of the CPU)."""
    for record in records:
        assert record['gpu'] is gpu, record
        assert (record['device'] == 'CPU') is not gpu, record
        assert sorted(record['errors']) == ['batch_norm', 'global_batch']
        for name, errors in record['errors'].items():
            # [vs one process] (+ [vs the CPU] on a GPU); each checked by
            # assert_allclose(rtol, atol=rtol * scale): <= 2 rtol of scale
            assert len(errors) == (2 if gpu else 1), record
            assert errors[0] <= 2 * record['rtol'][name], record
            if gpu:
                assert errors[1] <= 2 * record['cpu_rtol'], record


def test_gpu_equivalence_script_on_cpu(tmp_path):
    records = run_mpi_records(2, 'gpu_equivalence.py', tmp_path, '--cpu',
                              timeout=180)
    assert_gpu_equivalence_records(records, gpu=False)


def test_pinned_staging_script_on_cpu(tmp_path):
    records = run_mpi_records(2, 'pinned_staging.py', tmp_path, '--cpu',
                              timeout=120)
    for record in records:
        assert record['gpu'] is False and record['rounds'] == 6, record
        assert record['mismatches'] == [], record


def test_gpu_step_time_cpu_smoke():
    result = run('benchmarks/gpu_step_time.py', '--cpu-smoke')
    assert result.returncode == 0, result.stdout
    for row in ('SGD', 'K-FAC every step', 'K-FAC stale, all steps'):
        assert row in result.stdout, result.stdout
    assert 'forward_' in result.stdout and 'inversio' in result.stdout


@pytest.mark.skipif(not HAS_OPS, reason='the pack kernel chainerkfac.cuda.ops '
                    'is not in this tree yet (being written); this smoke test '
                    'must not be skipped once it is')
def test_pack_bandwidth_cpu_smoke():
    result = run('benchmarks/pack_bandwidth.py', '--cpu-smoke')
    assert result.returncode == 0, result.stdout
    assert 'ops.pack -> float16, scaled' in result.stdout, result.stdout
    checks = [line for line in result.stdout.splitlines()
              if line.startswith('check:')]
    assert len(checks) == 3 and all(c.endswith('yes') for c in checks), \
        result.stdout


def test_gpu_check_reports_every_step_and_goes_on(tmp_path):
    """scripts/gpu_check.sh without its wheels (and, here, without Python
    3.12): setup fails, the other steps are reported as not run, the results
    go to the results folder and to $OUT, and the exit status is 1."""
    out, results = tmp_path / 'out', tmp_path / 'results'
    out.mkdir()
    env = dict(os.environ, GPU_CHECK_WHEELS=str(tmp_path / 'no_wheels'),
               GPU_CHECK_RESULTS=str(results), OUT=str(out),
               GPU_CHECK_PYTHON=sys.executable)
    script = os.path.join(ROOT, 'scripts', 'gpu_check.sh')
    result = subprocess.run(['bash', script, 'device', 'pack'], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            universal_newlines=True, timeout=60)
    assert result.returncode == 1, result.stdout
    md = sorted(results.glob('gpu_check_*.md'))
    assert len(md) == 1, result.stdout
    text = md[0].read_text()
    assert '| setup | FAIL (exit 1) |' in text, text
    assert 'Python 3.12' in text or 'no wheel folder' in text, text
    for step in ('device', 'pack'):
        assert '| {} | NOT RUN (setup failed) |'.format(step) in text, text
    assert sorted(os.listdir(str(out))) == sorted(
        [md[0].name, md[0].name[:-3] + '.log'])
    bad = subprocess.run(['bash', script, 'no_such_step'], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         universal_newlines=True, timeout=60)
    assert bad.returncode == 2 and 'unknown step' in bad.stdout


def test_gpu_check_cudnn_stack_needs_its_wheels(tmp_path):
    """GPU_CHECK_STACK=cudnn (the CuPy 13.6 stack) without the folder that
    prepare_gpu_machine.sh --cudnn fills: setup fails saying so, before any
    venv is made; the results name the stack."""
    out, results = tmp_path / 'out', tmp_path / 'results'
    out.mkdir()
    (tmp_path / 'wheels').mkdir()
    env = dict(os.environ, GPU_CHECK_WHEELS=str(tmp_path / 'wheels'),
               GPU_CHECK_RESULTS=str(results), OUT=str(out),
               GPU_CHECK_PYTHON=sys.executable, GPU_CHECK_STACK='cudnn')
    script = os.path.join(ROOT, 'scripts', 'gpu_check.sh')
    result = subprocess.run(['bash', script, 'tests'], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            universal_newlines=True, timeout=60)
    assert result.returncode == 1, result.stdout
    (md,) = results.glob('gpu_check_*_cudnn.md')
    text = md.read_text()
    assert '| setup | FAIL (exit 1) |' in text, text
    assert '| tests | NOT RUN (setup failed) |' in text, text
    assert '- stack: cudnn (requirements-gpu-cudnn.txt: CuPy 13.6' in text
    assert ('no wheel folder {}_cudnn for the cudnn stack: run scripts/'
            'prepare_gpu_machine.sh --cudnn'.format(tmp_path / 'wheels')
            in text), text
    assert 'making ' not in text           # no venv was begun
    env['GPU_CHECK_STACK'] = 'cuda11'
    bad = subprocess.run(['bash', script, 'device'], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         universal_newlines=True, timeout=60)
    assert bad.returncode == 2 and "unknown GPU_CHECK_STACK 'cuda11'" in \
        bad.stdout


def test_prepare_gpu_machine_lists_the_cudnn_stack():
    """What prepare_gpu_machine.sh --cudnn downloads (no network here):
    requirements-gpu-cudnn.txt with the files it includes, without Chainer's
    sdist pin (its wheel is prepared apart), with Chainer's own needs."""
    script = os.path.join(ROOT, 'scripts', 'prepare_gpu_machine.sh')
    result = subprocess.run(['bash', script, '--print-requirements'],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            universal_newlines=True, timeout=60)
    assert result.returncode == 0, result.stdout
    lines = result.stdout.split()
    for pin in ('cupy-cuda12x==13.6.0', 'numpy==1.26.4',
                'nvidia-cudnn-cu12==8.9.7.29',
                'nvidia-cusolver-cu12==11.6.1.9',
                'nvidia-nccl-cu12==2.32.3', 'mpi4py==4.1.1', 'pytest==8.3.3',
                'setuptools<70', 'protobuf>=3.0.0'):
        assert pin in lines, result.stdout
    assert not [line for line in lines if line.startswith('chainer')]
    assert len(lines) == len(set(lines))
    bad = subprocess.run(['bash', script, '--cuda11'], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, universal_newlines=True,
                         timeout=60)
    assert bad.returncode == 2 and 'unknown option --cuda11' in bad.stdout


GPU_CHECK_TESTS = """
import pytest


@pytest.mark.gpu
def test_runs():
    pass


@pytest.mark.gpu
def test_skips_naming_cupy():
    pytest.skip('NCCL adapter: CuPy 14.2.0 has no NCCL (cupy.cuda.nccl.'
                'available is False)')
"""


def gpu_check_tests_step(tmp_path, paths):
    work = tmp_path / 'work'
    work.mkdir(exist_ok=True)
    env = dict(os.environ, GPU_CHECK_WORK=str(work),
               GPU_CHECK_PYTHON=sys.executable, GPU_CHECK_TEST_PATHS=paths)
    return subprocess.run(
        ['bash', os.path.join(ROOT, 'scripts', 'gpu_check.sh'), '__step',
         'tests'], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        universal_newlines=True, timeout=120)


def test_gpu_check_counts_a_skip_as_a_skip(tmp_path):
    """The tests step's verdict is pytest's: a skip whose reason names CuPy
    (an image without NCCL) passes, a failing test fails. (The files are
    outside tests/, so no GPU is needed to collect them.)"""
    (tmp_path / 'test_skips.py').write_text(GPU_CHECK_TESTS)
    result = gpu_check_tests_step(tmp_path, str(tmp_path / 'test_skips.py'))
    assert result.returncode == 0, result.stdout
    assert 'SKIPPED' in result.stdout and 'has no NCCL' in result.stdout
    assert '1 passed, 1 skipped' in result.stdout, result.stdout
    (tmp_path / 'test_fails.py').write_text(
        GPU_CHECK_TESTS + '\n\n@pytest.mark.gpu\ndef test_fails():\n'
        '    assert False\n')
    result = gpu_check_tests_step(tmp_path, str(tmp_path / 'test_fails.py'))
    assert result.returncode == 1, result.stdout


@pytest.mark.skipif(GPU_PROBLEM is None, reason='a GPU is usable here')
def test_gpu_check_fails_without_a_usable_gpu(tmp_path):
    """Without a usable GPU the tests step does not pass by skipping every
    gpu test: tests/conftest.py ends the run with one line (exit status 4,
    a usage error) under CHAINERKFAC_REQUIRE_GPU=1."""
    result = gpu_check_tests_step(
        tmp_path, os.path.join(ROOT, 'tests', 'test_cholesky.py'))
    assert result.returncode == 4, result.stdout
    lines = [line for line in result.stdout.splitlines()
             if 'CHAINERKFAC_REQUIRE_GPU=1' in line]
    assert len(lines) == 1, result.stdout
    assert 'gpu tests cannot run: no C' in lines[0], lines


# ------------------------------------- chainerkfac.training.device (no GPU)

def fake_cupy(available=True, count=1, version='99.0'):
    runtime = types.SimpleNamespace(getDeviceCount=lambda: count)
    return types.SimpleNamespace(
        __version__=version, is_available=lambda: available,
        cuda=types.SimpleNamespace(runtime=runtime))


def test_gpu_problem_names_what_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, 'cupy', None)       # import fails
    assert device_module.gpu_problem().startswith('CuPy is not installed')
    monkeypatch.setitem(sys.modules, 'cupy', fake_cupy(available=False))
    assert 'cupy.is_available() is False' in device_module.gpu_problem()
    monkeypatch.setitem(sys.modules, 'cupy', fake_cupy(count=1))
    assert device_module.gpu_problem(2) == (
        '2 processes on this node need one GPU each, but CuPy 99.0 sees 1')
    stand_in_libraries(monkeypatch, broken=('cusolver',))
    assert device_module.gpu_problem(1) == (
        "CuPy 99.0 cannot load cuSOLVER (needed for K-FAC's Cholesky "
        'inverses): ImportError: libcusolver.so.99: cannot open shared object '
        'file: No such file or directory')
    stand_in_libraries(monkeypatch)
    monkeypatch.setattr(chainer.backends.cuda, 'available', False)
    assert device_module.gpu_problem(1).startswith(
        'Chainer {} cannot use CuPy 99.0'.format(chainer.__version__))
    monkeypatch.setattr(chainer.backends.cuda, 'available', True)
    assert device_module.gpu_problem(1) is None


def test_select_gpu_or_exit_one_line_single_process(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'cupy', None)
    with pytest.raises(SystemExit) as e:
        device_module.select_gpu_or_exit('prog.py')
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1
    assert err.startswith('prog.py: error: --gpu: no usable GPU: CuPy is not '
                          'installed')


class FakeComm(object):
    """What select_gpu reads of a ChainerMN communicator."""

    def __init__(self, rank, problems):
        self.rank, self.size = rank, len(problems)
        self.intra_rank, self.intra_size = rank, len(problems)
        self.barriers = 0
        comm = self

        class MPIComm(object):
            def allgather(self, mine):
                return [mine if r == comm.rank else p
                        for r, p in enumerate(problems)]

            def Barrier(self):
                comm.barriers += 1
        self.mpi_comm = MPIComm()


@pytest.mark.parametrize('rank', [0, 1])
def test_every_rank_stops_rank_0_prints_the_first_problem(monkeypatch, rank,
                                                          capsys):
    problems = [None, 'no GPU on node b', 'neither on c']
    monkeypatch.setattr(device_module, 'gpu_problem',
                        lambda n: problems[rank])
    comm = FakeComm(rank, problems)
    with pytest.raises(device_module.GPUUnavailable) as e:
        device_module.select_gpu(comm)
    assert e.value.rank == 1 and str(e.value) == 'no GPU on node b'
    with pytest.raises(SystemExit) as e:
        device_module.select_gpu_or_exit('t.py', comm)
    assert e.value.code == 2 and comm.barriers == 1
    err = capsys.readouterr().err
    assert err == ('t.py: error (rank 1): --gpu: no usable GPU: no GPU on '
                   'node b\n' if rank == 0 else '')


def test_local_ranks_need_a_gpu_each_unless_shared(monkeypatch):
    asked = []
    monkeypatch.setattr(device_module, 'gpu_problem',
                        lambda n: asked.append(n) or 'stop here')
    for allow_shared, expected in ((False, 3), (True, 1)):
        with pytest.raises(device_module.GPUUnavailable):
            device_module.select_gpu(FakeComm(0, [None] * 3),
                                     allow_shared=allow_shared)
        assert asked.pop() == expected


def test_synchronize_is_a_no_op_on_the_cpu():
    device_module.synchronize(None)
    device_module.synchronize(chainer.get_device('@numpy'))


# ------------------------------------------------------ on a GPU (marked)

@pytest.mark.gpu
@needs_gpu
def test_gpu_equivalence_two_ranks_one_gpu(tmp_path):
    records = run_mpi_records(2, 'gpu_equivalence.py', tmp_path, timeout=300)
    assert_gpu_equivalence_records(records, gpu=True)


@pytest.mark.gpu
@needs_gpu
def test_pinned_staging_two_ranks_one_gpu(tmp_path):
    """Pinned staging's event waits: back-to-back collectives where nothing
    else orders a pinned-buffer write after the previous copy out of it."""
    records = run_mpi_records(2, 'pinned_staging.py', tmp_path, timeout=180)
    for record in records:
        assert record['gpu'] is True and record['rounds'] == 6, record
        assert record['mismatches'] == [], record
        assert 'pinned' in record['buffers'], record
        assert record['event_waits'] > 0, record


@pytest.mark.gpu
@needs_gpu
def test_select_gpu_and_describe():
    device = device_module.select_gpu()
    assert device.xp is not __import__('numpy')
    line = device_module.describe(device)
    assert line.startswith('GPU 0: ') and 'CuPy' in line
    device_module.synchronize(device)


@pytest.mark.gpu
@needs_gpu
@needs_fashion_mnist
def test_example_trains_on_the_gpu(tmp_path):
    result = run('examples/train_fashion_mnist.py', '--gpu', '--train-limit',
                 512, '--test-limit', 256, '--batchsize', 128, '--no-progress',
                 '--out', tmp_path)
    assert result.returncode == 0, result.stdout
    assert 'final: optimizer=kfac test accuracy=' in result.stdout


@pytest.mark.gpu
@needs_gpu
@needs_fashion_mnist
@pytest.mark.parametrize('script,args', [
    ('benchmarks/step_time.py', ['--steps', 3, '--every', 2, '--skip', 1,
                                 '--batchsize', 32]),
    ('benchmarks/stale_accuracy.py', ['--steps', 2, '--batchsize', 256]),
])
def test_fashion_mnist_benchmarks_on_the_gpu(script, args):
    result = run(script, '--gpu', *args)
    assert result.returncode == 0, result.stdout
    assert 'GPU 0: ' in result.stdout, result.stdout


@pytest.mark.gpu
@needs_gpu
def test_gpu_step_time_small_on_the_gpu():
    result = run('benchmarks/gpu_step_time.py', '--arch', 'resnet8', '--size',
                 32, '--batchsize', 8, '--n_class', 10, '--steps', 3,
                 '--every', 2, '--warmup_steps', 1)
    assert result.returncode == 0, result.stdout
    assert 'K-FAC stale, all steps' in result.stdout


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize('communicator', ['mpi', 'pure_nccl'])
def test_comm_volume_times_collectives_on_the_gpu(communicator):
    """benchmarks/comm_volume.py --time COMM --gpu (what gpu_check's
    comm_time step runs with ResNet-50), small: one process, ResNet-20."""
    if communicator == 'pure_nccl':
        from chainerkfac.communicators import nccl_backend
        problem = nccl_backend.nccl_problem()
        if problem is not None:
            pytest.skip("'pure_nccl': " + problem)
    result = run('benchmarks/comm_volume.py', '--time', communicator,
                 '--gpu', '--model', 'resnet20', '--repeat', 2)
    assert result.returncode == 0, result.stdout
    assert 'GPU 0: ' in result.stdout, result.stdout
    assert 'step communication: fp32' in result.stdout, result.stdout


@pytest.mark.gpu
@needs_gpu
def test_pack_bandwidth_small_on_the_gpu():
    result = run('benchmarks/pack_bandwidth.py', '--arch', 'resnet8', '--reps',
                 3)
    assert result.returncode == 0, result.stdout
    checks = [line for line in result.stdout.splitlines()
              if line.startswith('check:')]
    assert len(checks) == 3 and all(c.endswith('yes') for c in checks), \
        result.stdout
