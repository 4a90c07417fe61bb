"""chainerkfac.training.allocator: glibc's mallopt from inside the process.

Each measurement runs in a fresh interpreter (the setting cannot be undone): a
64 MiB array (above glibc's largest dynamic mmap threshold, 32 MiB) is
allocated, filled and freed ten times, and the minor page faults per round are
counted. By default every round maps and faults the array in again; configured,
the freed heap memory is reused and nothing faults -- the same as with the
environment variables
``MALLOC_MMAP_MAX_``/``MALLOC_TRIM_THRESHOLD_``/``MALLOC_TOP_PAD_``.
"""
import os
import re
import subprocess
import sys
import textwrap

import pytest

import chainerkfac  # noqa: F401  (before chainer)
from chainerkfac.training import allocator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLIBC = allocator.glibc_version() is not None

PROBE = textwrap.dedent('''
    import resource, sys
    import chainerkfac
    from chainerkfac.training import allocator
    import numpy
    if sys.argv[1] == 'configure':
        print('configured', allocator.configure_allocator(),
              allocator.configure_allocator(), allocator.is_configured())
    a = numpy.ones(8 << 20); del a
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        a = numpy.ones(8 << 20); del a
    print('faults',
          (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / 10.)
''')


def _probe(mode, **env_vars):
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop(allocator.OPT_OUT, None)
    for name in ('MALLOC_MMAP_MAX_', 'MALLOC_TRIM_THRESHOLD_',
                 'MALLOC_TOP_PAD_'):
        env.pop(name, None)
    env.update(env_vars)
    proc = subprocess.run([sys.executable, '-c', PROBE, mode], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _faults(out):
    return float(re.search(r'faults (\S+)', out).group(1))


@pytest.mark.skipif(not GLIBC, reason='glibc only')
def test_configured_like_the_environment_variables():
    default = _faults(_probe('default'))
    out = _probe('configure')
    assert 'configured True True True' in out
    configured = _faults(out)
    env = _faults(_probe('default', MALLOC_MMAP_MAX_='0',
                         MALLOC_TRIM_THRESHOLD_=str(16 << 30),
                         MALLOC_TOP_PAD_=str(1 << 30)))
    assert default >= 10          # re-mapped and faulted in every round
    assert configured <= 1 and env <= 1


@pytest.mark.skipif(not GLIBC, reason='glibc only')
def test_opt_out_leaves_the_defaults():
    out = _probe('configure', **{allocator.OPT_OUT: '1'})
    assert 'configured False False False' in out
    assert _faults(out) >= 10


def test_no_op_without_glibc(monkeypatch):
    monkeypatch.setattr(allocator, '_configured', None)
    monkeypatch.setattr(allocator.sys, 'platform', 'darwin')
    assert allocator.glibc_version() is None
    assert allocator.configure_allocator() is False
    assert not allocator.is_configured()


@pytest.mark.parametrize('path', [
    'train_imagenet.py', 'examples/train_fashion_mnist.py',
    'benchmarks/step_time.py', 'benchmarks/stale_accuracy.py',
    'benchmarks/cpu_large_batch.py'])
def test_entry_points_configure_it_in_main(path):
    with open(os.path.join(ROOT, path)) as f:
        source = f.read()
    main = source[source.index('\ndef main('):]
    assert 'allocator.configure_allocator()' in main


def _benchmark():
    sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
    try:
        import cpu_large_batch
    finally:
        sys.path.pop(0)
    return cpu_large_batch


def test_cpu_large_batch_switches_the_bn_patch_and_reports():
    bench = _benchmark()
    from chainerkfac import _compat
    from chainer.functions.normalization import batch_normalization as bn
    impl = bn.GeneralBatchNormalizationImpl
    own = impl.get_mean_and_var
    assert not _compat.float64_bn_statistics_enabled()
    with bench.chainer_bn_patch(True):
        assert impl.get_mean_and_var.__wrapped__ is own
        with bench.chainer_bn_patch(False):
            assert impl.get_mean_and_var is own
        assert impl.get_mean_and_var.__wrapped__ is own
    assert impl.get_mean_and_var is own

    def row(method, bn_patch, seconds, inversion=0.0):
        stages = dict.fromkeys(bench.STAGES, 0.0)
        stages['inversion'] = inversion
        return dict(method=method, bn=bn_patch, seconds=seconds, stages=stages,
                    steps=3, faults=0.0, system=0.0)

    results = [
        dict(model='resnet20', batchsize=128, allocator=False, max_rss_mb=1,
             rows=[row('SGD', False, 2.0), row('K-FAC', False, 4.0, 0.2)]),
        dict(model='resnet20', batchsize=128, allocator=True, max_rss_mb=1,
             rows=[row('SGD', False, 1.5), row('K-FAC', False, 3.0, 0.1),
                   row('SGD', True, 1.5), row('K-FAC', True, 3.0, 0.1)]),
        dict(model='cnn', batchsize=4096, allocator=False, max_rss_mb=1,
             rows=[row('SGD', False, 10.0), row('K-FAC', False, 20.0)]),
        dict(model='cnn', batchsize=4096, allocator=True, max_rss_mb=1,
             rows=[row('SGD', False, 5.0), row('K-FAC', False, 16.0),
                   row('SGD', True, 5.0), row('K-FAC', True, 16.0)])]
    text = '\n'.join(bench.report(results))
    assert ('DemoCNN batch 4096 SGD: 10.00 -> 5.00 s/step, 2.00x (target >= '
            '1.3x: met)') in text
    assert ('K-FAC: 20.00 -> 16.00 s/step, 1.25x (target >= 1.3x: NOT met)'
            in text)
    assert ('0.700 s/step before LAPACK (README) -> 0.100 now: 7.0x (target '
            '>= 3x: met); default allocator today 0.200 -> 0.100: 2.00x'
            in text)
