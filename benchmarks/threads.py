#!/usr/bin/env python
"""K-FAC step time with OpenBLAS's default threads and with configured ones.

One run measures, each in its own processes (a pool's threads are set once per
process), the small CNN (``models.small_cnn.SmallCNN``) on Fashion-MNIST, batch
32 per process, stale K-FAC (the defaults), on:

- one process (``KFAC``, ``chainerkfac.configure_threads``): OpenBLAS's default
  (an explicit count equal to the cores, which is what OpenBLAS starts with), 1
  thread, 2 threads (when the cores are not 2: then it is the default), and
  configured (``'auto'``);
- two ranks (``mpiexec -n 2``, ``DistributedKFAC``, ``create_communicator``):
  the default (the core count per process, as without chainerkfac's setting)
  and configured.

The children run with no ``*_NUM_THREADS`` variable, so ``'auto'`` decides.
Each configuration runs ``--repeats`` times, interleaved, so that load on a
shared machine hits them alike; the table gives each run's mean s/step after
``--warmup`` steps and their median, the BLAS threads each pool ran with, and
the process's CPU time over wall time (above 1: threads busy at once). Then the
ratios the acceptance asks for: two ranks, default over configured (at least
5); one process, configured against the better of 1 and 2 threads (no slower).

    .venv/bin/python benchmarks/threads.py [--steps 120] [--warmup 10] \\
        [--repeats 4] [--out benchmarks/results/threads_<date>.md] \\
        [--note 'what else ran']

About two minutes on the 2-core development machine. Every child has a timeout.
"""
import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULT = 'RESULT '
BATCHSIZE = 32


def child(args):
    sys.path.insert(0, ROOT)
    # chainerkfac before chainer: it makes Chainer 7.8.1 import on NumPy 2
    import chainerkfac
    import chainer.functions as F
    import numpy
    import threadpoolctl
    from chainerkfac.datasets import load_fashion_mnist
    from chainerkfac.training import allocator
    from models import small_cnn

    allocator.configure_allocator()
    threads = 'auto' if args.blas_threads == 'auto' else int(args.blas_threads)
    if args.ranks > 1:
        comm = chainerkfac.create_communicator('mpi', blas_threads=threads)
        rank, size = comm.rank, comm.size
    else:
        comm, rank, size = None, 0, 1
    setting = chainerkfac.configure_threads(threads)   # the same setting again
    pools = sorted({i['num_threads'] for i in threadpoolctl.threadpool_info()
                    if i['user_api'] == 'blas'})
    numpy.random.seed(0)
    model = small_cnn.SmallCNN()
    settings = dict(lr=0.02, momentum=0.9, damping=1e-3, bn_fisher='unit')
    if comm is None:
        opt = chainerkfac.KFAC(**settings)
    else:
        opt = chainerkfac.DistributedKFAC(comm, **settings)
    opt.setup(model)
    x, t = load_fashion_mnist('train',
                              limit=args.steps * args.batchsize * size)

    def lossfun(x, t):
        return F.softmax_cross_entropy(model(x), t)

    times = []
    for i in range(args.steps):
        if i == args.warmup:
            usage = resource.getrusage(resource.RUSAGE_SELF)
            cpu0, wall0 = usage.ru_utime + usage.ru_stime, time.perf_counter()
        lo = (i * size + rank) * args.batchsize
        start = time.perf_counter()
        opt.update(lossfun, x[lo:lo + args.batchsize],
                   t[lo:lo + args.batchsize])
        times.append(time.perf_counter() - start)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - cpu0
    wall = time.perf_counter() - wall0
    if rank == 0:
        timed = times[args.warmup:]
        print(RESULT + json.dumps(dict(
            seconds=sum(timed) / len(timed), slowest=max(timed),
            fastest=min(timed), cpu_per_wall=cpu / wall, pools=pools,
            source=setting.source, message=setting.message)), flush=True)


def run_child(args, ranks, blas_threads, timeout):
    """One configuration in fresh processes; its RESULT, or {'error': ...}."""
    env = dict(os.environ, PYTHONUNBUFFERED='1',
               PYTHONPATH=os.pathsep.join(
                   [ROOT, os.environ.get('PYTHONPATH', '')]))
    for name in ('OPENBLAS_NUM_THREADS', 'GOTO_NUM_THREADS', 'OMP_NUM_THREADS',
                 'MKL_NUM_THREADS', 'BLIS_NUM_THREADS'):
        env.pop(name, None)
    cmd = [sys.executable, '-W', 'ignore', os.path.abspath(__file__),
           '--child', '--ranks', str(ranks), '--blas-threads',
           str(blas_threads),
           '--steps', str(args.steps), '--warmup', str(args.warmup),
           '--batchsize', str(args.batchsize)]
    if ranks > 1:
        mpiexec = os.path.join(os.path.dirname(sys.executable), 'mpiexec')
        cmd = [mpiexec, '-n', str(ranks)] + cmd
    try:
        out = subprocess.run(cmd, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, env=env,
                             timeout=timeout, universal_newlines=True)
    except subprocess.TimeoutExpired:
        return {'error': 'timed out after {} s'.format(timeout)}
    for line in out.stdout.splitlines():
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT):])
    tail = out.stdout.strip().splitlines()[-1:] or ['no output']
    return {'error': 'exit {}: {}'.format(out.returncode, tail[0])}


def busy_processes(threshold=20.0):
    """Other processes' lines from ``ps`` using more than ``threshold`` % CPU
    (their average over their lifetime, as ps reports it)."""
    try:
        out = subprocess.run(['ps', '-eo', 'pid=,ni=,pcpu=,args='],
                             stdout=subprocess.PIPE, universal_newlines=True,
                             timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ['(ps not available)']
    rows = []
    for line in out.splitlines():
        fields = line.split(None, 3)
        if len(fields) == 4 and int(fields[0]) != os.getpid():
            try:
                if float(fields[2]) > threshold:
                    rows.append('pid {} nice {} {}% CPU: {}'.format(
                        fields[0], fields[1], fields[2], fields[3][:100]))
            except ValueError:
                pass
    return rows or ['none']


def cpu_model():
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def configurations(cores):
    """(label, ranks, blas_threads) in the order they run."""
    rows = [('1 process, default ({} threads = cores)'.format(cores), 1,
             cores),
            ('1 process, 1 thread', 1, 1)]
    if cores != 2:
        rows.append(('1 process, 2 threads', 1, 2))
    rows += [('1 process, configured', 1, 'auto'),
             ('2 ranks, default ({} threads each = cores)'.format(cores), 2,
              cores),
             ('2 ranks, configured', 2, 'auto')]
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--steps', type=int, default=120,
                   help='a few seconds of steps per run, so that a burst of '
                   'load elsewhere does not decide a run')
    p.add_argument('--warmup', type=int, default=10,
                   help='untimed first steps (stale K-FAC refreshes '
                   'everything in its first 5)')
    p.add_argument('--batchsize', type=int, default=BATCHSIZE,
                   help='per process')
    p.add_argument('--repeats', type=int, default=4)
    p.add_argument('--timeout', type=int, default=240,
                   help='seconds per child run')
    p.add_argument('--out', default=None, help='also write the report here')
    p.add_argument('--note', default='',
                   help='a line for the report (e.g. what else ran)')
    p.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--ranks', type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument('--blas-threads', default='auto', help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.warmup >= args.steps:
        p.error('--warmup must be below --steps')
    if args.child:
        return child(args)

    cores = len(os.sched_getaffinity(0))
    rows = configurations(cores)
    load_before = os.getloadavg()
    busy_before = busy_processes()
    started = time.time()
    results = {label: [] for label, _, _ in rows}
    for rep in range(args.repeats):
        for label, ranks, threads in rows:
            res = run_child(args, ranks, threads, args.timeout)
            results[label].append(res)
            print('  run {}/{} {}: {}'.format(
                rep + 1, args.repeats, label,
                res.get('error') or '{:.4f} s/step'.format(res['seconds'])),
                file=sys.stderr, flush=True)
    elapsed = time.time() - started
    load_after = os.getloadavg()
    busy_after = busy_processes()

    def median(label):
        ok = [r['seconds'] for r in results[label] if 'error' not in r]
        return (statistics.median(ok) if len(ok) == len(results[label])
                else None)

    lines = ['# BLAS threads: default vs configured ({})'.format(
                 datetime.datetime.utcnow().strftime('%Y-%m-%d %H:%M UTC')),
             '',
             '`.venv/bin/python benchmarks/threads.py {}`'.format(' '.join(
                 shlex.quote(a) for a in (argv if argv is not None
                                          else sys.argv[1:]))), '',
             'SmallCNN, Fashion-MNIST, batch {} per process, stale K-FAC '
             '(defaults, lr 0.02, damping 1e-3, bn_fisher unit), {} steps, '
             'mean of steps {}-{}; {} run{} per configuration, interleaved.'
             .format(
                 args.batchsize, args.steps, args.warmup + 1, args.steps,
                 args.repeats, '' if args.repeats == 1 else 's'),
             '{} cores ({}), Python {}; load average {:.2f} before, {:.2f} '
             'after (1 min); {:.0f} s in all.'.format(
                 cores, cpu_model(),
                 platform.python_version(), load_before[0], load_after[0],
                 elapsed), '',
             ] + ([args.note, ''] if args.note else []) + [
             'Other processes above 20 % CPU (ps), before:', ''] + [
             '- `{}`'.format(b) for b in busy_before] + [
             '', 'after:', ''] + ['- `{}`'.format(b) for b in busy_after] + [
             '',
             '| configuration | BLAS threads per library | s/step per run | '
             'median s/step | CPU/wall |', '|---|---|---|---|---|']
    for label, _, _ in rows:
        runs = results[label]
        ok = [r for r in runs if 'error' not in r]
        lines.append('| {} | {} | {} | {} | {} |'.format(
            label,
            ', '.join(sorted({'/'.join(map(str, r['pools']))
                              for r in ok})) or '-',
            ', '.join(r.get('error') or '{:.4f}'.format(r['seconds'])
                      for r in runs),
            '-' if median(label) is None else '{:.4f}'.format(median(label)),
            ', '.join('{:.2f}'.format(r['cpu_per_wall']) for r in ok) or '-'))
    messages = sorted({r['message'] for label, _, _ in rows
                       if 'configured' in label
                       for r in results[label] if 'error' not in r})
    lines += [''] + ['Configured runs logged: `{}`'.format(m)
                     for m in messages]

    def ratio(a, b):
        return None if a is None or b is None else a / b

    lines.append('')
    two_default = median(rows[-2][0])
    two_conf = median('2 ranks, configured')
    r2 = ratio(two_default, two_conf)
    lines.append('- 2 ranks: default / configured = {} (acceptance: at least '
                 '5x): {}'.format(
                     '-' if r2 is None else '{:.1f}x'.format(r2),
                     'met' if r2 is not None and r2 >= 5 else 'NOT met'))
    one = {1: median('1 process, 1 thread'),
           2: median('1 process, 2 threads' if cores != 2 else rows[0][0])}
    conf = median('1 process, configured')
    if None not in one.values() and conf is not None:
        best = min(one, key=one.get)
        conf_threads = {r['pools'][0] for r in results['1 process, configured']
                        if len(r.get('pools', ())) == 1}
        same = conf_threads == {best}
        r1 = conf / one[best]
        lines.append(
            '- 1 process: configured / better of 1 and 2 threads ({} '
            'thread{}: {:.4f}) = {:.2f}; 1 thread vs 2: {:.2f}x faster '
            '(acceptance: no slower): {}'.format(
                best, '' if best == 1 else 's', one[best], r1,
                one[2] / one[1],
                'met' if r1 <= 1.0 or same else 'NOT met'))
        if same:
            lines.append('  (configured chose {} thread{}, the better row\'s '
                         'count: the same configuration, so their difference '
                         'is run-to-run noise)'.format(
                             best, '' if best == 1 else 's'))
    else:
        lines.append('- 1 process: a run failed; no ratio')
    report = '\n'.join(lines) + '\n'
    print(report, end='')
    if args.out:
        with open(args.out, 'w') as f:
            f.write(report)


if __name__ == '__main__':
    sys.exit(main())
