#!/usr/bin/env python
"""K-FAC against momentum SGD on Fashion-MNIST across mini-batch sizes (issue
12).

The paper's claims at a scale one CPU can run: at large mini-batches K-FAC
needs far fewer steps than first-order methods, and keeps its accuracy as the
mini-batch grows; SP-NGD's stale statistics keep the accuracy while refreshing
a fraction of them.

Model: the issue's CNN (conv3x3 1->32 + BN + ReLU + 2x2 max-pool, conv3x3
32->64 + BN + ReLU + 2x2 max-pool, FC 3136->128 + ReLU, FC 128->10). It is not
among ``models/``, so it is defined here (``IssueCNN``), built from Chainer
links only.

Protocol, the same for every method and batch size:

- the same epoch budget (``--epochs``) at every batch size; steps =
  round(epochs x N / B);
- learning rate: linear warm-up over ``--warmup-epochs`` epochs (at least 2
  steps; the quick study: ``--warmup-frac`` of the steps), then cosine decay to
  0; momentum 0.9; weight decay 5e-4 (``chainer.optimizer_hooks.WeightDecay``;
  for K-FAC it is added to the gradient before preconditioning, as the package
  documents);
- momentum SGD: linear LR scaling, ``lr = lr_ref x B / 512``, ``lr_ref`` swept
  over ``--sgd-lrs`` (one list for every batch size, or one per batch size);
- K-FAC: the package's ``chainerkfac.KFAC`` (``bn_fisher='unit'``,
  ``cov_ema_decay`` ``--cov-ema-decay``), lr x damping swept over
  ``--kfac-lrs`` x ``--kfac-dampings``, no LR scaling with the batch;
  ``stale=False`` (every statistic every step, CVPR);
- stale statistics: one more K-FAC run per batch size with ``stale=True`` (the
  package's default rule) at the best every-step configuration of that batch
  size;
- batches larger than ``--micro-batch`` are split into ``acc_iters``
  micro-batches (``KFAC(acc_iters=...)``; SGD sums the micro-batch gradients):
  the step is the same except that BN normalises each micro-batch with its own
  statistics;
- fixed seeds: the same initial weights and the same sample order for every run
  of a seed; test accuracy on ``--test-limit`` test images about ``--evals``
  times a run; wall time is the training time only (evaluation excluded), on a
  shared machine;
- ``--workers N`` runs N runs at once, each in a spawned process with one BLAS
  thread (a Chainer CPU step keeps about one core busy: one BLAS thread is as
  fast as two here), so wall times are per run, measured beside another run.

"Best" of a sweep: fewest steps to 90% test accuracy; if no run reached it,
fewest to 88%; then the highest final accuracy.

Every finished run is appended to ``OUT/runs.jsonl`` (and its curve to
``OUT/curves.csv``) the moment it finishes; a rerun with the same flags skips
the runs found there (an interrupted run restarts from its first step). After
every run the summary (``summary.json``, ``summary.csv``, ``report.md``) and
the plots (``acc_vs_steps.png``, ``acc_vs_wall.png``, ``final_vs_batch.png``,
``stale.png``) are rewritten.

    .venv/bin/python benchmarks/convergence.py --quick  # < 15 min, 2 cores
    .venv/bin/python benchmarks/convergence.py          # the study (~2 h)

The study (no flags): batch sizes 512, 2048, 8192, 32768; all 60,000 training
and 10,000 test images; 6 epochs (703, 176, 44, 11 steps), a 1-epoch warm-up;
15 evaluations per run; SGD peak lr 0.05 at 512 and 0.1 at 2048 (linear scaling
of lr_ref 0.05 / 0.025), {0.025, 0.05, 0.1} at 8192 and {0.05, 0.1} at 32768
(linear scaling to 0.4 and beyond blew up here); K-FAC lr 0.1, damping 1e-2
(the configuration the issue reports for this package); stale runs at 512, 2048
and 8192 (at 32768 all 11 steps but one fall in the stale rule's 10 warm-up
steps); 2 workers. 14 runs, about two and a half hours on this machine's 2
cores.

``--quick``: batch sizes 512 and 2048 only, the first 8,192 training images and
the first 1,000 test images, 3 epochs (48 and 12 steps), SGD lr_ref {0.05,
0.1}, K-FAC (lr 0.1, damping 1e-2) only. Its accuracies are below the 88/90%
targets (1/7 of the data): it checks the pipeline and shows the trends, it does
not test the targets.
"""
import argparse
import concurrent.futures
import csv
import json
import math
import multiprocessing
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# chainerkfac before chainer: it makes Chainer 7.8.1 import on NumPy 2 (the
# CuPy 14 stack; chainerkfac/_compat.py)
import chainerkfac  # NOQA: E402
import chainer  # NOQA: E402
import chainer.functions as F  # NOQA: E402
import chainer.links as L  # NOQA: E402
import numpy  # NOQA: E402
from chainer.optimizer_hooks import WeightDecay  # NOQA: E402
from chainerkfac.datasets import load_fashion_mnist  # NOQA: E402
from chainerkfac.training import allocator  # NOQA: E402

DEFAULT_OUT = os.path.join(ROOT, 'benchmarks', 'results', 'fidelity')
TARGETS = (0.88, 0.90)
#: a test accuracy at or below this is chance level (10 classes): diverged
CHANCE = 0.15
REF_BATCH = 512
METHOD_LABELS = {'sgd': 'momentum SGD', 'kfac': 'K-FAC every step',
                 'kfac_stale': 'K-FAC stale'}

# The study, sized to finish in about two hours on 2 shared CPU cores with
# ``--workers 2``: 6 epochs of all 60,000 images at every batch size, evaluated
# on all 10,000 test images. SGD's peak learning rates are 0.05 at 512 and 0.1
# at 2048 (linear scaling of lr_ref 0.05 and 0.025), {0.025, 0.05, 0.1} at 8192
# and {0.05, 0.1} at 32768: linear scaling beyond 2048 (peak 0.4 at 8192) blew
# up in the warm-up here (docs/fidelity.md), so the sweep is taken below it.
FULL = dict(batch_sizes='512,2048,8192,32768', epochs=6.0, train_limit=None,
            test_limit=None,
            sgd_lrs='512:0.05;2048:0.025;8192:0.0015625,0.003125,0.00625;'
                    '32768:0.00078125,0.0015625',
            kfac_lrs='0.1', kfac_dampings='0.01', evals=15, warmup_epochs=1.0,
            stale_batch_sizes='512,2048,8192', workers=2, name='convergence')
QUICK = dict(batch_sizes='512,2048', epochs=3.0, train_limit=8192,
             test_limit=1000, sgd_lrs='0.05,0.1', kfac_lrs='0.1',
             kfac_dampings='0.01', evals=8, warmup_epochs=None,
             stale_batch_sizes=None, workers=1, name='convergence_quick')


class IssueCNN(chainer.Chain):
    """Issue 12's CNN for 1x28x28 inputs (about 420k parameters, 6 Fisher
    blocks).

    conv3x3(1->32)+BN+ReLU+pool, conv3x3(32->64)+BN+ReLU+pool, FC128+ReLU,
    FC10.
    """

    def __init__(self, n_class=10):
        super(IssueCNN, self).__init__()
        with self.init_scope():
            self.conv1 = L.Convolution2D(1, 32, 3, pad=1, nobias=True)
            self.bn1 = L.BatchNormalization(32)
            self.conv2 = L.Convolution2D(32, 64, 3, pad=1, nobias=True)
            self.bn2 = L.BatchNormalization(64)
            self.fc1 = L.Linear(64 * 7 * 7, 128)
            self.fc2 = L.Linear(128, n_class)

    def forward(self, x):
        h = F.max_pooling_2d(F.relu(self.bn1(self.conv1(x))), 2)
        h = F.max_pooling_2d(F.relu(self.bn2(self.conv2(h))), 2)
        return self.fc2(F.relu(self.fc1(h)))


def lr_at(step, total, peak, warmup):
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at
    ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    span = max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / span))


def accuracy(model, x, t, batchsize=2000):
    correct = 0
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        for i in range(0, len(x), batchsize):
            y = model(x[i:i + batchsize]).array
            correct += int((y.argmax(axis=1) == t[i:i + batchsize]).sum())
    return correct / len(x)


def run_key(spec):
    key = '|'.join('{}={}'.format(k, spec[k]) for k in (
        'method', 'batch', 'lr_ref', 'damping', 'epochs', 'train_limit',
        'test_limit', 'seed', 'max_steps', 'micro_batch', 'cov_ema_decay',
        'warmup_frac'))
    if spec.get('warmup_epochs') is not None:   # absent from older records
        key += '|warmup_epochs={}'.format(spec['warmup_epochs'])
    if spec.get('stale_threshold') is not None:
        key += '|stale_threshold={}'.format(spec['stale_threshold'])
    if spec.get('options'):                     # issue 18's KFAC keywords
        key += '|options={}'.format(json.dumps(spec['options'],
                                               sort_keys=True))
    return key


def index_stream(n, seed):
    """Endless sample indices: one permutation per epoch, from ``seed``."""
    rng = numpy.random.RandomState(seed)
    while True:
        for i in rng.permutation(n):
            yield int(i)


def first_reaching(curve, target):
    """(step, wall seconds) of the first evaluation at or above ``target``."""
    for step, _, wall, acc in curve:
        if acc >= target:
            return step, wall
    return None, None


def train_run(spec, data, log=print):
    """One run; returns its record (the curve and the figures)."""
    x, t, xt, tt = data
    n, batch = len(x), spec['batch']
    micro = min(batch, spec['micro_batch'])
    if batch % micro:
        raise ValueError('batch {} is not a multiple of the micro-batch {}'
                         .format(batch, micro))
    acc_iters = batch // micro
    total = max(1, int(round(spec['epochs'] * n / batch)))
    if spec['max_steps']:
        total = min(total, spec['max_steps'])
    if spec.get('warmup_epochs') is not None:
        warmup = max(2, int(round(spec['warmup_epochs'] * n / batch)))
    else:
        warmup = max(2, int(round(spec['warmup_frac'] * total)))
    warmup = min(warmup, total)
    every = max(1, total // spec['evals'])
    numpy.random.seed(spec['seed'])
    model = IssueCNN()
    method = spec['method']
    if method == 'sgd':
        peak = spec['lr_ref'] * batch / REF_BATCH
        opt = chainer.optimizers.MomentumSGD(lr=peak, momentum=0.9)
    else:
        peak = spec['lr_ref']
        stale = {}
        if spec.get('stale_threshold') is not None:   # the default otherwise
            stale['stale_threshold'] = spec['stale_threshold']
        opt = chainerkfac.KFAC(lr=peak, momentum=0.9, damping=spec['damping'],
                               cov_ema_decay=spec['cov_ema_decay'],
                               bn_fisher='unit', acc_iters=acc_iters,
                               stale=(method == 'kfac_stale'), **dict(
                                   stale, **spec.get('options') or {}))
    opt.setup(model)
    opt.add_hook(WeightDecay(5e-4))
    stream = index_stream(n, spec['seed'])
    last_loss = [0.0]

    def lossfun(xb, tb):
        loss = F.softmax_cross_entropy(model(xb), tb)
        last_loss[0] = float(loss.array)
        return loss

    curve, refreshed, wall, diverged = [], [], 0.0, False
    step_seconds, first_loss = [], None
    for step in range(total):
        lr = lr_at(step, total, peak, warmup)
        opt.lr = lr
        idx = numpy.fromiter((next(stream) for _ in range(batch)), numpy.int64,
                             batch)
        start = time.perf_counter()
        losses = []
        for m in range(acc_iters):
            sel = idx[m * micro:(m + 1) * micro]
            if method == 'sgd':
                if m == 0:
                    model.cleargrads()
                loss = lossfun(x[sel], t[sel])
                (loss / acc_iters).backward()
                del loss
            else:
                opt.update(lossfun, x[sel], t[sel])
            losses.append(last_loss[0])
        if method == 'sgd':
            opt.update()
        step_seconds.append(time.perf_counter() - start)
        wall += step_seconds[-1]
        if method != 'sgd':
            blocks = opt.fisher_blocks
            refreshed.append(sum(len(b.due) for b in blocks) / sum(
                len(b.statistic_names) for b in blocks))
        mean_loss = float(numpy.mean(losses))
        first_loss = mean_loss if first_loss is None else first_loss
        # diverged: a loss that is not finite or 10x the first one
        if not numpy.isfinite(mean_loss) or mean_loss > 10 * first_loss:
            diverged = True
        if diverged or (step + 1) % every == 0 or step + 1 == total:
            acc = 0.1 if diverged else accuracy(model, xt, tt)
            if acc <= CHANCE:        # at chance after training: as bad
                diverged = True
            curve.append([step + 1, (step + 1) * batch / n, wall, acc])
            log('  {} B={} lr_ref={} damping={}: step {}/{} (epoch {:.2f}) '
                'loss {:.4f} test acc {:.4f} train {:.0f} s{}'.format(
                    method, batch, spec['lr_ref'], spec['damping'], step + 1,
                    total, (step + 1) * batch / n, float(numpy.mean(losses)),
                    acc, wall, ' DIVERGED' if diverged else ''))
        if diverged:
            break
    stale_warmup = opt.schedule.warmup if method == 'kfac_stale' else 0
    after = max(stale_warmup, warmup)
    record = dict(spec, key=run_key(spec), steps=total, acc_iters=acc_iters,
                  micro=micro, warmup_steps=warmup, peak_lr=peak,
                  curve=curve, final_acc=curve[-1][3], train_seconds=wall,
                  seconds_per_step=wall / max(1, len(refreshed) or step + 1),
                  diverged=diverged,
                  refresh_fraction=(float(numpy.mean(refreshed))
                                    if refreshed else None),
                  refresh_fraction_after_warmup=(
                      float(numpy.mean(refreshed[stale_warmup:]))
                      if len(refreshed) > stale_warmup else None),
                  stale_warmup=stale_warmup,
                  seconds_per_step_after_warmup=(
                      float(numpy.mean(step_seconds[after:]))
                      if len(step_seconds) > after else None),
                  finished=time.strftime('%Y-%m-%dT%H:%M:%S'),
                  host=platform.node())
    for target in TARGETS:
        s, w = first_reaching(curve, target)
        record['steps_to_{}'.format(int(target * 100))] = s
        record['wall_to_{}'.format(int(target * 100))] = w
    return record


# --- records -----------------------------------------------------------------

def load_records(path):
    records = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    r = json.loads(line)
                    records[r['key']] = r
    return records


def append_record(out, record):
    with open(os.path.join(out, 'runs.jsonl'), 'a') as f:
        f.write(json.dumps(record) + '\n')
    path = os.path.join(out, 'curves.csv')
    new = not os.path.exists(path)
    with open(path, 'a', newline='') as f:
        w = csv.writer(f)
        if new:
            w.writerow(['key', 'method', 'batch', 'lr_ref', 'damping', 'step',
                        'epoch', 'train_seconds', 'test_acc'])
        for step, epoch, wall, acc in record['curve']:
            w.writerow([record['key'], record['method'], record['batch'],
                        record['lr_ref'], record['damping'], step,
                        '{:.4f}'.format(epoch), '{:.3f}'.format(wall),
                        '{:.4f}'.format(acc)])


def rank_key(r):
    """Sort key of a sweep's runs: best first (see the module docstring)."""
    s90, s88 = r.get('steps_to_90'), r.get('steps_to_88')
    return (s90 is None, s90 or 0, s88 is None, s88 or 0, -r['final_acc'])


def best(records, method, batch):
    runs = [r for r in records
            if r['method'] == method and r['batch'] == batch]
    return sorted(runs, key=rank_key)[0] if runs else None


def summarize(records, batch_sizes):
    """The per-(batch, method) table and the issue's targets."""
    records = list(records)
    rows = []
    for b in batch_sizes:
        for method in ('sgd', 'kfac', 'kfac_stale'):
            r = best(records, method, b)
            if r is None:
                continue
            runs = [q for q in records if q['method'] == method
                    and q['batch'] == b]
            rows.append(dict(
                batch=b, method=method, runs=len(runs), lr_ref=r['lr_ref'],
                peak_lr=r['peak_lr'], damping=r['damping'], steps=r['steps'],
                steps_to_88=r['steps_to_88'], wall_to_88=r['wall_to_88'],
                steps_to_90=r['steps_to_90'], wall_to_90=r['wall_to_90'],
                final_acc=r['final_acc'],
                best_final_acc=max(q['final_acc'] for q in runs),
                train_seconds=r['train_seconds'],
                seconds_per_step=r['seconds_per_step'],
                refresh_fraction=r['refresh_fraction']))
    return dict(rows=rows, targets=targets(records, batch_sizes))


def targets(records, batch_sizes):
    out = []
    for b in (8192, 32768):
        s, k = best(records, 'sgd', b), best(records, 'kfac', b)
        name = ('B={}: K-FAC steps to 90% <= 0.15x best SGD, and less wall '
                'time'.format(b))
        if s is None or k is None:
            out.append(dict(target=name, status='not measured'))
            continue
        ks, ss = k['steps_to_90'], s['steps_to_90']
        if ks is None:
            status = 'missed (K-FAC did not reach 90% in {} steps)'.format(
                k['steps'])
        elif ss is None:
            # SGD's steps to 90% are only known to exceed its run length
            steps_ok = ks <= 0.15 * s['steps']
            wall_ok = k['wall_to_90'] < s['train_seconds']
            status = ('{}: SGD did not reach 90% in its {} steps, so its '
                      'steps to 90% exceed {}; K-FAC needed {} ({} 0.15 x {} '
                      '= {:.1f}); wall {}'.format(
                          'met' if steps_ok and wall_ok else 'undetermined',
                          s['steps'], s['steps'], ks,
                          '<=' if steps_ok else '>', s['steps'],
                          0.15 * s['steps'],
                          'met' if wall_ok else 'undetermined'))
        else:
            ok = ks <= 0.15 * ss and k['wall_to_90'] < s['wall_to_90']
            status = 'met' if ok else 'missed'
        out.append(dict(target=name, status=status, kfac_steps_to_90=ks,
                        sgd_steps_to_90=ss, kfac_wall_to_90=k['wall_to_90'],
                        sgd_wall_to_90=s['wall_to_90'],
                        kfac_steps_to_88=k['steps_to_88'],
                        sgd_steps_to_88=s['steps_to_88'],
                        sgd_steps=s['steps'],
                        sgd_train_seconds=s['train_seconds'],
                        ratio=(ks / ss if ks and ss else None)))
    name = 'final accuracy drop 512 -> 32768: K-FAC < SGD'
    finals = {}
    for m in ('sgd', 'kfac'):
        lo, hi = best(records, m, 512), best(records, m, 32768)
        if lo and hi:
            finals[m] = (max(q['final_acc'] for q in records
                             if q['method'] == m and q['batch'] == 512)
                         - max(q['final_acc'] for q in records
                               if q['method'] == m and q['batch'] == 32768))
    if len(finals) < 2:
        out.append(dict(target=name, status='not measured'))
    else:
        out.append(dict(target=name, status='met' if finals['kfac'] <
                        finals['sgd'] else 'missed',
                        kfac_drop=finals['kfac'], sgd_drop=finals['sgd']))
    for b in batch_sizes:
        k = best(records, 'kfac', b)
        st = [q for q in records if q['method'] == 'kfac_stale'
              and q['batch'] == b]
        if k is None or not st:
            continue
        st = [q for q in st if q['lr_ref'] == k['lr_ref']
              and q['damping'] == k['damping']] or st
        q = st[0]
        diff = 100 * (q['final_acc'] - k['final_acc'])
        frac = q['refresh_fraction']
        out.append(dict(
            target='B={}: stale within 0.3 points of every-step, refreshing '
                   '<= half'.format(b),
            status='met' if abs(diff) <= 0.3 and frac <= 0.5 else 'missed',
            diff_points=diff, refresh_fraction=frac,
            refresh_fraction_after_warmup=q['refresh_fraction_after_warmup'],
            every_step_seconds=k['train_seconds'],
            stale_seconds=q['train_seconds']))
    return out


def write_summary(out, records, batch_sizes, args_dict):
    summary = summarize(records.values(), batch_sizes)
    summary['args'] = args_dict
    summary['runs_finished'] = len(records)
    with open(os.path.join(out, 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=1)
    cols = ['batch', 'method', 'runs', 'lr_ref', 'peak_lr', 'damping', 'steps',
            'steps_to_88', 'wall_to_88', 'steps_to_90', 'wall_to_90',
            'final_acc', 'best_final_acc', 'train_seconds', 'seconds_per_step',
            'refresh_fraction']
    with open(os.path.join(out, 'summary.csv'), 'w', newline='') as f:
        w = csv.DictWriter(f, cols)
        w.writeheader()
        for row in summary['rows']:
            w.writerow(row)
    with open(os.path.join(out, 'report.md'), 'w') as f:
        f.write(markdown_report(records.values(), summary))
    return summary


def markdown_report(records, summary):
    """Every run and the targets as Markdown tables (``OUT/report.md``)."""
    def f(v, fmt='{}'):
        return '—' if v is None else fmt.format(v)
    lines = ['| batch | method | peak lr | damping | steps (warm-up) | steps '
             '→ 88 % | wall → 88 % | steps → 90 % | wall → 90 % | best acc '
             '(step) | final acc | refreshed (after warm-up) | training wall '
             '| s/step |',
             '|' + '---|' * 14]
    order = {'sgd': 0, 'kfac': 1, 'kfac_stale': 2}
    for r in sorted(records, key=lambda r: (r['batch'], order[r['method']],
                                            r['peak_lr'], r['damping'] or 0)):
        peak = max(r['curve'], key=lambda p: p[3])
        top = best(list(records), r['method'], r['batch']) is r
        refreshed = '—'
        if r['refresh_fraction'] is not None:
            refreshed = '{:.3f} ({})'.format(
                r['refresh_fraction'],
                f(r['refresh_fraction_after_warmup'], '{:.3f}'))
        lines.append('| {} | {}{} | {:.4g} | {} | {} ({}) | {} | {} | {} | {} '
                     '| {:.4f} ({}) | {:.4f}{} | {} | {:.0f} s | {:.1f} |'
                     .format(
                         r['batch'], METHOD_LABELS[r['method']],
                         ' (best)' if top else '', r['peak_lr'],
                         f(r['damping'], '{:g}'), r['steps'],
                         r['warmup_steps'],
                         f(r['steps_to_88']), f(r['wall_to_88'], '{:.0f} s'),
                         f(r['steps_to_90']), f(r['wall_to_90'], '{:.0f} s'),
                         peak[3], peak[0], r['final_acc'],
                         ' DIVERGED' if r['diverged'] else '', refreshed,
                         r['train_seconds'], r['seconds_per_step']))
    lines += ['', '| target | status | numbers |', '|---|---|---|']
    for t in summary['targets']:
        extra = ', '.join('{} {}'.format(k, round(v, 4) if isinstance(v, float)
                                         else v)
                          for k, v in t.items()
                          if k not in ('target', 'status'))
        lines.append('| {} | {} | {} |'.format(t['target'], t['status'],
                                               extra))
    return '\n'.join(lines) + '\n'


def format_summary(summary):
    def f(v, fmt):
        return '-' if v is None else fmt.format(v)
    lines = ['{:>6} {:<17} {:>4} {:>8} {:>8} {:>6} {:>7} {:>8} {:>7} {:>8} '
             '{:>7} {:>7}'.format('batch', 'method (best)', 'runs', 'lr',
                                  'damping', 'steps', 'st->88', 'wall->88',
                                  'st->90', 'wall->90', 'final', 'refresh')]
    for r in summary['rows']:
        lines.append('{:>6} {:<17} {:>4} {:>8} {:>8} {:>6} {:>7} {:>8} {:>7} '
                     '{:>8} {:>7} {:>7}'.format(
                         r['batch'], METHOD_LABELS[r['method']], r['runs'],
                         '{:.4g}'.format(r['peak_lr']),
                         f(r['damping'], '{:g}'), r['steps'],
                         f(r['steps_to_88'], '{}'),
                         f(r['wall_to_88'], '{:.0f}s'),
                         f(r['steps_to_90'], '{}'),
                         f(r['wall_to_90'], '{:.0f}s'),
                         '{:.4f}'.format(r['final_acc']),
                         f(r['refresh_fraction'], '{:.3f}')))
    lines.append('targets:')
    for t in summary['targets']:
        extra = {k: (round(v, 4) if isinstance(v, float) else v)
                 for k, v in t.items() if k not in ('target', 'status')}
        lines.append('  {}: {} {}'.format(t['target'], t['status'],
                                          extra if extra else ''))
    return '\n'.join(lines)


def plot(out, records, batch_sizes):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    records = list(records.values())
    styles = {'sgd': ('tab:blue', '-'), 'kfac': ('tab:red', '-'),
              'kfac_stale': ('tab:green', '--')}
    done = [b for b in batch_sizes if any(r['batch'] == b for r in records)]
    if not done:
        return []
    files = []
    for xi, xlabel, name in ((0, 'steps', 'acc_vs_steps.png'),
                             (2, 'training wall time (s, shared CPU)',
                              'acc_vs_wall.png')):
        fig, axes = plt.subplots(1, len(done), figsize=(4.2 * len(done), 3.6),
                                 squeeze=False)
        for ax, b in zip(axes[0], done):
            for r in records:
                if r['batch'] != b:
                    continue
                color, ls = styles[r['method']]
                top = best(records, r['method'], b) is r
                xs = [p[xi] for p in r['curve']]
                ys = [p[3] for p in r['curve']]
                label = None
                if top:
                    label = '{} lr {:.3g}{}'.format(
                        METHOD_LABELS[r['method']], r['peak_lr'],
                        '' if r['method'] == 'sgd' else
                        ' d {:g}'.format(r['damping']))
                ax.plot(xs, ys, color=color, ls=ls, lw=2 if top else 0.8,
                        alpha=1.0 if top else 0.35, label=label, marker='.')
            for target in TARGETS:
                ax.axhline(target, color='gray', lw=0.6, ls=':')
            ax.set_title('batch {}'.format(b))
            ax.set_xlabel(xlabel)
            low = min([p[3] for r in records if r['batch'] == b
                       for p in r['curve']] + [0.5])
            ax.set_ylim(max(0.0, low - 0.02), 0.95)
            ax.legend(fontsize=7, loc='lower right')
        axes[0][0].set_ylabel('test accuracy')
        fig.tight_layout()
        fig.savefig(os.path.join(out, name), dpi=90)
        plt.close(fig)
        files.append(name)
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for method in ('sgd', 'kfac', 'kfac_stale'):
        pts = [(b, max(r['final_acc'] for r in records
                       if r['method'] == method and r['batch'] == b))
               for b in done if best(records, method, b)]
        if pts:
            color, ls = styles[method]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color,
                    ls=ls, marker='o', label=METHOD_LABELS[method])
    ax.set_xscale('log', base=2)
    ax.set_xlabel('mini-batch')
    ax.set_ylabel('final test accuracy (best of sweep)')
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, 'final_vs_batch.png'), dpi=90)
    plt.close(fig)
    files.append('final_vs_batch.png')
    stale = [b for b in done if any(r['method'] == 'kfac_stale' and
                                    r['batch'] == b for r in records)]
    if stale:
        fig, axes = plt.subplots(1, 2, figsize=(8.5, 3.4))
        x = numpy.arange(len(stale))
        for i, method in enumerate(('kfac', 'kfac_stale')):
            rs = [best(records, method, b) for b in stale]
            axes[0].bar(x + 0.38 * i, [r['final_acc'] for r in rs], 0.36,
                        color=styles[method][0], label=METHOD_LABELS[method])
            axes[1].bar(x + 0.38 * i, [r['train_seconds'] for r in rs], 0.36,
                        color=styles[method][0], label=METHOD_LABELS[method])
        for ax, yl in zip(axes, ('final test accuracy',
                                 'training wall time (s)')):
            ax.set_xticks(x + 0.19)
            ax.set_xticklabels([str(b) for b in stale])
            ax.set_xlabel('mini-batch')
            ax.set_ylabel(yl)
        lo = min(r['final_acc'] for r in records) - 0.02
        axes[0].set_ylim(max(0.0, lo), 1.0)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(out, 'stale.png'), dpi=90)
        plt.close(fig)
        files.append('stale.png')
    return files


# --- the study ---------------------------------------------------------------

def base_spec(args, method, batch, lr_ref, damping):
    return dict(method=method, batch=batch, lr_ref=lr_ref,
                damping=None if method == 'sgd' else damping,
                epochs=args.epochs, train_limit=args.train_limit,
                test_limit=args.test_limit, seed=args.seed,
                max_steps=args.max_steps, micro_batch=args.micro_batch,
                cov_ema_decay=None if method == 'sgd' else args.cov_ema_decay,
                warmup_frac=(None if args.warmup_epochs is not None
                             else args.warmup_frac),
                warmup_epochs=args.warmup_epochs, evals=args.evals)


def floats(text):
    return [float(v) for v in text.split(',') if v]


def per_batch_floats(text, batch_sizes):
    """``'0.05,0.1'`` for every batch size, or ``'512:0.05;8192:0.003,0.006'``.

    Returns {batch: [values]}; a batch size missing from a per-batch list is an
    error naming it.
    """
    if ':' not in text:
        return {b: floats(text) for b in batch_sizes}
    grid = {}
    for part in text.split(';'):
        if not part.strip():
            continue
        b, _, values = part.partition(':')
        try:
            grid[int(b)] = floats(values)
        except ValueError:
            raise SystemExit('--sgd-lrs: cannot read {!r} (expected '
                             'BATCH:LR,LR;BATCH:LR)'.format(part))
    missing = [b for b in batch_sizes if b not in grid]
    if missing:
        raise SystemExit('--sgd-lrs gives no learning rate for batch size(s) '
                         '{}'.format(', '.join(map(str, missing))))
    return grid


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--quick', action='store_true',
                   help='batches 512,2048; 8,192 train / 1,000 test images; '
                   '3 epochs; smaller sweeps (< 15 min here)')
    p.add_argument('--batch-sizes')
    p.add_argument('--epochs', type=float)
    p.add_argument('--train-limit', type=int, help='first N training images')
    p.add_argument('--test-limit', type=int, help='first N test images')
    p.add_argument('--sgd-lrs', help='SGD lr_ref (peak lr = lr_ref x B/512): '
                   '"0.05,0.1" for every batch size, or per batch size '
                   '"512:0.05;8192:0.003125,0.00625"')
    p.add_argument('--kfac-lrs')
    p.add_argument('--kfac-dampings')
    p.add_argument('--evals', type=int, help='test evaluations per run')
    p.add_argument('--cov-ema-decay', type=float, default=0.1)
    p.add_argument('--warmup-epochs', type=float,
                   help='linear warm-up length in epochs (at least 2 steps); '
                   'the study uses 1.0')
    p.add_argument('--warmup-frac', type=float,
                   help='warm-up as a fraction of the steps instead (default '
                   '0.05 where no warm-up in epochs applies: the quick study)')
    p.add_argument('--micro-batch', type=int, default=4096,
                   help='largest batch in one forward/backward (acc_iters)')
    p.add_argument('--max-steps', type=int, default=0,
                   help='cap on steps per run (0: none; tests)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--no-stale', action='store_true')
    p.add_argument('--stale-batch-sizes',
                   help='batch sizes that get a stale run (default: all)')
    p.add_argument('--workers', type=int,
                   help='runs trained at once, each in its own process with '
                   'one BLAS thread (a Chainer CPU step uses about one core)')
    p.add_argument('--no-plots', action='store_true')
    p.add_argument('--out', help='results folder (default benchmarks/results/'
                   'fidelity/convergence[_quick])')
    args = p.parse_args(argv)
    preset = QUICK if args.quick else FULL
    # a warm-up fraction given alone replaces the preset's warm-up in epochs
    fraction_only = args.warmup_frac is not None and args.warmup_epochs is None
    for k, v in preset.items():
        if k != 'name' and getattr(args, k, None) is None:
            setattr(args, k, v)
    if fraction_only:
        args.warmup_epochs = None
    if args.warmup_frac is None:
        args.warmup_frac = 0.05
    if args.out is None:
        args.out = os.path.join(DEFAULT_OUT, preset['name'])
    if args.workers < 1:
        p.error('--workers must be at least 1')
    return args


def plan_runs(args, batch_sizes):
    """Every run of the study, in the order they start.

    Largest batch first (the issue's step and wall-time targets), K-FAC before
    SGD within a batch; a stale run is a ``('stale', batch)`` placeholder,
    resolved to the best every-step configuration once that batch's K-FAC runs
    are finished.
    """
    sgd = per_batch_floats(args.sgd_lrs, batch_sizes)
    stale_sizes = (batch_sizes if args.stale_batch_sizes is None else
                   [int(b) for b in args.stale_batch_sizes.split(',') if b])
    plan = []
    for b in sorted(batch_sizes, reverse=True):
        plan += [base_spec(args, 'kfac', b, lr, d)
                 for lr in floats(args.kfac_lrs)
                 for d in floats(args.kfac_dampings)]
        plan += [base_spec(args, 'sgd', b, lr, None) for lr in sgd[b]]
    if not args.no_stale:
        plan += [('stale', b) for b in sorted(batch_sizes, reverse=True)
                 if b in stale_sizes]
    return plan


_WORKER_DATA = None


def _load_data(train_limit, test_limit):
    x, t = load_fashion_mnist('train', limit=train_limit)
    xt, tt = load_fashion_mnist('test', limit=test_limit)
    return x, t, xt, tt


def _init_worker(train_limit, test_limit):
    global _WORKER_DATA
    allocator.configure_allocator()
    chainerkfac.use_float64_bn_statistics()   # as in the first study
    _WORKER_DATA = _load_data(train_limit, test_limit)


def _train_in_worker(spec):
    return train_run(spec, _WORKER_DATA, log=lambda s: print(s, flush=True))


class _Inline(object):
    """The pool interface, running each run in this process when it is asked
    for."""

    def __init__(self, data):
        self.data = data

    def submit(self, spec):
        return _Deferred(lambda: train_run(spec, self.data,
                                           log=lambda s: print(s, flush=True)))

    def first_done(self, handles):
        return handles[0]

    def shutdown(self):
        pass


class _Deferred(object):
    def __init__(self, fn):
        self.result = fn


class _Pool(object):
    """``--workers N``: N spawned processes, one BLAS thread each."""

    def __init__(self, workers, train_limit, test_limit):
        saved = {k: os.environ.get(k) for k in ('OPENBLAS_NUM_THREADS',
                                                'OMP_NUM_THREADS')}
        for k in saved:
            os.environ[k] = '1'    # read by the workers' BLAS when it loads
        try:
            self.pool = concurrent.futures.ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context('spawn'),
                initializer=_init_worker, initargs=(train_limit, test_limit))
            self.pool.submit(int).result()   # start the workers now
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def submit(self, spec):
        return self.pool.submit(_train_in_worker, spec)

    def first_done(self, futures):
        return next(concurrent.futures.as_completed(futures))

    def shutdown(self):
        self.pool.shutdown()


def main(argv=None):
    args = parse(argv)
    allocator.configure_allocator()   # reuse freed host memory
    chainerkfac.use_float64_bn_statistics()   # as in the first study
    batch_sizes = [int(b) for b in args.batch_sizes.split(',')]
    os.makedirs(args.out, exist_ok=True)
    records = load_records(os.path.join(args.out, 'runs.jsonl'))
    data = _load_data(args.train_limit, args.test_limit)
    args_dict = {k: v for k, v in vars(args).items()}
    plan = plan_runs(args, batch_sizes)
    n_runs = len(plan)
    print('convergence: {} runs planned ({} train / {} test images, {} '
          'epochs, batches {}, {} worker(s)); records in {}; {} already '
          'finished'.format(
              n_runs, len(data[0]), len(data[2]), args.epochs, batch_sizes,
              args.workers, args.out, len(records)), flush=True)
    started = time.time()
    pool = (_Inline(data) if args.workers == 1 else
            _Pool(args.workers, args.train_limit, args.test_limit))
    pending = list(enumerate(plan))
    running, failed = [], []

    def ready(item):
        """The spec to start now, 'skip', or None while it must wait."""
        i, spec = item
        if not isinstance(spec, tuple):
            return spec
        b = spec[1]
        if any(s['method'] == 'kfac' and s['batch'] == b
               for _, s, _ in running) or any(
                   not isinstance(s, tuple) and s['method'] == 'kfac' and
                   s['batch'] == b for _, s in pending):
            return None
        k = best(list(records.values()), 'kfac', b)
        if k is None:
            print('[{}/{}] stale B={}: no every-step K-FAC run; skipped'
                  .format(i + 1, n_runs, b), flush=True)
            return 'skip'
        return base_spec(args, 'kfac_stale', b, k['lr_ref'], k['damping'])

    def finish(i, spec, handle):
        try:
            record = handle.result()
        except Exception as e:   # keep the study going; named at the end
            failed.append('{} B={} lr_ref={}: {}: {}'.format(
                spec['method'], spec['batch'], spec['lr_ref'],
                type(e).__name__, e))
            print('[{}/{}] FAILED {}'.format(i + 1, n_runs, failed[-1]),
                  flush=True)
            return
        append_record(args.out, record)
        records[record['key']] = record
        write_summary(args.out, records, batch_sizes, args_dict)
        if not args.no_plots:
            plot(args.out, records, batch_sizes)
        print('[{}/{}] finished {} B={} lr_ref={} damping={} ({:.0f} s into '
              'this call)'.format(i + 1, n_runs, spec['method'], spec['batch'],
                                  spec['lr_ref'], spec['damping'],
                                  time.time() - started), flush=True)

    try:
        while pending or running:
            while pending and len(running) < args.workers:
                for j, item in enumerate(pending):
                    spec = ready(item)
                    if spec is not None:
                        break
                else:
                    break    # only stale runs waiting for K-FAC runs
                i = pending.pop(j)[0]
                if spec == 'skip':
                    continue
                if run_key(spec) in records:
                    print('[{}/{}] {} B={} lr_ref={} damping={}: done before, '
                          'skipped'.format(i + 1, n_runs, spec['method'],
                                           spec['batch'], spec['lr_ref'],
                                           spec['damping']), flush=True)
                    continue
                print('[{}/{}] {} B={} lr_ref={} damping={} ({:.0f} s into '
                      'this call)'.format(i + 1, n_runs, spec['method'],
                                     spec['batch'], spec['lr_ref'],
                                     spec['damping'], time.time() - started),
                      flush=True)
                running.append((i, spec, pool.submit(spec)))
            if not running:
                break
            first = pool.first_done([r[2] for r in running])
            done = [r for r in running if r[2] is first][0]
            running.remove(done)
            finish(*done)
    finally:
        pool.shutdown()
    summary = write_summary(args.out, records, batch_sizes, args_dict)
    if not args.no_plots:
        plot(args.out, records, batch_sizes)
    print(format_summary(summary), flush=True)
    print('total {:.0f} s in this call'.format(time.time() - started))
    if failed:
        raise SystemExit('{} run(s) failed:\n  {}'.format(
            len(failed), '\n  '.join(failed)))
    return summary


if __name__ == '__main__':
    main()
