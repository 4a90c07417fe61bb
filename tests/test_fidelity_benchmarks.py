"""benchmarks/convergence.py and benchmarks/scaling.py end to end, tiny (issue
12)."""
import json
import os
import sys

import chainerkfac  # NOQA: F401  (before chainer)
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, 'benchmarks')
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)

import convergence  # NOQA: E402
import scaling  # NOQA: E402

TINY = ['--batch-sizes', '32', '--train-limit', '64', '--test-limit', '32',
        '--epochs', '1', '--max-steps', '1', '--evals', '1', '--sgd-lrs',
        '0.05', '--kfac-lrs', '0.05', '--kfac-dampings', '0.01',
        '--micro-batch', '16', '--stale-batch-sizes', '32,64', '--workers',
        '1', '--warmup-epochs', '1']


def _lines(path):
    with open(path) as f:
        return [json.loads(ln) for ln in f if ln.strip()]


def test_convergence_end_to_end_and_resumes(tmp_path, capsys):
    out = str(tmp_path / 'conv')
    summary = convergence.main(TINY + ['--out', out])
    runs = _lines(os.path.join(out, 'runs.jsonl'))
    assert sorted(r['method'] for r in runs) == ['kfac', 'kfac_stale', 'sgd']
    for r in runs:
        assert r['steps'] == 1 and r['acc_iters'] == 2   # 32 = 2 x 16
        assert len(r['curve']) == 1 and 0 <= r['final_acc'] <= 1
    stale = [r for r in runs if r['method'] == 'kfac_stale'][0]
    assert 0 < stale['refresh_fraction'] <= 1
    with open(os.path.join(out, 'report.md')) as f:
        report = f.read()
    assert report.count('| 32 |') == 3 and 'K-FAC stale' in report
    assert 'not measured' in report
    for name in ('summary.json', 'summary.csv', 'curves.csv', 'report.md',
                 'acc_vs_steps.png', 'acc_vs_wall.png', 'final_vs_batch.png',
                 'stale.png'):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    assert {t['status'] for t in summary['targets'][:3]} == {'not measured'}
    capsys.readouterr()
    # a second call skips every finished run and trains nothing
    convergence.main(TINY + ['--out', out])
    printed = capsys.readouterr().out
    assert printed.count('done before, skipped') == 3
    assert len(_lines(os.path.join(out, 'runs.jsonl'))) == 3
    # one more batch size: only its runs are trained
    convergence.main(TINY[:1] + ['32,64'] + TINY[2:] + ['--out', out,
                                                        '--no-plots'])
    runs = _lines(os.path.join(out, 'runs.jsonl'))
    assert len(runs) == 6
    assert sorted(r['batch'] for r in runs) == [32] * 3 + [64] * 3


def test_lr_schedule():
    lrs = [convergence.lr_at(s, 10, 1.0, 2) for s in range(10)]
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    assert lrs[2] == pytest.approx(1.0) and lrs[-1] < 0.05
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))


def test_scaling_end_to_end(tmp_path):
    out = str(tmp_path / 'scaling')
    res = scaling.main(['--procs', '1,2', '--steps', '1', '--batch', '8',
                        '--ranks', '8,128', '--out', out, '--timeout', '120'])
    assert [m['procs'] for m in res['measured']] == [1, 2]
    for m in res['measured']:
        assert m['stages']['total'] > 0
    assert res['measured'][1]['stages']['communication'] > 0
    rows = res['model']
    assert [r['procs'] for r in rows] == [8, 128]
    # ResNet-50 has 107 blocks: beyond that some ranks own none
    assert rows[0]['owners_with_blocks'] == 8
    assert rows[1]['owners_with_blocks'] == 107
    assert rows[1]['stages']['inversion'] <= rows[0]['stages']['inversion']
    for name in ('scaling.json', 'measured.csv', 'model.csv',
                 'scaling_model.png'):
        assert os.path.getsize(os.path.join(out, name)) > 0, name


def test_convergence_parallel_workers_and_stale_waits_for_kfac(tmp_path,
                                                               capsys):
    """``--workers 2``: runs train in two spawned processes; the stale run
    starts only after its batch's K-FAC run is recorded, at that run's
    configuration."""
    out = str(tmp_path / 'par')
    args = TINY[:-6] + ['--workers', '2', '--warmup-epochs', '1',
                        '--stale-batch-sizes', '32', '--kfac-dampings',
                        '0.01,0.001', '--out', out, '--no-plots']
    convergence.main(args)
    printed = capsys.readouterr().out
    runs = _lines(os.path.join(out, 'runs.jsonl'))
    assert sorted(r['method'] for r in runs) == ['kfac', 'kfac', 'kfac_stale',
                                                 'sgd']
    order = [r['method'] for r in runs]
    assert order.index('kfac_stale') > max(      # after both K-FAC runs
        i for i, m in enumerate(order) if m == 'kfac')
    best = convergence.best(runs, 'kfac', 32)
    stale = runs[order.index('kfac_stale')]
    assert (stale['lr_ref'], stale['damping']) == (best['lr_ref'],
                                                   best['damping'])
    assert printed.count('] finished ') == 4


def test_per_batch_learning_rates():
    grid = convergence.per_batch_floats('512:0.05;8192:0.003125,0.00625',
                                        [512, 8192])
    assert grid == {512: [0.05], 8192: [0.003125, 0.00625]}
    assert convergence.per_batch_floats('0.1,0.2', [1, 2]) == {
        1: [0.1, 0.2], 2: [0.1, 0.2]}
    with pytest.raises(SystemExit, match='batch size.*2048'):
        convergence.per_batch_floats('512:0.05', [512, 2048])
    with pytest.raises(SystemExit, match='cannot read'):
        convergence.per_batch_floats('512:x', [512])


def test_warmup_in_epochs_is_the_same_number_of_images_at_every_batch():
    args = convergence.parse(['--epochs', '6', '--warmup-epochs', '1'])
    plan = convergence.plan_runs(args, [512, 8192])
    spec = [s for s in plan if isinstance(s, dict)][0]
    assert spec['warmup_epochs'] == 1 and spec['warmup_frac'] is None
    assert convergence.run_key(spec).endswith('|warmup_epochs=1.0')
    # the planned order: largest batch first, K-FAC before SGD, stale last
    methods = [(s[0], s[1]) if isinstance(s, tuple) else
               (s['method'], s['batch']) for s in plan]
    assert methods[0] == ('kfac', 8192) and methods[-1][0] == 'stale'
    # a warm-up fraction given on the command line replaces the preset's
    # epochs, so the committed 5-epoch run's command still finds its record
    args = convergence.parse(['--warmup-frac', '0.2'])
    assert args.warmup_epochs is None and args.warmup_frac == 0.2
    assert convergence.parse([]).warmup_epochs == 1.0
    assert convergence.parse(['--quick']).warmup_frac == 0.05


def _record(method, batch, steps, s90, w90, final, train_s, s88=None):
    return dict(method=method, batch=batch, steps=steps, steps_to_90=s90,
                wall_to_90=w90, steps_to_88=s88, final_acc=final,
                train_seconds=train_s, lr_ref=0.1, damping=0.01,
                refresh_fraction=None)


@pytest.mark.parametrize('sgd_s90,sgd_steps,kfac_s90,kfac_w90,expected', [
    (200, 300, 30, 100.0, 'met'),             # 30 <= 0.15 x 200, faster
    (100, 300, 30, 100.0, 'missed'),          # 30 > 15
    (None, 300, 30, 100.0, 'met'),            # SGD's steps to 90 exceed 300
    (None, 44, 30, 100.0, 'undetermined'),    # only known to exceed 44
    (None, 300, 30, 5000.0, 'undetermined'),  # slower than SGD's whole run
    (200, 300, None, None, 'missed'),         # K-FAC never reached 90%
])
def test_step_target_statuses(sgd_s90, sgd_steps, kfac_s90, kfac_w90,
                              expected):
    sgd = _record('sgd', 8192, sgd_steps, sgd_s90,
                  None if sgd_s90 is None else 900.0, 0.9, 1000.0)
    kfac = _record('kfac', 8192, 44, kfac_s90, kfac_w90, 0.91, 1500.0)
    status = convergence.targets([sgd, kfac], [8192])[0]['status']
    assert status.split()[0].rstrip(':') == expected, status
