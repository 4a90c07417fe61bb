"""benchmarks/curvature_options.py end to end on a tiny run."""
import json
import os
import sys

import chainer
import chainer.functions as F
import chainer.links as L

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_cnn():
    return chainer.Sequential(L.Convolution2D(1, 4, 3, stride=2), F.relu,
                              L.BatchNormalization(4),
                              L.Linear(4 * 13 * 13, 10))


def test_every_option_is_timed_against_the_default(capsys, monkeypatch):
    sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
    try:
        import curvature_options
    finally:
        sys.path.pop(0)
    settings = dict(lr=0.05, momentum=0.9, damping=1e-2, cov_ema_decay=0.5,
                    bn_fisher='unit')
    monkeypatch.setitem(curvature_options.step_time.MODELS, 'tiny',
                        (tiny_cnn, settings, 0.05))
    curvature_options.main(['--model', 'tiny', '--batchsize', '8',
                            '--steps', '3', '--skip', '1'])
    lines = capsys.readouterr().out.splitlines()
    rows = {line[:31].strip(): line[31:].split() for line in lines[2:-1]}
    names = ['SGD'] + [name for name, _ in curvature_options.OPTIONS]
    assert sorted(rows) == sorted(names)
    for name in names:
        seconds, vs_kfac, vs_sgd = (float(v) for v in rows[name][:3])
        assert seconds > 0 and vs_sgd > 0
        assert name == 'SGD' or vs_kfac > 0    # SGD's may round to 0.00
    assert float(rows[names[1]][1]) == 1.0        # the default is the base


def test_option_study_runs_resumes_and_reports(tmp_path, capsys):
    """benchmarks/option_study.py on a tiny slice: each variant's KFAC
    keywords reach the run (their own key), a rerun skips the records."""
    sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
    try:
        import option_study
    finally:
        sys.path.pop(0)
    argv = ['--batch-sizes', '64', '--epochs', '0.25', '--train-limit',
            '512', '--test-limit', '100', '--evals', '1', '--out',
            str(tmp_path), '--variant', 'default={}', '--variant',
            'kl={"kl_clip": 1e-6}']
    option_study.main(argv)
    lines = (tmp_path / 'runs.jsonl').read_text().splitlines()
    assert len(lines) == 2
    finals = {json.loads(line)['variant']: json.loads(line)['final_acc']
              for line in lines}
    assert finals['kl'] != finals['default']   # the keyword reached KFAC
    report = (tmp_path / 'report.md').read_text()
    assert '| 64 | default |' in report and '| 64 | kl |' in report
    option_study.main(argv)
    assert '2 runs, 2 done before' in capsys.readouterr().out
    assert len((tmp_path / 'runs.jsonl').read_text().splitlines()) == 2
