"""train_imagenet.py's sharded snapshots under mpiexec: resumption on another
number of processes (2 -> 3 -> 1), incomplete snapshots, one trainer file
(the original's --resume), and snapshots of the earlier per-rank format."""
import os
import shutil
import subprocess
import sys

import numpy
import pytest

import image_fixtures
from test_train_imagenet import base_args
from test_train_imagenet import ROOT
from test_train_imagenet import run_script

META = '_checkpoint/'


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('imagenet'))
    image_fixtures.make_dataset(root)
    image_fixtures.write_config(os.path.join(root, 'tiny.json'))
    return root


@pytest.fixture(scope='module')
def two_rank_run(data, tmp_path_factory):
    """2 processes, 2 iterations, a snapshot after each."""
    out = str(tmp_path_factory.mktemp('two') / 'a')
    result = run_script(2, base_args(data, out, iterations=2,
                                     snapshot_interval=1))
    assert result.returncode == 0, result.stdout
    return out


def meta(path, key):
    with numpy.load(path) as f:
        return f[META + key][()]


def owned_blocks(snapshot, n):
    owned = []
    for r in range(n):
        with numpy.load(os.path.join(snapshot, 'rank{}.npz'.format(r))) as f:
            owned.append([str(b) for b in f[META + 'owned']])
    return owned


def log_of(out):
    import json
    with open(os.path.join(out, 'log')) as f:
        return json.load(f)


def test_resume_on_three_then_on_one_process(data, two_rank_run, tmp_path):
    a = two_rank_run
    b, c = str(tmp_path / 'b'), str(tmp_path / 'c')
    result = run_script(3, base_args(
        data, b, iterations=3, resume=os.path.join(a, 'snapshot_iter_2')))
    assert result.returncode == 0, result.stdout
    assert '(iteration 2, written by 2 processes) on 3 processes' in \
        result.stdout, result.stdout
    snap = os.path.join(b, 'snapshot_iter_3')
    assert sorted(os.listdir(snap)) == ['rank0.npz', 'rank1.npz', 'rank2.npz',
                                        'shared.npz']
    shared = os.path.join(snap, 'shared.npz')
    assert meta(shared, 'n_processes') == 3 and meta(shared, 'iteration') == 3
    with numpy.load(shared) as f:
        assert int(f['updater/iteration']) == 3
        assert int(f['updater/optimizer:main/t']) == 3
        blocks = [str(n) for n in f[META + 'blocks']]
    owned = owned_blocks(snap, 3)   # each block on exactly one rank
    assert sorted(n for o in owned for n in o) == sorted(blocks)
    assert all(owned), owned
    log = log_of(b)
    assert [e['iteration'] for e in log] == [1, 2, 3]

    result = run_script(0, base_args(
        data, c, iterations=4, resume=os.path.join(b, 'snapshot_iter_3')))
    assert result.returncode == 0, result.stdout
    assert '(iteration 3, written by 3 processes) on 1 processes' in \
        result.stdout, result.stdout
    snap = os.path.join(c, 'snapshot_iter_4')
    assert sorted(os.listdir(snap)) == ['rank0.npz', 'shared.npz']
    assert sorted(owned_blocks(snap, 1)[0]) == sorted(blocks)
    log = log_of(c)
    assert [e['iteration'] for e in log] == [1, 2, 3, 4]
    assert all(numpy.isfinite(e['main/loss']) for e in log)


def one_error_line(result, *fragments):
    assert result.returncode == 2, result.stdout
    assert 'Traceback' not in result.stdout, result.stdout
    errors = [line for line in result.stdout.splitlines() if 'error' in line]
    assert len(errors) == 1, result.stdout
    for fragment in fragments:
        assert fragment in errors[0], result.stdout


def test_missing_rank_file_is_one_line(data, two_rank_run, tmp_path):
    snap = str(tmp_path / 'snapshot_iter_2')
    shutil.copytree(os.path.join(two_rank_run, 'snapshot_iter_2'), snap)
    os.remove(os.path.join(snap, 'rank1.npz'))
    for n in (2, 3):
        one_error_line(run_script(n, base_args(
            data, str(tmp_path / 'out'), iterations=3, resume=snap)),
            'is incomplete: rank1.npz is missing', 'written by 2 processes')


def test_files_of_different_iterations_are_one_line(data, two_rank_run,
                                                    tmp_path):
    snap = str(tmp_path / 'snapshot_iter_2')
    shutil.copytree(os.path.join(two_rank_run, 'snapshot_iter_2'), snap)
    shutil.copy(os.path.join(two_rank_run, 'snapshot_iter_1', 'rank1.npz'),
                os.path.join(snap, 'rank1.npz'))
    one_error_line(run_script(2, base_args(
        data, str(tmp_path / 'out'), iterations=3, resume=snap)),
        'shared.npz is from iteration 2, rank1.npz from iteration 1')


def test_one_file_resume_is_one_line_saying_how(data, two_rank_run,
                                                 tmp_path):
    """The original's --resume: one trainer snapshot file (ChainerMN's
    rank-0 snapshot), given to both ranks: refused in one line naming the
    snapshot directories and --initmodel (it read 'no such directory')."""
    path = str(tmp_path / 'snapshot_iter_2')
    shutil.copy(os.path.join(two_rank_run, 'snapshot_iter_2', 'shared.npz'),
                path)
    one_error_line(run_script(2, base_args(
        data, str(tmp_path / 'out'), iterations=3, resume=path)),
        'is one file, not a sharded snapshot directory',
        'resume from a snapshot_iter_<N> directory', '--initmodel')


@pytest.mark.parametrize('n', [0, 3])
def test_earlier_format_on_another_count_is_one_line(data, tmp_path, n):
    for r in (0, 1):   # names are enough: counted before anything is read
        (tmp_path / 'snapshot_iter_1_rank{}'.format(r)).write_bytes(b'')
    one_error_line(run_script(n, base_args(
        data, str(tmp_path / 'out'), iterations=2,
        resume=str(tmp_path / 'snapshot_iter_1_rank0'))),
        'written by 2 processes', 'not on {}'.format(n or 1))


LEGACY = '''
import sys
import train_imagenet
from chainer import serializers
trainer = train_imagenet.main(sys.argv[2:])
serializers.save_npz(sys.argv[1], trainer)   # what the earlier format held
'''


def test_earlier_format_resumes_on_as_many(data, tmp_path):
    a = str(tmp_path / 'a')
    legacy = os.path.join(a, 'snapshot_iter_1_rank0')
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=ROOT)
    made = subprocess.run(
        [sys.executable, '-W', 'ignore', '-c', LEGACY, legacy] +
        [str(x) for x in base_args(data, a, iterations=1)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, env=env, universal_newlines=True,
        timeout=240)
    assert made.returncode == 0, made.stdout
    b = str(tmp_path / 'b')
    result = run_script(0, base_args(data, b, iterations=2, resume=legacy))
    assert result.returncode == 0, result.stdout
    assert [e['iteration'] for e in log_of(b)] == [1, 2]
    assert os.path.isfile(os.path.join(b, 'snapshot_iter_2', 'shared.npz'))
