#!/usr/bin/env python
"""Error and speed of the fp16 sum of DistributedKFAC's collectives, 2 to 1,024
ranks.

With ``comm_dtype='float16'`` the ReduceScatterV of stage 2 (and fp16
all-reduces) sum 16-bit words with a Python MPI op,
``chainerkfac.communicators.mpi_communicator._fp16_sum``: each pairwise
addition is done in fp32 and rounded to fp16. Before the cast every array is
multiplied by ``2**k`` (``packing.fp16_exponents(max, n_terms=P)``, ``max``
agreed over ranks) so that ``P * max`` lands in ``(2**13, 2**14]``
(``FP16_TARGET``); the owner divides the sum by ``P * 2**k`` in fp32.

**Error, by simulation.** P ranks' arrays are scaled and cast by the
package's own pack (``chainerkfac.cuda.ops.pack``), summed by calling the
package's ``_fp16_sum`` in the order an MPI algorithm applies it, and
unpacked by ``ops.unpack``; the result is compared with the float64 mean of
the fp32 inputs. Orders (every addition of one output element):

* ``ring``: sequential accumulation, ``P - 1`` additions on the longest
  path: ring reduce-scatter / all-reduce, and MPICH's pairwise exchange,
  which its ``Reduce_scatter`` picks for a commutative op once the send
  buffer reaches ``MPIR_CVAR_REDUCE_SCATTER_COMMUTATIVE_LONG_MSG_SIZE``
  (512 KB by default: every stage-2 buffer of ResNet-50): rank r adds the
  pieces of ranks r-1, r-2, ... one after the other into its own;
* ``halving``: recursive halving, partners ``P/2, P/4, ..., 1`` apart
  (MPICH's ``Reduce_scatter`` below 512 KB; Rabenseifner's all-reduce);
  ``log2 P`` additions (a non-power-of-two P folds its extra ranks first,
  one addition more);
* ``binomial``: binomial tree, partners ``1, 2, 4, ...`` apart, the lower
  rank accumulating (``MPI_Reduce``; recursive doubling, which MPICH's
  ``Allreduce`` uses for user-defined ops such as this one, adds the same
  pairs); ``ceil(log2 P)`` additions.

For a power-of-two P, ``halving`` and ``binomial`` are both balanced trees
of depth ``log2 P`` that pair different ranks; with ranks' values drawn
independently their errors are statistically the same.

Inputs (fp32, ``--values`` per rank): ``gradient``: a common signal N(0, 1)
plus independent rank noise N(0, ``--noise``**2) (the per-rank gradient of a
small local batch); ``factor``: positive entries of similar magnitude,
``f_j (1 + 0.1 n_ij)`` with ``f_j`` uniform in [0.5, 1.5].

Error columns: max and RMS over the elements of ``|mean_fp16 - mean_exact|``
divided by ``max_j |mean_exact_j|`` (the reduced array's max |value|).

**The bound the code guarantees.** Let ``u = 2**-11`` (fp16's unit
round-off). An addition rounds its exact sum ``a + b`` first to fp32 then to
fp16: relative error at most ``u' = u (1 + 2**-24) + 2**-24`` of ``|a + b|``
(normal range). The scale by ``2**k`` and the division by ``P 2**k`` are
exact (powers of two); the cast of each input rounds once more. A leaf
(rank) whose value passes through ``d`` additions on its way to the result
is therefore multiplied by at most ``d + 1`` factors ``(1 + e)``,
``|e| <= u'``, so, elementwise (Higham, Accuracy and Stability, sec. 4.2)::

    |mean_fp16_j - mean_j| <= gamma(D + 1) * mean_i |x_ij|  + subnormal term
    gamma(m) = m u' / (1 - m u'),  D = longest path: P - 1 (ring),
                                   ceil(log2 P) (+1 if folded) (trees)

The subnormal term (values below ``2**-14`` after scaling round with an
absolute error up to ``2**-25``) is at most ``(2P - 1) 2**-25 / (P 2**k)``,
below ``2**-37 * max_ij |x_ij|``: negligible. Relative to ``max |x|`` the
bound is ``gamma(D + 1)``: about ``(log2 P + 1) 2**-11`` for the trees
(0.54 % at P = 1,024) and ``P 2**-11 / (1 - P 2**-11)`` for the ring (100 %
at 1,024: the worst case of a long chain of roundings is useless, though
random rounding errors grow only like ``sqrt(P)``). For same-sign data
(the factors' entries here) ``mean_i |x_ij| = |mean_j|``: the bound is also
elementwise relative. The ``bound`` column is the elementwise bound's max
divided by ``max |mean|``. fp32's MPI.SUM satisfies the same bound with
``u = 2**-24`` (the ``fp32 ring`` column is its measured error).

No overflow: every partial sum is at most ``sum_i |fl(y_i)|(1 + gamma(D))
<= 2**14 * 2 < 65504`` while ``gamma(D) <= 1`` (ring up to P = 1,024).

**Speed.** ``mpiexec -n 2`` runs of ``Allreduce`` and ``Reduce_scatter`` on
``--sizes`` values: fp16 with the Python op vs fp32 with ``MPI.SUM`` (the
same number of values; fp16 moves half the bytes). Also, in one process,
the op itself (``_fp16_sum``) against NumPy's fp32 add of the same number of
values: the extra seconds per value the op costs, and the network bandwidth
below which halving the bytes pays for it (``break-even``). Packing and
casting are not timed (both precisions pack).

    .venv/bin/python benchmarks/fp16_reduction.py            # ~1 minute
    .venv/bin/python benchmarks/fp16_reduction.py --ranks 2,4,8 --values 512 \\
        --sizes 100000 --reps 1                              # seconds
    .venv/bin/python benchmarks/fp16_reduction.py --ranks 2,3,5,6,1000,2048 \\
        --values 65536                                       # larger

Prints the tables; writes nothing.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import chainerkfac  # NOQA: E402,F401
from chainerkfac.communicators import mpi_communicator as mc  # NOQA: E402
from chainerkfac.communicators.packing import fp16_exponents  # NOQA: E402
from chainerkfac.communicators.packing import FP16_TARGET  # NOQA: E402
from chainerkfac.cuda import ops  # NOQA: E402

U16 = 2.0 ** -11
U32 = 2.0 ** -24
#: relative error of one addition of the op: fp32 rounding, then fp16
U_OP = U16 * (1 + U32) + U32
ORDERS = ('ring', 'halving', 'binomial')


# --- the reduction orders ---------------------------------------------------
def fp16_add_into(src, dst):
    """``dst = src + dst`` row by row, by the package's MPI op (``dst`` rows
    written back when they are not a contiguous block)."""
    a = numpy.ascontiguousarray(src)
    b = numpy.ascontiguousarray(dst)
    mc._fp16_sum(a, b, None)
    if b is not dst:
        dst[...] = b


def depth(order, p):
    """Additions on the longest leaf-to-result path of ``order``."""
    if p == 1:
        return 0
    if order == 'ring':
        return p - 1
    levels = int(math.ceil(math.log2(p)))
    if order == 'halving' and p & (p - 1):
        return int(math.floor(math.log2(p))) + 1   # fold, then halving
    return levels


def reduce_fp16(y, order):
    """Sum over axis 0 of the fp16 ``(P, n)`` array ``y`` in ``order``.

    ``ring``: ``acc = y[0]; acc = op(y[1], acc); ...``. ``halving``: the
    ``P - 2**m`` extra ranks fold into ranks ``0..P-2**m-1`` first, then
    rank ``i`` adds rank ``i + h`` for ``h = 2**(m-1), ..., 1``.
    ``binomial``: for ``mask = 1, 2, 4, ...`` rank ``r`` (a multiple of
    ``2 mask``) adds rank ``r + mask`` when it exists.
    """
    y = y.copy()
    p = y.shape[0]
    if order == 'ring':
        acc = y[0].copy()
        for i in range(1, p):
            mc._fp16_sum(y[i], acc, None)
        return acc
    if order == 'halving':
        m = 1 << int(math.floor(math.log2(p)))
        if m < p:
            fp16_add_into(y[m:], y[:p - m])
        h = m // 2
        while h >= 1:
            fp16_add_into(y[h:2 * h], y[:h])
            h //= 2
        return y[0]
    if order == 'binomial':
        mask = 1
        while mask < p:
            lower = numpy.arange(0, p - mask, 2 * mask)
            dst = y[lower]
            fp16_add_into(y[lower + mask], dst)
            y[lower] = dst
            mask *= 2
        return y[0]
    raise ValueError(order)


def reduce_fp32_ring(x):
    acc = x[0].copy()
    for i in range(1, x.shape[0]):
        acc += x[i]
    return acc


def gamma(m, u):
    return m * u / (1 - m * u) if m * u < 1 else float('inf')


# --- inputs -----------------------------------------------------------------
def make_inputs(kind, p, n, noise, rng):
    if kind == 'gradient':
        signal = rng.standard_normal(n)
        x = signal + noise * rng.standard_normal((p, n))
    elif kind == 'factor':
        f = rng.uniform(0.5, 1.5, n)
        x = f * (1 + 0.1 * rng.standard_normal((p, n)))
        x = numpy.abs(x)
    else:
        raise ValueError(kind)
    return x.astype(numpy.float32)


def fp16_mean(x, order):
    """What the communicator computes: global max -> exponent -> pack
    (scale, cast) -> the op in ``order`` -> unpack (divide by P 2**k)."""
    p, n = x.shape
    gmax = float(numpy.abs(x).max())
    k = fp16_exponents([gmax], n_terms=p)[0]
    scale = 2.0 ** k
    y = numpy.empty(p * n, numpy.float16)
    ops.pack([x], [False], y, numpy.array([scale], numpy.float32))
    total = reduce_fp16(y.reshape(p, n), order)
    out = numpy.empty(n, numpy.float32)
    ops.unpack(total, [out], [False], numpy.array([p * scale], numpy.float32))
    return out, scale, gmax


def error_rows(ranks, n, noise, seed):
    rows = []
    for kind in ('gradient', 'factor'):
        for p in ranks:
            rng = numpy.random.RandomState(seed + p)
            x = make_inputs(kind, p, n, noise, rng)
            exact = x.astype(numpy.float64).mean(axis=0)
            ref = float(numpy.abs(exact).max())
            mean_abs = numpy.abs(x.astype(numpy.float64)).mean(axis=0)
            row = {'kind': kind, 'P': p}
            for order in ORDERS:
                got, scale, gmax = fp16_mean(x, order)
                err = numpy.abs(got.astype(numpy.float64) - exact)
                d = depth(order, p)
                bound = (gamma(d + 1, U_OP) * mean_abs.max()
                         + (2 * p - 1) * 2.0 ** -25 / (p * scale))
                row[order] = (err.max() / ref,
                              math.sqrt((err ** 2).mean()) / ref,
                              bound / ref, d)
                assert err.max() <= bound * (1 + 1e-12) or d * U_OP >= 1, (
                    kind, p, order, err.max(), bound)
                assert p * gmax * scale <= FP16_TARGET
            f32 = reduce_fp32_ring(x) / numpy.float32(p)
            row['fp32'] = float(numpy.abs(f32 - exact).max() / ref)
            rows.append(row)
    return rows


def print_error_table(rows, n, noise):
    print('fp16 mean vs exact mean, {} values per rank (gradient noise/signal '
          '= {}): max and RMS error / max|mean|, and the guaranteed bound '
          '(D = additions on the longest path)'.format(n, noise))
    head = '{:>8} {:>5}'.format('input', 'P')
    for order in ORDERS:
        head += ' | {:>4} {:>8} {:>8} {:>8}'.format(
            'D', order[:8] + ' max', 'rms', 'bound')
    head += ' | {:>9}'.format('fp32 ring')
    print(head)
    for row in rows:
        line = '{:>8} {:>5}'.format(row['kind'], row['P'])
        for order in ORDERS:
            mx, rms, bound, d = row[order]
            line += ' | {:>4} {:>8.2e} {:>8.2e} {:>8.2e}'.format(
                d, mx, rms, bound)
        line += ' | {:>9.2e}'.format(row['fp32'])
        print(line)
    print('all measured errors are within their bounds (checked); '
          'u = 2^-11 = {:.2e}'.format(U16))


# --- speed -------------------------------------------------------------------
def _fp16_op():
    op = getattr(mc, 'fp16_sum_op', None)
    if op is not None:
        return op()
    from mpi4py import MPI
    return MPI.Op.Create(mc._fp16_sum, commute=True)


def speed_worker(sizes, reps):
    """Under mpiexec: times the collectives; rank 0 prints one JSON line
    with the max over ranks of the best time of each (gathered by MPI)."""
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    op16 = _fp16_op()
    results = []
    for n in sizes:
        rng = numpy.random.RandomState(comm.rank)
        x32 = rng.standard_normal(n).astype(numpy.float32)
        x16 = x32.astype(numpy.float16)
        y32, y16 = numpy.empty_like(x32), numpy.empty_like(x16)
        counts = [n // comm.size + (1 if r < n % comm.size else 0)
                  for r in range(comm.size)]
        r32 = numpy.empty(counts[comm.rank], numpy.float32)
        r16 = numpy.empty(counts[comm.rank], numpy.float16)
        cases = {
            'allreduce fp32': lambda: comm.Allreduce(
                [x32, MPI.FLOAT], [y32, MPI.FLOAT], op=MPI.SUM),
            'allreduce fp16': lambda: comm.Allreduce(
                [x16, MPI.UINT16_T], [y16, MPI.UINT16_T], op=op16),
            'reduce_scatter fp32': lambda: comm.Reduce_scatter(
                [x32, MPI.FLOAT], [r32, MPI.FLOAT], counts, op=MPI.SUM),
            'reduce_scatter fp16': lambda: comm.Reduce_scatter(
                [x16, MPI.UINT16_T], [r16, MPI.UINT16_T], counts, op=op16),
        }
        for name, fn in cases.items():
            fn()        # warm-up
            best = float('inf')
            for _ in range(reps):
                comm.Barrier()
                start = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - start)
            best = comm.allreduce(best, op=MPI.MAX)
            results.append({'n': n, 'case': name, 'seconds': best})
        # the fp16 result must be the fp16 sum (2 ranks: one addition)
        if comm.size == 2:
            mine = numpy.ascontiguousarray(x16)
            other = comm.sendrecv(mine, dest=1 - comm.rank,
                                  source=1 - comm.rank)
            expect = (mine.astype(numpy.float32) + other.astype(
                numpy.float32)).astype(numpy.float16)
            comm.Allreduce([x16, MPI.UINT16_T], [y16, MPI.UINT16_T], op=op16)
            assert numpy.array_equal(y16.view(numpy.uint16),
                                     expect.view(numpy.uint16))
    gathered = comm.gather(results, root=0)
    if comm.rank == 0:
        assert all(len(g) == len(results) for g in gathered)
        print('SPEED_JSON ' + json.dumps({'size': comm.size,
                                          'results': results}))


def op_throughput(n, reps):
    """Seconds per value of the fp16 op and of NumPy's fp32 add, in one
    process (what the MPI library calls on each received piece)."""
    rng = numpy.random.RandomState(0)
    a32 = rng.standard_normal(n).astype(numpy.float32)
    b32 = rng.standard_normal(n).astype(numpy.float32)
    a16, b16 = a32.astype(numpy.float16), b32.astype(numpy.float16)

    def best(fn):
        fn()
        t = float('inf')
        for _ in range(max(reps, 3)):
            start = time.perf_counter()
            fn()
            t = min(t, time.perf_counter() - start)
        return t / n
    t16 = best(lambda: mc._fp16_sum(a16, b16.copy(), None))
    t32 = best(lambda: numpy.add(a32, b32.copy(), out=None))
    # the copies cost the same share in both; time them to subtract
    tc16 = best(lambda: b16.copy())
    tc32 = best(lambda: b32.copy())
    return t16 - tc16, max(t32 - tc32, 0.0)


def run_speed(sizes, reps, ranks):
    mpiexec = os.path.join(os.path.dirname(sys.executable), 'mpiexec')
    env = dict(os.environ, OMP_NUM_THREADS='1', OPENBLAS_NUM_THREADS='1',
               PYTHONUNBUFFERED='1')
    cmd = [mpiexec, '-n', str(ranks), sys.executable, os.path.abspath(
        __file__), '--speed-worker', '--sizes',
        ','.join(str(s) for s in sizes), '--reps', str(reps)]
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         universal_newlines=True, env=env, timeout=600)
    lines = [line for line in out.stdout.splitlines()
             if line.startswith('SPEED_JSON ')]
    if out.returncode != 0 or len(lines) != 1:
        raise RuntimeError('speed run failed ({}):\n{}'.format(
            out.returncode, out.stdout[-3000:]))
    data = json.loads(lines[0][len('SPEED_JSON '):])
    table = {(r['n'], r['case']): r['seconds'] for r in data['results']}
    print('\nmpiexec -n {}: best of {} (max over ranks); fp16 = the Python op '
          'on 16-bit words, fp32 = MPI.SUM'.format(ranks, reps))
    print('{:>15} {:>10} {:>10} {:>10} {:>12} {:>12} {:>10}'.format(
        'collective', 'values', 'fp32 ms', 'fp16 ms', 'fp32 ns/val',
        'fp16 ns/val', 'fp16/fp32'))
    verdicts = []
    for coll in ('allreduce', 'reduce_scatter'):
        for n in sizes:
            t32, t16 = table[(n, coll + ' fp32')], table[(n, coll + ' fp16')]
            print('{:>15} {:>10} {:>10.2f} {:>10.2f} {:>12.2f} {:>12.2f} '
                  '{:>10.2f}'.format(coll, n, t32 * 1e3, t16 * 1e3,
                                     t32 / n * 1e9, t16 / n * 1e9, t16 / t32))
            verdicts.append((coll, n, t16 / t32))
    n_op = max(sizes)
    op16, add32 = op_throughput(n_op, reps)
    extra = op16 - add32
    print('one process, {} values: the fp16 op {:.2f} ns/value, NumPy fp32 '
          'add {:.2f} ns/value (per byte of payload: {:.2f} vs {:.2f} ns)'
          .format(n_op, op16 * 1e9, add32 * 1e9, op16 / 2 * 1e9,
                  add32 / 4 * 1e9))
    if extra > 0:
        print('break-even: the op costs {:.2f} ns more per value added than '
              'fp32; fp16 saves 2 bytes per value added in a reduce-scatter '
              '(ring: each rank sends and adds (P-1)/P of the values) and 4 '
              'in an all-reduce (it also all-gathers): it pays only where a '
              'rank sends at less than {:.2f} GB/s (reduce-scatter) or {:.2f} '
              'GB/s (all-reduce)'.format(extra * 1e9, 2 / extra / 1e9,
                                         4 / extra / 1e9))
    faster = [v for v in verdicts if v[2] < 1]
    if not faster:
        print('VERDICT: sending fp32 (MPI.SUM) is faster per value than fp16 '
              'with the Python op in every case here, although fp16 moves '
              'half the bytes.')
    elif len(faster) == len(verdicts):
        print('VERDICT: fp16 with the Python op is faster per value than fp32 '
              'in every case here.')
    else:
        print('VERDICT: mixed: fp16 faster in {} of {} cases ({}).'.format(
            len(faster), len(verdicts), ', '.join(
                '{} {}'.format(c, n) for c, n, _ in faster)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--ranks', default=','.join(
        str(2 ** i) for i in range(1, 11)),
        help='simulated process counts (default 2,4,...,1024)')
    parser.add_argument('--values', type=int, default=16384,
                        help='values per rank and input kind')
    parser.add_argument('--noise', type=float, default=3.0,
                        help='gradient rank noise / common signal (std)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--sizes', default='1000000,10000000',
                        help='values of the timed collectives')
    parser.add_argument('--reps', type=int, default=3)
    parser.add_argument('--mpi-ranks', type=int, default=2,
                        help='processes of the timed collectives')
    parser.add_argument('--no-speed', action='store_true',
                        help='skip the mpiexec timing')
    parser.add_argument('--speed-worker', action='store_true',
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = [int(float(s)) for s in args.sizes.split(',')]
    if args.speed_worker:
        speed_worker(sizes, args.reps)
        return
    ranks = [int(r) for r in args.ranks.split(',')]
    rows = error_rows(ranks, args.values, args.noise, args.seed)
    print_error_table(rows, args.values, args.noise)
    if not args.no_speed:
        run_speed(sizes, args.reps, args.mpi_ranks)


if __name__ == '__main__':
    main()
