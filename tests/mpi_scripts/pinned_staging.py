"""'mpi' collectives staged through pinned memory, back to back.

Usage: ``mpiexec -n 2 python pinned_staging.py [--cpu] [--out OUT]``; each
rank writes its rounds, buffers, event waits and mismatches to
``OUT/rank<r>.json`` (``rank_record.py``), prints ``OK rank R ...`` and
exits 1 on a mismatch.

The copy of a pinned buffer to the device (``ndarray.set``) is
asynchronous, so a collective must not write pinned memory before the
previous collective's copy out of it has run
(``MpiCommunicator.pending_copies``). Two writers that nothing else orders:

- in ``all_gather_v`` rank 1 owns no arrays: it packs nothing, and MPI
  writes its pinned receive buffer at once. Before each all-gather the
  device is kept busy (matrix products queued first), so that the previous
  round's copy to the device starts late: without the wait, MPI overwrites
  what it has yet to copy;
- in ``allreduce_mean`` a host array is packed into the pinned buffer in
  place before a device array's (blocking) copy. The rounds alternate
  ``[host, device]`` and ``[device, host]``, so the host array lands where
  the previous round copied a device array from (a race only while that
  copy runs: checked, not forced).

Every round's results must be that round's values, exactly, though they
are only read at the end.
``--cpu``: NumPy arrays and host buffers, the same checks (the CPU suite
runs this). The GPU run has not been made from this repository's machines
yet (``scripts/gpu_check.sh`` makes it).
"""
import sys

# chainerkfac before chainer: it makes Chainer 7.8.1 import on NumPy 2
import chainerkfac  # NOQA: I100
import numpy

import rank_record
from chainerkfac.training import device as device_module

ROUNDS = 6
N = 1 << 20


def main():
    argv, out = rank_record.split_out(sys.argv[1:])
    comm = chainerkfac.create_communicator('mpi', cuda_aware=False)
    assert comm.size == 2, 'run under mpiexec -n 2'
    if '--cpu' in argv:
        xp, busy_n = numpy, 64
    else:  # pragma: no cover - needs a GPU
        device_module.select_gpu_or_exit('pinned_staging.py', comm,
                                         allow_shared=True)
        import cupy
        xp, busy_n = cupy, 2048
    busy = xp.ones((busy_n, busy_n), numpy.float32) / busy_n

    def keep_busy():
        x = busy
        for _ in range(20):
            x = x @ busy
        return x

    gathered, reduced, sinks = [], [], []
    for i in range(ROUNDS):
        value = numpy.float32(i + 1)
        sinks.append(keep_busy())
        if comm.rank == 0:
            own = [xp.full(N, value, numpy.float32),
                   xp.arange(7, dtype=numpy.float32) * value]
        else:
            own = []
        shapes = [xp.empty(N, numpy.float32), xp.empty(7, numpy.float32)]
        per_rank = [own if comm.rank == 0 else shapes, []]
        gathered.append(comm.all_gather_v(per_rank)[0])
        sinks.append(keep_busy())
        mine = numpy.float32(comm.rank + 1) * value
        arrays = [numpy.full(5, mine, numpy.float32),
                  xp.full(N, mine, numpy.float32)]
        order = 1 if i % 2 else -1
        reduced.append(comm.allreduce_mean(arrays[::order])[::order])
    bad = []
    for i in range(ROUNDS):
        value = numpy.float32(i + 1)
        full, ramp = (numpy.asarray(to_cpu(a))
                      for a in gathered[i])
        if not ((full == value).all() and (
                ramp == numpy.arange(7, dtype=numpy.float32) * value).all()):
            bad.append('all_gather_v round {}: got {} and {}, want {}'.format(
                i, numpy.unique(full)[:4], ramp, value))
        mean = numpy.float32(1.5) * value
        host, device = reduced[i]
        if not isinstance(host, numpy.ndarray):
            bad.append('allreduce_mean round {}: the host array came back '
                       'as {}'.format(i, type(host).__name__))
        device = numpy.asarray(to_cpu(device))
        if not ((host == mean).all() and (device == mean).all()):
            bad.append('allreduce_mean round {}: got {} and {}, want {}'
                       .format(i, numpy.unique(host), numpy.unique(device)[:4],
                               mean))
    kinds = sorted(set(str(key[2]) for key in comm._buffers))
    if xp is not numpy and ('pinned' not in kinds
                            or not comm.pending_copies.waits):
        bad.append('no staging through pinned memory: buffers {}, {} event '
                   'waits'.format(kinds, comm.pending_copies.waits))
    rank_record.write(out, comm, gpu=xp is not numpy, rounds=ROUNDS,
                      buffers=kinds, event_waits=comm.pending_copies.waits,
                      mismatches=bad)
    if bad:
        for line in bad:
            print('rank {}: MISMATCH {}'.format(comm.rank, line))
        sys.stdout.flush()
        sys.exit(1)
    print('OK rank {}: {} rounds of all_gather_v and allreduce_mean; buffers '
          '{}; event waits {}'.format(comm.rank, ROUNDS, ', '.join(kinds),
                                      comm.pending_copies.waits))


def to_cpu(array):
    if isinstance(array, numpy.ndarray):
        return array
    return array.get()  # pragma: no cover - needs a GPU


if __name__ == '__main__':
    main()
