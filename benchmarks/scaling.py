#!/usr/bin/env python
"""Step time of DistributedKFAC: measured at 1-4 processes, modelled at
8-4,096.

**Measured.** ``mpiexec -n 1, 2, 4`` runs of ``DistributedKFAC`` (every
statistic every step, ``stale=False``; fp32 communication) on the issue-12 CNN
(``convergence.IssueCNN``) with the same per-process batch (weak scaling, as
the paper), real Fashion-MNIST batches, per-stage times from the package's
``StageTimer``; each stage is the maximum over ranks, averaged over the timed
steps (the first step is untimed). This machine has **2 cores shared with other
jobs: 4 processes are oversubscribed** (2 per core), so the 4-process times
measure contention as much as the algorithm; ``OPENBLAS_NUM_THREADS=1`` in
every rank.

**Modelled.** One step of ResNet-50 (224x224, the configs' 32 images per
process) at P = 8 ... 4,096 processes, built from the package's real plan:

- the Fisher blocks (``fisher_blocks.create_fisher_blocks``, ``bn_fisher`` as
  the configs: 'full') and their owners (``assignment.assign_blocks``,
  'balanced');
- each convolution's output size from one real forward pass (a ``LinkHook``);
- flops per process: forward+backward ``3 x 2 T Cout Cin k^2`` per image (convs
  and the FC); statistics ``2 b T (d_in^2 + d_out^2)`` for every block on every
  process (its local batch b); inversion ``d^3`` per damped factor (Cholesky
  ``d^3/3`` + inverse ``2 d^3/3``) and preconditioning
  ``2 d_in d_out (d_in + d_out)`` for the blocks the process owns (the slowest
  process sets the step);
- bytes per process from ``traffic.planned_step_traffic`` (the stage-2
  ReduceScatterV and stage-4 AllGatherV counts, plus the fp32 all-reduce of BN
  running statistics), each collective a ring:
  ``(P - 1) alpha + bytes / beta``.

Hardware parameters (flags): NVIDIA V100 SXM2, 15.7 TFLOP/s fp32 peak, at 50%
for GEMM-like stages (forward/backward, statistics, preconditioning) and 10%
for the inversions (small Cholesky factorizations); network: ABCI's InfiniBand
EDR, 100 Gb/s per HCA, two HCAs per 4-GPU node, so beta = 6.25 GB/s per GPU,
alpha = 5 us per ring step. No overlap of communication with computation (the
package's default). A "stale" column scales statistics, inversion and the
factors' share of stage 2 by ``--refresh`` (0.33: the README's measured
fraction).

    .venv/bin/python benchmarks/scaling.py                  # ~3-5 min here
    .venv/bin/python benchmarks/scaling.py --no-measure     # the model only
    # tiny:
    .venv/bin/python benchmarks/scaling.py --procs 1,2 --steps 2 --batch 16

Writes ``OUT/scaling.json``, ``OUT/measured.csv``, ``OUT/model.csv`` and
``OUT/scaling_model.png`` (default ``benchmarks/results/fidelity/scaling``).
"""
import argparse
import csv
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

# chainerkfac before chainer: it makes Chainer 7.8.1 import on NumPy 2
import chainerkfac  # NOQA: E402
import chainer  # NOQA: E402
import chainer.links as L  # NOQA: E402
import numpy  # NOQA: E402
from chainerkfac import assignment as assignment_module  # NOQA: E402
from chainerkfac import fisher_blocks  # NOQA: E402
from chainerkfac.optimizers.traffic import planned_step_traffic  # NOQA: E402
from chainerkfac.profiling import STAGES  # NOQA: E402

DEFAULT_OUT = os.path.join(ROOT, 'benchmarks', 'results', 'fidelity',
                           'scaling')
RESULT = 'SCALING_RESULT '
MPIEXEC = os.path.join(os.path.dirname(sys.executable), 'mpiexec')
MODEL_STAGES = ('forward_backward', 'statistics', 'inversion',
                'preconditioning', 'reduce_scatter', 'all_gather',
                'allreduce_bn')


# --- measured ----------------------------------------------------------------

def worker(steps, batch):
    """One rank of the measured run; rank 0 prints one RESULT line."""
    import chainer.functions as F
    from chainerkfac.datasets import load_fashion_mnist
    from chainerkfac.profiling import StageTimer
    from chainerkfac.training import allocator
    import convergence
    allocator.configure_allocator()
    chainerkfac.use_float64_bn_statistics()   # CPU BN batch sums in float64
    comm = chainerkfac.create_communicator('mpi')
    rank, size = comm.rank, comm.size
    x, t = load_fashion_mnist('train', limit=(steps + 1) * batch * size)
    numpy.random.seed(0)
    model = convergence.IssueCNN()
    opt = chainerkfac.DistributedKFAC(comm, lr=0.05, momentum=0.9,
                                      damping=1e-2, cov_ema_decay=0.1,
                                      bn_fisher='unit', stale=False)
    opt.setup(model)

    def lossfun(xb, tb):
        return F.softmax_cross_entropy(model(xb), tb)

    rows = []
    for step in range(steps + 1):
        lo = (step * size + rank) * batch
        timer = StageTimer()
        opt.timer = timer
        comm.mpi_comm.Barrier()
        start = time.perf_counter()
        opt.update(lossfun, x[lo:lo + batch], t[lo:lo + batch])
        total = time.perf_counter() - start
        if step:
            rows.append(dict(timer.seconds, total=total))
    gathered = comm.mpi_comm.gather(rows, root=0)
    if rank == 0:
        stages = list(STAGES) + ['total']
        per_stage = {s: float(numpy.mean([max(r[i].get(s, 0.0)
                                              for r in gathered)
                                          for i in range(steps)]))
                     for s in stages}
        print(RESULT + json.dumps(dict(procs=size, batch_per_proc=batch,
                                       steps=steps, stages=per_stage)),
              flush=True)


def measure(procs, steps, batch, timeout):
    results = []
    for n in procs:
        env = dict(os.environ, OMP_NUM_THREADS='1', OPENBLAS_NUM_THREADS='1',
                   PYTHONUNBUFFERED='1')
        cmd = [MPIEXEC, '-n', str(n), sys.executable,
               os.path.abspath(__file__), '--worker', '--steps', str(steps),
               '--batch', str(batch)]
        print('measuring: {}'.format(' '.join(
            cmd[:3] + ['python', 'scaling.py'] + cmd[4:])), flush=True)
        start = time.time()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, env=env,
                              timeout=timeout, universal_newlines=True)
        lines = [ln for ln in proc.stdout.splitlines()
                 if ln.startswith(RESULT)]
        if proc.returncode != 0 or not lines:
            raise SystemExit('mpiexec -n {} failed ({}):\n{}'.format(
                n, proc.returncode, proc.stdout[-3000:]))
        res = json.loads(lines[0][len(RESULT):])
        res['command_seconds'] = time.time() - start
        results.append(res)
        print('  {} procs: {:.2f} s/step ({})'.format(
            n, res['stages']['total'], ', '.join(
                '{} {:.2f}'.format(s, res['stages'][s]) for s in STAGES)),
            flush=True)
    return results


# --- modelled ----------------------------------------------------------------

class _Shapes(chainer.LinkHook):
    """Records each Convolution2D/Linear link's output shape in one forward."""
    name = 'scaling_shapes'

    def __init__(self):
        self.out = {}

    def forward_postprocess(self, args):
        if isinstance(args.link, (L.Convolution2D, L.Linear)):
            self.out[id(args.link)] = args.out.shape


def resnet50_plan(bn_fisher='full'):
    """The blocks of ResNet-50 with their per-image forward flops and dims."""
    from models import resnet
    numpy.random.seed(0)
    model = resnet.ResNet50()
    hook = _Shapes()
    with chainer.using_config('train', False), \
            chainer.no_backprop_mode(), hook:
        model(numpy.zeros((1, 3, 224, 224), numpy.float32))
    blocks, _ = fisher_blocks.create_fisher_blocks(model, bn_fisher)
    plan = []
    for b in blocks:
        dims = b.inverted_dims()
        entry = dict(name=b.name, dims=dims,
                     cost=assignment_module.block_cost(b),
                     kind=type(b).__name__, T=1, fwd=0.0, stats_per_image=0.0)
        if len(dims) == 2 and not isinstance(b.link, L.BatchNormalization):
            d_in, d_out = dims
            shape = hook.out[id(b.link)]
            T = int(numpy.prod(shape[2:])) if len(shape) == 4 else 1
            w = b.link.W.shape
            entry.update(T=T, fwd=2.0 * T * w[0] * int(numpy.prod(w[1:])),
                         stats_per_image=2.0 * T * (d_in ** 2 + d_out ** 2))
        else:   # BN: per-example (g_gamma, g_beta) and their products, O(T C)
            c = b.link.gamma.shape[0]
            T = int(numpy.prod(hook.out.get(id(b.link), (1, 1, 1, 1))[2:]))
            entry.update(stats_per_image=2.0 * (2 * c) ** 2)
        plan.append(entry)
    return model, plan


def model_step(model, plan, P, hw, refresh=1.0):
    """Seconds per stage of one step on P processes (the slowest process)."""
    b = hw['batch']
    gemm = hw['tflops'] * 1e12 * hw['gemm_eff']
    inv = hw['tflops'] * 1e12 * hw['inv_eff']
    fwd = sum(e['fwd'] for e in plan) * b
    stats = sum(e['stats_per_image'] for e in plan) * b
    owners = assignment_module.assign_blocks([e['cost'] for e in plan], P,
                                             'balanced')
    inv_load = numpy.zeros(P)
    pre_load = numpy.zeros(P)
    for e, r in zip(plan, owners):
        inv_load[r] += sum(float(d) ** 3 for d in e['dims'])
        if len(e['dims']) == 2 and e['kind'] != 'BatchNormalizationBlock':
            d_in, d_out = e['dims']
            pre_load[r] += 2.0 * d_in * d_out * (d_in + d_out)
        else:
            pre_load[r] += 2.0 * sum(d * d for d in e['dims'])
    traffic = planned_step_traffic(model, P, 'float32', hw['bn_fisher'],
                                   'balanced')
    from chainerkfac.communicators.base import ring_all_gather
    from chainerkfac.communicators.base import ring_reduce_scatter
    from chainerkfac.communicators.base import ring_allreduce
    s2, s4 = traffic['stage2_sent'], traffic['stage4_sent']
    # the factors' share of stage 2 (stale statistics send only refreshed ones)
    n_params = sum(traffic['stage4_counts'])   # parameters only
    factor_share = 1.0 - n_params / float(sum(traffic['stage2_counts']))
    ranks = sorted(set([0, P - 1, int(numpy.argmax(s2))]))
    rs_bytes = max(ring_reduce_scatter(s2, r)[0] for r in ranks) * 4
    ag_bytes = max(ring_all_gather(s4, r)[0] for r in ranks) * 4
    bn_extra = sum(2 * lk.avg_mean.size for lk in model.links()
                   if isinstance(lk, L.BatchNormalization))
    ar_bytes = ring_allreduce(bn_extra, P) * 4
    alpha, beta = hw['alpha'], hw['beta']
    rs_bytes_eff = rs_bytes * (1 - factor_share * (1 - refresh))
    stages = dict(
        forward_backward=3 * fwd / gemm,
        statistics=refresh * stats / gemm,
        inversion=refresh * inv_load.max() / inv,
        preconditioning=pre_load.max() / gemm,
        reduce_scatter=(P - 1) * alpha + rs_bytes_eff / beta,
        all_gather=(P - 1) * alpha + ag_bytes / beta,
        allreduce_bn=2 * (P - 1) * alpha + ar_bytes / beta)
    info = dict(rs_bytes=rs_bytes, ag_bytes=ag_bytes, ar_bytes=ar_bytes,
                owners_with_blocks=len(set(owners)),
                largest_inversion_flops=float(inv_load.max()),
                factor_share_stage2=factor_share)
    return stages, info


def run_model(ranks, hw, refresh):
    model, plan = resnet50_plan(hw['bn_fisher'])
    rows = []
    for P in ranks:
        every, info = model_step(model, plan, P, hw)
        stale, _ = model_step(model, plan, P, hw, refresh)
        comm = (every['reduce_scatter'] + every['all_gather']
                + every['allreduce_bn'])
        rows.append(dict(procs=P, global_batch=P * hw['batch'], stages=every,
                         total=sum(every.values()),
                         stale_total=sum(stale.values()),
                         sgd_total=every['forward_backward'] +
                         2 * (P - 1) * hw['alpha'] +
                         2 * (P - 1) * 25.6e6 * 4 / P / hw['beta'],
                         comm=comm, dominant=max(every, key=every.get),
                         **info))
    return plan, rows


# --- report ------------------------------------------------------------------

def write(out, measured, plan, rows, hw, refresh):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, 'scaling.json'), 'w') as f:
        json.dump(dict(measured=measured, model=rows, hardware=hw,
                       refresh=refresh, blocks=len(plan),
                       note='measured on 2 shared CPU cores (4 processes '
                       'oversubscribed); model: ResNet-50 on V100-class '
                       'GPUs and InfiniBand EDR'), f, indent=1)
    if measured:
        with open(os.path.join(out, 'measured.csv'), 'w', newline='') as f:
            w = csv.writer(f)
            w.writerow(['procs', 'batch_per_proc', 'total'] + list(STAGES))
            for m in measured:
                w.writerow([m['procs'], m['batch_per_proc'],
                            '{:.4f}'.format(m['stages']['total'])] +
                           ['{:.4f}'.format(m['stages'][s]) for s in STAGES])
    with open(os.path.join(out, 'model.csv'), 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['procs', 'global_batch', 'total_s', 'stale_total_s',
                    'sgd_total_s'] + list(MODEL_STAGES) +
                   ['reduce_scatter_bytes', 'all_gather_bytes',
                    'ranks_owning_blocks', 'dominant'])
        for r in rows:
            w.writerow([r['procs'], r['global_batch'],
                        '{:.4f}'.format(r['total']),
                        '{:.4f}'.format(r['stale_total']),
                        '{:.4f}'.format(r['sgd_total'])] +
                       ['{:.4f}'.format(r['stages'][s])
                        for s in MODEL_STAGES] +
                       [r['rs_bytes'], r['ag_bytes'], r['owners_with_blocks'],
                        r['dominant']])
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 2 if measured else 1, figsize=(11 if measured
                                                             else 6, 3.8),
                             squeeze=False)
    ax = axes[0][0]
    ps = [r['procs'] for r in rows]
    bottom = numpy.zeros(len(rows))
    for s in MODEL_STAGES:
        v = numpy.array([r['stages'][s] for r in rows])
        ax.bar(range(len(rows)), v, bottom=bottom, label=s)
        bottom += v
    ax.plot(range(len(rows)), [r['stale_total'] for r in rows], 'k--o',
            label='total, stale (refresh {:.2f})'.format(refresh))
    ax.plot(range(len(rows)), [r['sgd_total'] for r in rows], 'k:s',
            label='SGD (fwd/bwd + allreduce)')
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([str(p) for p in ps], fontsize=7)
    ax.set_xlabel('processes (GPUs), 32 images each')
    ax.set_ylabel('modelled seconds per step')
    ax.set_title('ResNet-50 K-FAC step, V100 + IB EDR model', fontsize=9)
    ax.set_ylim(0, 1.45 * max(r['total'] for r in rows))
    ax.legend(fontsize=6, ncol=3, loc='upper left')
    if measured:
        ax = axes[0][1]
        bottom = numpy.zeros(len(measured))
        for s in STAGES:
            if s == 'statistics':   # inside forward_backward
                continue
            v = numpy.array([m['stages'][s] for m in measured])
            ax.bar(range(len(measured)), v, bottom=bottom, label=s)
            bottom += v
        ax.set_xticks(range(len(measured)))
        ax.set_xticklabels([str(m['procs']) for m in measured])
        ax.set_xlabel('mpiexec -n (2 shared cores: 4 oversubscribed)')
        ax.set_ylabel('s/step, each stage max over ranks')
        ax.plot(range(len(measured)), [m['stages']['total'] for m in measured],
                'k--o', label='step total (max over ranks)')
        ax.set_title('issue-12 CNN, {} images per process, CPU'.format(
            measured[0]['batch_per_proc']), fontsize=9)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(os.path.join(out, 'scaling_model.png'), dpi=90)
    plt.close(fig)


def report(measured, rows, hw):
    lines = []
    if measured:
        lines.append('measured (issue-12 CNN, per-process batch {}, CPU, '
                     '2 shared cores; 4 processes oversubscribed), s/step, '
                     'max over ranks:'.format(measured[0]['batch_per_proc']))
        lines.append('{:>5} {:>7}  {}'.format('procs', 'total', ' '.join(
            '{:>9}'.format(s[:9]) for s in STAGES)))
        for m in measured:
            lines.append('{:>5} {:7.3f}  {}'.format(
                m['procs'], m['stages']['total'], ' '.join(
                    '{:9.3f}'.format(m['stages'][s]) for s in STAGES)))
    lines.append('model: ResNet-50, {} images/process; {:.1f} TFLOP/s x '
                 '{:.0%} (GEMM) / {:.0%} (inversion); ring collectives alpha '
                 '{:.0f} us, beta {:.2f} GB/s per process; ms/step:'.format(
                     hw['batch'], hw['tflops'], hw['gemm_eff'], hw['inv_eff'],
                     hw['alpha'] * 1e6, hw['beta'] / 1e9))
    lines.append('{:>5} {:>8} {:>7} {:>7} {:>6}  {}  {}'.format(
        'procs', 'batch', 'total', 'stale', 'SGD', ' '.join(
            '{:>8}'.format(s[:8]) for s in MODEL_STAGES), 'dominant'))
    for r in rows:
        lines.append('{:>5} {:>8} {:7.1f} {:7.1f} {:6.1f}  {}  {}'.format(
            r['procs'], r['global_batch'], 1e3 * r['total'],
            1e3 * r['stale_total'], 1e3 * r['sgd_total'], ' '.join(
                '{:8.1f}'.format(1e3 * r['stages'][s]) for s in MODEL_STAGES),
            r['dominant']))
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--procs', default='1,2,4')
    p.add_argument('--steps', type=int, default=3,
                   help='timed steps (+1 untimed)')
    p.add_argument('--batch', type=int, default=256, help='images per process')
    p.add_argument('--timeout', type=int, default=900)
    p.add_argument('--no-measure', action='store_true')
    p.add_argument('--ranks', default='8,16,32,64,128,256,512,1024,2048,4096')
    p.add_argument('--tflops', type=float, default=15.7)
    p.add_argument('--gemm-eff', type=float, default=0.5)
    p.add_argument('--inv-eff', type=float, default=0.1)
    p.add_argument('--alpha-us', type=float, default=5.0)
    p.add_argument('--beta-gbs', type=float, default=6.25)
    p.add_argument('--model-batch', type=int, default=32)
    p.add_argument('--bn-fisher', default='full')
    p.add_argument('--refresh', type=float, default=0.33)
    p.add_argument('--out', default=DEFAULT_OUT)
    p.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.steps, args.batch)
        return None
    measured = []
    if not args.no_measure:
        measured = measure([int(n) for n in args.procs.split(',')], args.steps,
                           args.batch, args.timeout)
    hw = dict(tflops=args.tflops, gemm_eff=args.gemm_eff, inv_eff=args.inv_eff,
              alpha=args.alpha_us * 1e-6, beta=args.beta_gbs * 1e9,
              batch=args.model_batch, bn_fisher=args.bn_fisher)
    plan, rows = run_model([int(r) for r in args.ranks.split(',')], hw,
                           args.refresh)
    write(args.out, measured, plan, rows, hw, args.refresh)
    print('\n'.join(report(measured, rows, hw)), flush=True)
    return dict(measured=measured, model=rows)


if __name__ == '__main__':
    main()
