"""benchmarks/convergence.py and benchmarks/scaling.py end to end, tiny (issue 12)."""
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
        '--micro-batch', '16']


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
    for name in ('summary.json', 'summary.csv', 'curves.csv',
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
    assert len(runs) == 6 and sorted(r['batch'] for r in runs) == [32] * 3 + [64] * 3


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
