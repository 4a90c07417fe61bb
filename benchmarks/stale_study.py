#!/usr/bin/env python
"""Stale statistics against every-step K-FAC on the fidelity study (issue 17).

The study of ``convergence.py`` (its CNN, data, schedule and ``train_run``:
Fashion-MNIST, 6 epochs, a 1-epoch linear warm-up then cosine decay, momentum
0.9, weight decay 5e-4, K-FAC lr 0.1 and damping 1e-2, ``bn_fisher='unit'``),
re-run for the stale rule: at mini-batches 512, 2,048 and 8,192, with
``cov_ema_decay`` 0.1 (the first study's) and 1.0 (the original's configs),
for two seeds, the package's default stale rule beside every-step K-FAC on
the same seed (same initial weights, same batches), plus one momentum-SGD run
per batch size (seed 0, the first study's best learning rate) for the step
time.

The targets (issue 17), per batch size and ``cov_ema_decay``, over the two
seeds: no stale run diverges (a loss that is not finite or 10x the first, or
a test accuracy at chance); mean final accuracy within 0.3 points of every
step; at most 50 % of the statistics refreshed over the run and at most 30 %
after the stale warm-up; training wall time below the every-step run's; at
2,048 and 8,192, stale s/step (after the warm-ups) within 1.15x of SGD's.

Runs train two at a time (``--workers``, one BLAS thread each); wall times
are per run, measured beside another run on a shared machine. Each finished
run is appended to ``OUT/runs.jsonl``; a rerun skips the runs found there,
so the study can be split across sessions. ``OUT/report.md``,
``summary.json`` and ``stale_study.png`` are rewritten after every run.

    .venv/bin/python benchmarks/stale_study.py             # ~4-5 h here
    .venv/bin/python benchmarks/stale_study.py --groups 0.1:0,1.0:0
"""
import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))

import convergence  # NOQA: E402  (imports chainerkfac before chainer)
import chainerkfac  # NOQA: E402
import numpy  # NOQA: E402
from chainerkfac.training import allocator  # NOQA: E402

DEFAULT_OUT = os.path.join(ROOT, 'benchmarks', 'results', 'fidelity',
                           'stale_study')
#: the first study's best SGD peak learning rate per batch (lr_ref x B/512)
SGD_LR_REF = {512: 0.05, 2048: 0.025, 8192: 0.003125}
FULL = dict(batch_sizes=(8192, 2048, 512), epochs=6.0, train_limit=None,
            test_limit=None, evals=15, warmup_epochs=1.0, micro_batch=4096)
QUICK = dict(batch_sizes=(64, 32), epochs=1.0, train_limit=512,
             test_limit=200, evals=3, warmup_epochs=0.25, micro_batch=32)
KFAC_LR, KFAC_DAMPING = 0.1, 0.01
TARGET_POINTS, MAX_REFRESH, MAX_REFRESH_AFTER = 0.3, 0.5, 0.3
MAX_SGD_RATIO = 1.15


def spec(preset, method, batch, seed, cov_ema_decay):
    sgd = method == 'sgd'
    return dict(method=method, batch=batch,
                lr_ref=SGD_LR_REF.get(batch, 0.05) if sgd else KFAC_LR,
                damping=None if sgd else KFAC_DAMPING,
                epochs=preset['epochs'], train_limit=preset['train_limit'],
                test_limit=preset['test_limit'], seed=seed, max_steps=0,
                micro_batch=preset['micro_batch'],
                cov_ema_decay=None if sgd else cov_ema_decay,
                warmup_frac=None, warmup_epochs=preset['warmup_epochs'],
                evals=preset['evals'])


def plan(preset, groups, sgd=True):
    """Every run, in order: per (cov_ema_decay, seed) group, largest batch
    first, every-step then stale; the SGD runs after the first group."""
    runs = []
    for i, (decay, seed) in enumerate(groups):
        for b in preset['batch_sizes']:
            runs += [spec(preset, 'kfac', b, seed, decay),
                     spec(preset, 'kfac_stale', b, seed, decay)]
        if i == 0 and sgd:
            runs += [spec(preset, 'sgd', b, 0, None)
                     for b in preset['batch_sizes']]
    return runs


def _mean(values):
    values = [v for v in values if v is not None]
    return float(numpy.mean(values)) if values else None


def summarize(records, preset, groups):
    """One row per (batch, cov_ema_decay): the means over the seeds and the
    targets' statuses."""
    records = list(records)
    rows = []
    for decay in sorted(set(d for d, _ in groups)):
        seeds = sorted(s for d, s in groups if d == decay)
        for b in sorted(preset['batch_sizes']):
            pairs = []
            for seed in seeds:
                every = [r for r in records if r['method'] == 'kfac' and
                         r['batch'] == b and r['seed'] == seed and
                         r['cov_ema_decay'] == decay]
                stale = [r for r in records if r['method'] == 'kfac_stale' and
                         r['batch'] == b and r['seed'] == seed and
                         r['cov_ema_decay'] == decay]
                if every and stale:
                    pairs.append((every[0], stale[0]))
            if not pairs:
                continue
            sgd = [r for r in records if r['method'] == 'sgd' and
                   r['batch'] == b]
            row = dict(
                batch=b, cov_ema_decay=decay,
                seeds=[e['seed'] for e, _ in pairs],
                every_final=_mean(e['final_acc'] for e, _ in pairs),
                stale_final=_mean(s['final_acc'] for _, s in pairs),
                stale_diverged=sum(bool(s['diverged']) for _, s in pairs),
                every_diverged=sum(bool(e['diverged']) for e, _ in pairs),
                refresh=_mean(s['refresh_fraction'] for _, s in pairs),
                refresh_after=_mean(s['refresh_fraction_after_warmup']
                                    for _, s in pairs),
                every_seconds=_mean(e['train_seconds'] for e, _ in pairs),
                stale_seconds=_mean(s['train_seconds'] for _, s in pairs),
                every_step_time=_mean(e.get('seconds_per_step_after_warmup')
                                      for e, _ in pairs),
                stale_step_time=_mean(s.get('seconds_per_step_after_warmup')
                                      for _, s in pairs),
                sgd_step_time=_mean(r.get('seconds_per_step_after_warmup')
                                    for r in sgd))
            row['diff_points'] = 100 * (row['stale_final']
                                        - row['every_final'])
            ratio = (row['stale_step_time'] / row['sgd_step_time']
                     if row['stale_step_time'] and row['sgd_step_time']
                     else None)
            row['stale_vs_sgd'] = ratio
            row['every_vs_sgd'] = (row['every_step_time']
                                   / row['sgd_step_time']
                                   if row['every_step_time'] and
                                   row['sgd_step_time'] else None)
            status = {
                'no divergence': row['stale_diverged'] == 0,
                'final within 0.3 points': abs(row['diff_points'])
                <= TARGET_POINTS,
                'refreshed <= 50 %': row['refresh'] <= MAX_REFRESH,
                'refreshed after warm-up <= 30 %': (
                    row['refresh_after'] is not None and
                    row['refresh_after'] <= MAX_REFRESH_AFTER),
                'wall below every step': row['stale_seconds'] <
                row['every_seconds']}
            if b >= 2048:
                status['s/step <= 1.15x SGD'] = (None if ratio is None else
                                                ratio <= MAX_SGD_RATIO)
            row['targets'] = status
            row['complete'] = len(pairs) == len(seeds)
            rows.append(row)
    return rows


def markdown(rows, records):
    def f(v, fmt):
        return '—' if v is None else fmt.format(v)
    lines = ['| batch | cov_ema_decay | seeds | every-step final | stale '
             'final | stale − every (points) | stale diverged | refreshed | '
             'after warm-up | wall stale / every | s/step stale / SGD (every '
             '/ SGD) | targets missed |', '|' + '---|' * 12]
    for r in rows:
        missed = [k for k, ok in r['targets'].items() if ok is False]
        lines.append('| {} | {} | {} | {} | {} | {:+.2f} | {} | {} | {} | '
                     '{:.0f} / {:.0f} s | {} ({}) | {} |'.format(
                         r['batch'], r['cov_ema_decay'],
                         ','.join(map(str, r['seeds'])) +
                         ('' if r['complete'] else ' (incomplete)'),
                         f(r['every_final'], '{:.4f}'),
                         f(r['stale_final'], '{:.4f}'), r['diff_points'],
                         r['stale_diverged'], f(r['refresh'], '{:.3f}'),
                         f(r['refresh_after'], '{:.3f}'), r['stale_seconds'],
                         r['every_seconds'], f(r['stale_vs_sgd'], '{:.2f}x'),
                         f(r['every_vs_sgd'], '{:.2f}x'),
                         ', '.join(missed) if missed else 'none'))
    lines += ['', '| run | seed | cov_ema_decay | final | best | diverged | '
              'refreshed (after warm-up) | wall | s/step after warm-up |',
              '|' + '---|' * 9]
    for r in sorted(records, key=lambda r: (r['batch'], r['method'],
                                            r['cov_ema_decay'] or 0,
                                            r['seed'])):
        lines.append('| {} B={} | {} | {} | {:.4f} | {:.4f} | {} | {} | '
                     '{:.0f} s | {} |'.format(
                         convergence.METHOD_LABELS[r['method']], r['batch'],
                         r['seed'], r['cov_ema_decay'], r['final_acc'],
                         max(p[3] for p in r['curve']), r['diverged'],
                         '—' if r['refresh_fraction'] is None else
                         '{:.3f} ({})'.format(
                             r['refresh_fraction'],
                             f(r['refresh_fraction_after_warmup'], '{:.3f}')),
                         r['train_seconds'],
                         f(r.get('seconds_per_step_after_warmup'), '{:.2f}')))
    return '\n'.join(lines) + '\n'


def plot(out, records):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    records = [r for r in records if r['method'] != 'sgd']
    keys = sorted(set((r['batch'], r['cov_ema_decay']) for r in records))
    if not keys:
        return
    fig, axes = plt.subplots(1, len(keys), figsize=(3.3 * len(keys), 3.2),
                             squeeze=False)
    for ax, (b, decay) in zip(axes[0], keys):
        for r in records:
            if (r['batch'], r['cov_ema_decay']) != (b, decay):
                continue
            stale = r['method'] == 'kfac_stale'
            ax.plot([p[0] for p in r['curve']], [p[3] for p in r['curve']],
                    color='tab:green' if stale else 'tab:red',
                    ls=('--', ':')[r['seed'] % 2] if stale else '-',
                    label='{} seed {}'.format('stale' if stale else 'every',
                                              r['seed']))
        ax.set_title('B={} r={}'.format(b, decay), fontsize=9)
        ax.set_xlabel('steps')
        ax.set_ylim(0.5, 0.95)
        ax.legend(fontsize=6, loc='lower right')
    axes[0][0].set_ylabel('test accuracy')
    fig.tight_layout()
    fig.savefig(os.path.join(out, 'stale_study.png'), dpi=90)
    plt.close(fig)


def write(out, records, preset, groups, plots=True):
    rows = summarize(records.values(), preset, groups)
    with open(os.path.join(out, 'summary.json'), 'w') as f:
        json.dump(rows, f, indent=1)
    with open(os.path.join(out, 'report.md'), 'w') as f:
        f.write(markdown(rows, records.values()))
    if plots:
        plot(out, records.values())
    return rows


def parse_groups(text):
    groups = []
    for part in text.split(','):
        decay, _, seed = part.partition(':')
        try:
            groups.append((float(decay), int(seed)))
        except ValueError:
            raise SystemExit('--groups: expected DECAY:SEED[,...], got {!r}'
                             .format(part))
    return groups


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--groups', default='0.1:0,1.0:0,0.1:1,1.0:1',
                   type=parse_groups,
                   help='(cov_ema_decay, seed) groups in the order they run')
    p.add_argument('--quick', action='store_true',
                   help='tiny: 512 images, batches 64 and 32 (tests)')
    p.add_argument('--no-sgd', action='store_true')
    p.add_argument('--workers', type=int, default=2)
    p.add_argument('--no-plots', action='store_true')
    p.add_argument('--out', default=None)
    args = p.parse_args(argv)
    args.preset = QUICK if args.quick else FULL
    if args.out is None:
        args.out = DEFAULT_OUT + ('_quick' if args.quick else '')
    return args


def main(argv=None):
    args = parse(argv)
    allocator.configure_allocator()
    chainerkfac.use_float64_bn_statistics()   # as in the first study
    os.makedirs(args.out, exist_ok=True)
    records = convergence.load_records(os.path.join(args.out, 'runs.jsonl'))
    runs = [s for s in plan(args.preset, args.groups, not args.no_sgd)
            if convergence.run_key(s) not in records]
    preset = args.preset
    print('stale_study: {} runs to go, {} recorded; records in {}'.format(
        len(runs), len(records), args.out), flush=True)
    pool = (convergence._Inline(convergence._load_data(
        preset['train_limit'], preset['test_limit'])) if args.workers == 1
        else convergence._Pool(args.workers, preset['train_limit'],
                               preset['test_limit']))
    started = time.time()
    try:
        pending = list(runs)
        running = []
        while pending or running:
            while pending and len(running) < args.workers:
                s = pending.pop(0)
                print('start {} B={} seed {} r={} ({:.0f} s)'.format(
                    s['method'], s['batch'], s['seed'], s['cov_ema_decay'],
                    time.time() - started), flush=True)
                running.append((s, pool.submit(s)))
            first = pool.first_done([h for _, h in running])
            done = [r for r in running if r[1] is first][0]
            running.remove(done)
            record = done[1].result()
            convergence.append_record(args.out, record)
            records[record['key']] = record
            write(args.out, records, preset, args.groups, not args.no_plots)
            print('done {} B={} seed {} r={}: final {:.4f}{} ({:.0f} s)'
                  .format(record['method'], record['batch'], record['seed'],
                          record['cov_ema_decay'], record['final_acc'],
                          ' DIVERGED' if record['diverged'] else '',
                          time.time() - started), flush=True)
    finally:
        pool.shutdown()
    rows = write(args.out, records, preset, args.groups, not args.no_plots)
    print(markdown(rows, records.values()))
    return rows


if __name__ == '__main__':
    main()
