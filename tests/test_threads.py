"""chainerkfac.threads: each process's share of the node's cores for its BLAS
pools, unless the user chose; one log line; the communicator, the examples'
setup and two real ranks under mpiexec."""
import argparse
import glob
import json
import logging
import os
import re
import sys

import pytest
import threadpoolctl

from chainerkfac import threads
from mpi_helpers import HERE
from mpi_helpers import MPIEXEC
from mpi_helpers import run_command


def blas_threads():
    """Every loaded BLAS pool's thread count, by library file."""
    return {i['filepath']: i['num_threads']
            for i in threadpoolctl.threadpool_info()
            if i['user_api'] == 'blas'}


@pytest.fixture
def clean(monkeypatch):
    """No user variable, no launcher, no earlier setting; the pools' thread
    counts and the module's logger restored afterwards."""
    for name in (threads.USER_VARIABLES + threads.LOCAL_SIZE_VARIABLES
                 + threads.RANK_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(threads, '_setting', None)
    monkeypatch.setattr(threads, '_shown', False)
    monkeypatch.setattr(threads, '_rank_zero', True)
    logger = threads.logger
    saved_logger = (list(logger.handlers), logger.level, logger.propagate)
    controller = threadpoolctl.ThreadpoolController()
    saved = [(lib, lib.num_threads) for lib in controller.lib_controllers]
    yield monkeypatch
    for lib, n in saved:
        lib.set_num_threads(n)
    logger.handlers[:] = saved_logger[0]
    logger.setLevel(saved_logger[1])
    logger.propagate = saved_logger[2]


def pools():
    return len(blas_threads())


@pytest.mark.parametrize('cores,local,n_pools,expected', [
    (2, 1, 2, 1), (2, 2, 2, 1), (2, 1, 1, 2), (2, 2, 1, 1),
    (8, 1, 2, 4), (8, 2, 2, 2), (8, 4, 2, 1), (8, 8, 2, 1),
    (8, 1, 1, 8), (8, 2, 1, 4), (8, 4, 1, 2), (16, 1, 2, 8),
    (3, 1, 2, 2), (1, 4, 2, 1), (2, 3, 1, 1),
])
def test_default_threads(cores, local, n_pools, expected):
    assert threads.default_threads(cores, local, n_pools) == expected


@pytest.mark.parametrize('args', [(0,), (True,), (2.0,), (4, 0), (4, 1, 0)])
def test_default_threads_rejects_non_counts(args):
    with pytest.raises(ValueError, match=r'^chainerkfac: default_threads: '
                       r'\w+ must be a positive int'):
        threads.default_threads(*args)


def test_user_setting():
    assert threads.user_setting({}) is None
    assert threads.user_setting({'OMP_NUM_THREADS': '',
                                 'MKL_NUM_THREADS': ' '}) is None
    assert threads.user_setting(
        {'OMP_NUM_THREADS': '3'}) == 'OMP_NUM_THREADS=3'
    assert threads.user_setting({'OMP_NUM_THREADS': '3',
                                 'OPENBLAS_NUM_THREADS': '1'}
                                ) == 'OPENBLAS_NUM_THREADS=1'
    assert threads.user_setting(
        {'MKL_NUM_THREADS': '2'}) == 'MKL_NUM_THREADS=2'


def test_auto_sets_every_pool_to_the_share(clean):
    clean.setattr(threads, '_affinity', lambda: {0, 1, 2, 3})
    clean.setattr(threads, 'cgroup_cpu_limit', lambda: None)
    setting = threads.configure_threads()
    expected = 3 // pools() + 1    # (share 4 - 1) // pools + 1
    assert setting.threads == expected
    assert (setting.source, setting.local_ranks, setting.cores,
            setting.pools) == ('auto', 1, 4, pools())
    assert set(blas_threads().values()) == {expected}


def test_auto_divides_by_the_launchers_local_ranks(clean):
    clean.setattr(threads, '_affinity', lambda: {0, 1, 2, 3, 4, 5, 6, 7})
    clean.setattr(threads, 'cgroup_cpu_limit', lambda: None)
    clean.setenv('MPI_LOCALNRANKS', '4')   # MPICH's Hydra: 4 processes here
    setting = threads.configure_threads()
    assert (setting.local_ranks, setting.cores) == (4, 8)
    assert set(blas_threads().values()) == {(2 - 1) // pools() + 1}


def test_cores_are_capped_by_the_cgroup_quota(clean):
    clean.setattr(threads, '_affinity', lambda: {0, 1, 2, 3})
    clean.setattr(threads, 'cgroup_cpu_limit', lambda: 2)
    assert threads.configure_threads().cores == 2


@pytest.mark.parametrize('name', ['OPENBLAS_NUM_THREADS', 'OMP_NUM_THREADS',
                                  'MKL_NUM_THREADS'])
def test_a_users_variable_is_respected(clean, name):
    before = blas_threads()
    clean.setenv(name, '3')

    def unavailable():
        raise AssertionError('threadpoolctl used although the user chose')
    clean.setattr(threads, '_threadpoolctl', unavailable)
    setting = threads.configure_threads()
    assert (setting.source, setting.threads) == ('environment', None)
    assert setting.message == (
        'chainerkfac: BLAS threads left as set by {}=3'.format(name))
    assert blas_threads() == before


def test_an_explicit_count_wins_over_the_environment(clean):
    clean.setenv('OPENBLAS_NUM_THREADS', '1')
    setting = threads.configure_threads(3)
    assert (setting.source, setting.threads) == ('argument', 3)
    assert set(blas_threads().values()) == {3}


def test_none_leaves_the_threads_alone(clean):
    threadpoolctl.threadpool_limits(limits=2)
    setting = threads.configure_threads(None)
    assert (setting.source, setting.threads) == ('untouched', None)
    assert set(blas_threads().values()) == {2}
    assert threads._setting is None   # a later 'auto' still decides


@pytest.mark.parametrize('bad', [0, -1, 'four', True, 1.5, 'AUTO'])
def test_bad_counts_are_refused_in_one_line(clean, bad):
    with pytest.raises(ValueError, match=r"^chainerkfac: BLAS threads must be "
                       r"'auto', None or a positive int, not "):
        threads.configure_threads(bad)


def test_one_line_in_the_log_once(clean, caplog):
    clean.setattr(threads, '_affinity', lambda: {0, 1})
    clean.setattr(threads, 'cgroup_cpu_limit', lambda: None)
    with caplog.at_level(logging.DEBUG, logger='chainerkfac.threads'):
        first = threads.configure_threads()
        again = threads.configure_threads()
    assert again is first
    records = [r for r in caplog.records if r.name == 'chainerkfac.threads']
    assert len(records) == 1
    assert records[0].levelno == logging.INFO
    assert '\n' not in records[0].getMessage()
    assert records[0].getMessage() == first.message
    assert first.message.startswith(
        'chainerkfac: BLAS threads set to {} per library '
        "({} BLAS librar".format(first.threads, pools()))
    assert "on this process's 2 cores" in first.message


def test_other_ranks_log_at_debug(clean, caplog):
    clean.setenv('PMI_RANK', '1')
    clean.setenv('OMP_NUM_THREADS', '1')
    with caplog.at_level(logging.DEBUG, logger='chainerkfac.threads'):
        threads.configure_threads()
    (record,) = [r for r in caplog.records if r.name == 'chainerkfac.threads']
    assert record.levelno == logging.DEBUG


def test_missing_threadpoolctl_is_one_line(clean):
    clean.setitem(sys.modules, 'threadpoolctl', None)
    with pytest.raises(ImportError, match=r'^chainerkfac: setting the BLAS '
                       r'threads needs threadpoolctl \(pip install'):
        threads.configure_threads()


def test_log_to_stderr_shows_the_line_once(clean, capsys):
    clean.setenv('OMP_NUM_THREADS', '1')
    threads.configure_threads()          # before: written when it is called
    assert capsys.readouterr().err == ''
    handler = threads.log_to_stderr()
    assert threads.log_to_stderr() is handler
    threads.configure_threads()          # the same setting: nothing more
    assert capsys.readouterr().err == (
        'chainerkfac: BLAS threads left as set by OMP_NUM_THREADS=1\n')
    threads.configure_threads(2)         # a new setting: its line, once
    assert capsys.readouterr().err == (
        'chainerkfac: BLAS threads set to 2 (blas_threads=2)\n')
    threads.log_to_stderr()
    assert capsys.readouterr().err == ''


def test_log_to_stderr_is_silent_on_other_ranks(clean, capsys):
    clean.setenv('OMP_NUM_THREADS', '1')
    clean.setenv('PMI_RANK', '1')
    threads.configure_threads()
    threads.log_to_stderr()
    assert capsys.readouterr().err == ''


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize('lines,files,expected', [
    ('0::/job\n', {'job/cpu.max': '200000 100000\n'}, 2),
    ('0::/job\n', {'job/cpu.max': '150000 100000\n'}, 2),   # rounded up
    ('0::/job\n', {'job/cpu.max': 'max 100000\n'}, None),
    ('0::/\n', {'cpu.max': '50000 100000\n'}, 1),
    ('4:cpu,cpuacct:/job\n',
     {'cpu,cpuacct/job/cpu.cfs_quota_us': '300000\n',
      'cpu,cpuacct/job/cpu.cfs_period_us': '100000\n'}, 3),
    ('1:cpu:/\n', {'cpu/cpu.cfs_quota_us': '-1\n',
                   'cpu/cpu.cfs_period_us': '100000\n'}, None),
    ('0::/job\n', {}, None),
    ('0::/job\n', {'job/cpu.max': 'garbage\n'}, None),
    ('garbage\n', {}, None),
])
def test_cgroup_cpu_limit(tmp_path, lines, files, expected):
    write(tmp_path / 'proc_cgroup', lines)
    for name, text in files.items():
        write(tmp_path / 'root' / name, text)
    assert threads.cgroup_cpu_limit(str(tmp_path / 'proc_cgroup'),
                                    str(tmp_path / 'root')) == expected
    assert threads.cgroup_cpu_limit(str(tmp_path / 'missing')) is None


def test_create_communicator_refuses_a_bad_count():
    import chainerkfac
    with pytest.raises(ValueError, match='BLAS threads must be'):
        chainerkfac.create_communicator('mpi', blas_threads=0)


def test_examples_setup_configures_a_single_process(clean):
    from chainerkfac.training import example_support
    clean.setattr(threads, '_affinity', lambda: {0, 1, 2, 3})
    clean.setattr(threads, 'cgroup_cpu_limit', lambda: None)
    args = argparse.Namespace(distributed=False, no_cuda=True,
                              communicator='auto')
    assert example_support.setup_processes('prog', args) == (None, None)
    assert threads._setting.source == 'auto'
    assert set(blas_threads().values()) == {3 // pools() + 1}
    assert any(getattr(h, '_chainerkfac_stderr', False)
               for h in threads.logger.handlers)


def run_ranks(tmp_path, env, *args):
    """blas_threads.py on 2 ranks; each rank's JSON record, by rank."""
    cmd = [MPIEXEC, '-n', '2', sys.executable, '-W', 'ignore',
           os.path.join(HERE, 'mpi_scripts', 'blas_threads.py'),
           str(tmp_path)] + [str(a) for a in args]
    result = run_command(cmd, 120, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(HERE), HERE]), **env)
    assert result.returncode == 0, result.stdout
    files = sorted(glob.glob(str(tmp_path / 'rank*.json')))
    records = [json.load(open(f)) for f in files]
    assert [r['rank'] for r in records] == [0, 1], result.stdout
    return records


# run_command sets OMP_NUM_THREADS=1; empty values count as unset (for
# OpenBLAS too)
NO_USER_VARIABLES = {name: '' for name in threads.USER_VARIABLES}


def test_two_ranks_get_their_share(tmp_path):
    records = run_ranks(tmp_path, NO_USER_VARIABLES)
    for r in records:
        cores = r['cores']
        n_pools = len(r['pools'])
        expected = (max(1, cores // 2) - 1) // n_pools + 1
        assert [p['num_threads'] for p in r['pools']] == [expected] * n_pools
        assert (r['setting']['source'],
                r['setting']['local_ranks']) == ('auto', 2)
    # one line in the job's log: rank 0 at INFO, rank 1 at DEBUG, each once
    assert [level for level, _ in records[0]['records']] == ['INFO']
    assert [level for level, _ in records[1]['records']] == ['DEBUG']
    assert 'each of the 2 processes' in records[0]['records'][0][1]


def test_two_ranks_keep_the_users_variable(tmp_path):
    env = dict(NO_USER_VARIABLES, OPENBLAS_NUM_THREADS='2')
    for r in run_ranks(tmp_path, env):
        assert {p['num_threads'] for p in r['pools']} == {2}
        assert r['setting']['source'] == 'environment'
        assert r['records'][0][1] == ('chainerkfac: BLAS threads left as set '
                                      'by OPENBLAS_NUM_THREADS=2')


def test_two_ranks_take_an_explicit_count(tmp_path):
    for r in run_ranks(tmp_path, {}, 3):    # OMP_NUM_THREADS=1 is set
        assert {p['num_threads'] for p in r['pools']} == {3}
        assert r['setting']['source'] == 'argument'


def test_threads_benchmark_runs_every_configuration(tmp_path):
    """benchmarks/threads.py end to end on a few steps: every configuration
    runs and reports its pools' threads and a time (no time is judged)."""
    import importlib.util
    script = os.path.join(os.path.dirname(HERE), 'benchmarks', 'threads.py')
    spec = importlib.util.spec_from_file_location('threads_benchmark', script)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    out = tmp_path / 'report.md'
    result = run_command([sys.executable, '-W', 'ignore', script, '--steps',
                          '3', '--warmup', '1', '--repeats', '1', '--out',
                          str(out), '--timeout', '120'], 300)
    assert result.returncode == 0, result.stdout
    report = out.read_text()
    rows = [line.split(' | ') for line in report.splitlines()
            if line.startswith('| ')][1:]
    expected = benchmark.configurations(len(os.sched_getaffinity(0)))
    assert [cells[0][2:] for cells in rows] == [label
                                                for label, _, _ in expected]
    for cells, (_, _, count) in zip(rows, expected):
        if count != 'auto':
            assert cells[1] == str(count)     # every pool ran with that count
        assert re.fullmatch(r'\d+\.\d{4}', cells[3]), cells   # a median s/step
    assert '- 2 ranks: default / configured = ' in report
    assert '- 1 process: configured / better of 1 and 2 threads' in report


def test_benchmark_configurations():
    import importlib.util
    script = os.path.join(os.path.dirname(HERE), 'benchmarks', 'threads.py')
    spec = importlib.util.spec_from_file_location('threads_benchmark', script)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    two = [(ranks, threads)
           for _, ranks, threads in benchmark.configurations(2)]
    assert two == [(1, 2), (1, 1), (1, 'auto'), (2, 2), (2, 'auto')]
    four = [(ranks, threads)
            for _, ranks, threads in benchmark.configurations(4)]
    assert four == [(1, 4), (1, 1), (1, 2), (1, 'auto'), (2, 4), (2, 'auto')]
