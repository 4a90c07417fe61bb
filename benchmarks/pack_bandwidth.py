#!/usr/bin/env python
"""Bandwidth of the one-launch pack kernel vs a device-to-device copy of the
same bytes.

The arrays are ResNet-50's stage-2 arrays (what the ReduceScatterV of a step
that refreshes everything packs): for every Fisher block, the gradient of each
parameter and each statistic; square statistics travel as upper triangles
(``d (d + 1) / 2`` values), the rest whole. Random values (square statistics
made exactly symmetric).

Timed, each as the mean over ``--reps`` calls after warm-up calls (CUDA events
on the GPU, wall clock on the CPU):

* ``copy``: a device-to-device copy (``cudaMemcpyAsync``) of as many bytes
  as the pack reads (the packed values in float32), i.e. the same bytes
  contiguous: the bandwidth a pack could at best reach;
* ``ops.pack`` into a float32 buffer, and into a float16 buffer with
  per-array scales (the fp16 communication path);
* ``ops.unpack`` back into preallocated arrays (triangles mirrored), float32
  and float16 with divisors;
* ``one array at a time``: packing by a gather or a copy per array (a few
  kernel launches each), the way a buffer is packed without the kernel.

Bandwidths count bytes read plus bytes written. The results are checked: the
float32 pack equals the one-array-at-a-time packing bit for bit, the fp16 pack
with scales equals it to within one fp16 rounding, and unpack(pack(x)) == x.

    python benchmarks/pack_bandwidth.py               # ResNet-50, GPU 0
    python benchmarks/pack_bandwidth.py --cpu-smoke   # ResNet-8, on the CPU

``--cpu-smoke`` only proves the script runs end to end (its figures mean
nothing). The GPU run has not been made from this repository's machines yet:
``scripts/gpu_check.sh`` makes it on a lent GPU machine.
"""
import argparse
import datetime
import os
import sys
import time

import numpy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import chainerkfac  # NOQA: E402,F401
from chainerkfac import fisher_blocks  # NOQA: E402
from chainerkfac.communicators.packing import packed_size  # NOQA: E402
from chainerkfac.training import device as device_module  # NOQA: E402
from models import resnet  # NOQA: E402


def stage2_items(model, bn_fisher):
    """``(shape, symmetric)`` of every stage-2 array, in block order (the
    rule of :func:`chainerkfac.optimizers.traffic.planned_step_traffic`)."""
    blocks, _ = fisher_blocks.create_fisher_blocks(model, bn_fisher)
    items = []
    for block in blocks:
        for p in block.params:
            items.append((tuple(p.shape), False))
        for shape in block.statistic_shapes().values():
            shape = tuple(shape)
            items.append((shape, len(shape) == 2 and shape[0] == shape[1]))
    return items


class NaivePack(object):
    """Packing one array at a time (a gather or a copy per array, then the
    scale and the cast): the reference of the checks, and the multi-launch
    packing that the one-launch kernel replaces."""

    def __init__(self, xp, items):
        self.xp, self.items = xp, items
        self.triu = {d: xp.triu_indices(d) for d in set(
            s[0] for s, sym in items if sym)}
        self.offsets = numpy.cumsum(
            [0] + [packed_size(s, sym) for s, sym in items]).tolist()

    def __call__(self, arrays, buffer, scales=None):
        for i, (a, (shape, sym)) in enumerate(zip(arrays, self.items)):
            values = a[self.triu[shape[0]]] if sym else a.reshape(-1)
            if scales is not None:
                values = values * scales[i]
            buffer[self.offsets[i]:self.offsets[i + 1]] = values


def random_arrays(xp, items, seed=0):
    rng = xp.random.RandomState(seed)
    arrays = []
    for shape, sym in items:
        a = rng.standard_normal(shape).astype(xp.float32)
        if sym:
            a = (a + a.T) * xp.float32(0.5)   # exactly symmetric
        arrays.append(xp.ascontiguousarray(a))
    return arrays


def timer(xp, reps, warmup):
    """``measure(fn)``: mean seconds per call of ``fn``."""
    def measure(fn):
        for _ in range(warmup):
            fn()
        if xp is numpy:
            start = time.perf_counter()
            for _ in range(reps):
                fn()
            return (time.perf_counter() - start) / reps
        import cupy
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        return cupy.cuda.get_elapsed_time(start, end) / 1e3 / reps
    return measure


def copier(xp, nbytes):
    """A device-to-device copy of ``nbytes`` (numpy.copyto on the CPU)."""
    n = nbytes // 4
    src, dst = xp.ones(n, xp.float32), xp.empty(n, xp.float32)
    if xp is numpy:
        return lambda: numpy.copyto(dst, src)
    return lambda: dst.data.copy_from_device_async(src.data, n * 4)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--arch', default='resnet50')
    p.add_argument('--bn_fisher', choices=('full', 'unit', 'diag'),
                   default='unit')
    p.add_argument('--reps', type=int, default=20)
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--cpu-smoke', dest='cpu_smoke', action='store_true',
                   help='ResNet-8 on the CPU, 2 repetitions')
    args = p.parse_args(argv)
    if args.cpu_smoke:
        args.arch, args.reps, args.warmup = 'resnet8', 2, 1
    return args


def main(argv=None):
    args = parse_args(argv)
    device = None
    if not args.cpu_smoke:
        device = device_module.select_gpu_or_exit(
            'pack_bandwidth.py', option='GPU run (--cpu-smoke runs on the '
            'CPU)')
    try:
        from chainerkfac.cuda import ops
    except ImportError as e:
        sys.stderr.write('pack_bandwidth.py: error: the pack kernel '
                         '(chainerkfac.cuda.ops) is not importable: {}\n'
                         .format(e))
        sys.exit(2)
    xp = numpy if device is None else device.xp
    where = (device_module.describe(device) if device is not None
             else 'CPU (--cpu-smoke: figures mean nothing; the ops run '
             'their NumPy reference)')
    print('{}  {}'.format(datetime.datetime.now().isoformat(
        timespec='seconds'), where), flush=True)

    kwargs = {} if args.arch.startswith('resnet50') else {'in_channels': 3}
    model = resnet.get_model(args.arch, 1000 if args.arch.startswith(
        'resnet50') else 10, **kwargs)
    items = stage2_items(model, args.bn_fisher)
    naive = NaivePack(xp, items)
    symmetric = [sym for _, sym in items]
    arrays = random_arrays(xp, items)
    total = naive.offsets[-1]
    full = sum(int(numpy.prod(s, dtype=numpy.int64)) for s, _ in items)
    # powers of two, as the fp16 path's shared scales are
    scales = xp.asarray([2.0 ** -(i % 5) for i in range(len(items))],
                        xp.float32)
    print('{} stage-2 arrays (bn_fisher={}): {} arrays, {} symmetric; {} '
          'values packed ({:.1f} MiB in float32) out of {} in full'.format(
              args.arch, args.bn_fisher, len(items), sum(symmetric), total,
              total * 4 / 2 ** 20, full), flush=True)

    measure = timer(xp, args.reps, args.warmup)
    buf32 = xp.empty(total, xp.float32)
    buf16 = xp.empty(total, xp.float16)
    outs32 = [xp.empty(s, xp.float32) for s, _ in items]
    written_unpack = full * 4          # mirrored triangles write both halves
    rows = []                          # (name, seconds, bytes moved)
    rows.append(('copy (float32, same bytes)', measure(copier(xp, total * 4)),
                 2 * total * 4))
    rows.append(('ops.pack -> float32', measure(
        lambda: ops.pack(arrays, symmetric, buf32)), total * 4 + total * 4))
    rows.append(('ops.pack -> float16, scaled', measure(
        lambda: ops.pack(arrays, symmetric, buf16, scales=scales)),
        total * 4 + total * 2))
    ops.pack(arrays, symmetric, buf32)
    rows.append(('ops.unpack float32', measure(
        lambda: ops.unpack(buf32, outs32, symmetric)),
        total * 4 + written_unpack))
    rows.append(('ops.unpack float16, divided', measure(
        lambda: ops.unpack(buf16, outs32, symmetric, divisors=scales)),
        total * 2 + written_unpack))
    reference = xp.empty(total, xp.float32)
    rows.append(('one array at a time', measure(
        lambda: naive(arrays, reference)), total * 4 + total * 4))
    copy_seconds = rows[0][1]
    print('{:<30} {:>10} {:>11} {:>9}'.format('operation', 'ms/call',
                                              'GB/s (r+w)', 'time/copy'))
    for name, seconds, moved in rows:
        print('{:<30} {:>10.4f} {:>11.1f} {:>9.2f}'.format(
            name, seconds * 1e3, moved / seconds / 1e9,
            seconds / copy_seconds))

    # checks
    ok = True
    ops.pack(arrays, symmetric, buf32)
    naive(arrays, reference)
    same = bool(xp.array_equal(buf32, reference))
    ok &= same
    print('check: ops.pack float32 == one array at a time: {}'.format(
        'yes' if same else 'NO'))
    ops.pack(arrays, symmetric, buf16, scales=scales)
    ref16 = xp.empty(total, xp.float16)
    naive(arrays, ref16, scales)
    diff = xp.abs(buf16.astype(xp.float32) - ref16.astype(xp.float32))
    bound = xp.abs(ref16.astype(xp.float32)) * 2.0 ** -10 + 2.0 ** -24
    close = bool((diff <= bound).all())
    ok &= close
    print('check: ops.pack float16 (scaled) == one array at a time, within '
          'one fp16 rounding: {}'.format('yes' if close else 'NO'))
    for out in outs32:
        out.fill(numpy.nan)
    ops.unpack(buf32, outs32, symmetric)
    back = all(bool(xp.array_equal(o, a)) for o, a in zip(outs32, arrays))
    ok &= back
    print('check: ops.unpack(ops.pack(x)) == x (float32): {}'.format(
        'yes' if back else 'NO'))
    sys.exit(0 if ok else 1)


if __name__ == '__main__':
    main()
