"""benchmarks/curvature_options.py end to end on a tiny run."""
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
