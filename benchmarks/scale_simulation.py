#!/usr/bin/env python
"""What each of P ranks builds for ResNet-50, simulated without MPI for P = 8
to 4,096.

One process plays one rank ``r`` of ``P`` at a time. It runs the package's
own code, not a re-implementation:

* **setup**: the communicator (ChainerMN's rank bookkeeping, through a
  stand-in ``mpi_comm``), ``DistributedKFAC.setup`` and the first update's
  ``_synchronize`` (the model-agreement check, the broadcast of rank 0's
  model, ``assignment.assign_blocks`` and the per-rank block lists);
* **one step's planning**: ``exchange_statistics_and_gradients`` (stage 2:
  the per-rank lists of gradients and due statistics, the ReduceScatterV's
  packing plans, layout and counts) and ``exchange_parameters`` (stage 4:
  the due keys of every rank, the per-rank lists, the AllGatherV's plans,
  heads, counts and displacements), for a step that refreshes every
  statistic (the first steps, and every step of the CVPR schedule).

The stand-ins:

* ``SimMpiComm`` plays the mpi4py communicator as rank ``r`` sees it: an
  object collective returns what ``r`` would receive (every rank's model is
  the same, so every contribution is a pickled copy of ``r``'s own:
  ``allgather`` returns P unpickled copies, as mpi4py does), a buffer
  collective moves nothing; calls and bytes received are counted.
* ``SimCommunicator`` subclasses the package's ``MpiCommunicator`` and
  replaces only the moving of bytes: its collectives call the
  communicator's own planning (``_plans_of`` / ``_reduce_scatter_layout``,
  ``_all_gather_plans``, ``_plan``, the ring counts and byte counters) and
  return arrays of the right shapes without packing or sending (this
  rank's own arrays; zeros for the other ranks' parameter steps). The
  buffers are not allocated: their sizes are reported.
* The statistics the forward/backward pass would capture are zero-stride
  views (no memory) of their real shapes, so nothing about data is timed.

Reported per rank (the max over the simulated ranks ``0`` and ``P - 1``):
time and ``tracemalloc`` peak of the setup and of the step's planning
(best of ``--reps`` steps; the memory pass runs separately so tracing does
not slow the timed one; the step's peak is taken at the end of the
AllGatherV, before the parameters are updated); the plans built in a
repeated step (the communicator keeps ``MAX_PLANS``); the kept buffers
(the stage-2 send buffer apart); the bytes sent per step (the
communicator's ring counters); the pickled bytes received by ChainerMN's
bookkeeping and by the model-agreement check, and what the all-gather of
pickled signatures that the check used to make would cost; the number of
broadcasts of the first update; the assignment's load imbalance
(``assignment.load_imbalance``) and the ranks that own no block. The
stage-4 parameter update after the AllGatherV (adding the 25.6 M gathered
values, O(model) whatever P) is timed apart (``apply``).

Growth: the least-squares log-log slope of each per-rank cost over the
last three P; above 1.3 is flagged super-linear (a quadratic cost has
slope 2; timings on a busy machine move by ~0.2).

    .venv/bin/python benchmarks/scale_simulation.py             # ~1 minute
    .venv/bin/python benchmarks/scale_simulation.py --ranks 8,16 --reps 1
    .venv/bin/python benchmarks/scale_simulation.py --ranks 1024,4096,16384
    .venv/bin/python benchmarks/scale_simulation.py --overlap   # A after fwd

Prints one table and the findings; writes nothing.
"""
import argparse
import gc
import os
import pickle
import sys
import time
import tracemalloc
import warnings

import numpy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import chainerkfac  # NOQA: E402,F401
from chainerkfac import assignment as assignment_module  # NOQA: E402
from chainerkfac.communicators import mpi_communicator as mc  # NOQA: E402
from chainerkfac.optimizers import DistributedKFAC  # NOQA: E402
from models import resnet  # NOQA: E402

RANKS_PER_NODE = 4      # processor names the stand-in reports (4 GPUs/node)


# --- stand-ins ---------------------------------------------------------------
class SimMpiComm(object):
    """The mpi4py communicator as rank ``rank`` of ``size`` sees it."""

    def __init__(self, rank, size):
        self.rank, self.size = rank, size
        self.calls = {}
        self.bytes_received = 0     # object collectives (pickles)
        self.buffer_bytes = 0       # buffer collectives

    def _note(self, name, nbytes):
        self.calls[name] = self.calls.get(name, 0) + 1
        if name[0].isupper():
            self.buffer_bytes += nbytes
        else:
            self.bytes_received += nbytes

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size

    # object collectives (pickled by mpi4py)
    def bcast(self, obj, root=0):
        data = pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
        self._note('bcast', len(data) if self.rank != root else 0)
        return pickle.loads(data)

    def allreduce(self, obj, op=None):
        data = pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
        self._note('allreduce', len(data))
        return pickle.loads(data)

    def allgather(self, obj):
        data = pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
        self._note('allgather', len(data) * self.size)
        return [pickle.loads(data) for _ in range(self.size)]

    def gather(self, obj, root=0):
        """ChainerMN's rank bookkeeping gathers processor names; rank q
        reports ``node{q // RANKS_PER_NODE}``."""
        if self.rank != root:
            self._note('gather', 0)
            return None
        objs = ['node{}'.format(q // RANKS_PER_NODE) for q in range(self.size)]
        self._note('gather', sum(len(pickle.dumps(o)) for o in objs))
        return objs

    def scatter(self, objs, root=0):
        if objs is None:    # not the root: what the root computes for us
            node, first = divmod(self.rank, RANKS_PER_NODE)
            nodes = -(-self.size // RANKS_PER_NODE)
            local = min(RANKS_PER_NODE, self.size - node * RANKS_PER_NODE)
            mine = (self.rank, first, local, node, nodes)
        else:
            mine = objs[self.rank]
        self._note('scatter', len(pickle.dumps(mine)))
        return mine

    # buffer collectives: nothing moves
    def Bcast(self, buf, root=0):
        array = buf[0] if isinstance(buf, (list, tuple)) else buf
        self._note('Bcast', array.nbytes if self.rank != root else 0)

    def Allreduce(self, send, recv, op=None):
        self._note('Allreduce', 0)

    def Barrier(self):
        self._note('Barrier', 0)


class _Done(object):
    def __init__(self, arrays):
        self._arrays = arrays

    def wait(self):
        return self._arrays


def _zeros_like_view(array, dtype=None):
    """A read-only zero-stride array of ``array``'s shape (no memory)."""
    return numpy.broadcast_to(numpy.zeros((), dtype or array.dtype),
                              array.shape)


class SimCommunicator(mc.MpiCommunicator):
    """The package's communicator with its planning, minus the bytes."""

    def __init__(self, mpi_comm):
        try:
            super(SimCommunicator, self).__init__(mpi_comm, cuda_aware=False)
        except TypeError:       # a version without the cuda_aware argument
            super(SimCommunicator, self).__init__(mpi_comm)
        # kept in one dict: ChainerMN communicators check every attribute
        # assignment (config scope), which would slow the counting down
        self.sim = {'plans_built': 0, 'plan_lookups': 0,
                    'buffers': {},         # purpose -> bytes of kept buffers
                    'gather_mark': None}   # (perf_counter, peak) at AG end

    def _plan(self, items):
        self.sim['plan_lookups'] += 1
        if tuple(items) not in self._plans:
            self.sim['plans_built'] += 1
        return super(SimCommunicator, self)._plan(items)

    def _note_buffer(self, purpose, nbytes):
        buffers = self.sim['buffers']
        buffers[purpose] = max(buffers.get(purpose, 0), nbytes)

    # stage 2 (and the forward-pass A reduction)
    def start_reduce_scatter_v(self, arrays_per_rank, comm_dtype='float32',
                               blocking=False, purpose='rs'):
        dtype = mc.comm_dtype_of(comm_dtype)
        if hasattr(self, '_reduce_scatter_layout'):
            layout = self._reduce_scatter_layout(arrays_per_rank)
            counts, flat_items = layout.counts, layout.flat_items
        else:   # older communicator: the same lists, built as it built them
            counts = [p.size for p in self._plans_of(arrays_per_rank)]
            flat_items = [(a.shape, sym) for seg in arrays_per_rank
                          for a, sym in seg]
        total = sum(counts)
        own = [a for a, _ in arrays_per_rank[self.rank]]
        if total == 0:
            return _Done([])
        self._plan(flat_items)              # the send buffer's plan
        itemsize = numpy.dtype(dtype).itemsize
        if dtype == numpy.float16:          # the scales' MAX all-reduce
            self._count_allreduce(len(flat_items), 8)
        self._count(mc.ring_reduce_scatter(counts, self.rank), itemsize)
        self._note_buffer(purpose + ' send', total * itemsize)
        self._note_buffer(purpose + ' recv', counts[self.rank] * itemsize)
        return _Done(own)

    def reduce_scatter_v(self, arrays_per_rank, comm_dtype='float32'):
        return self.start_reduce_scatter_v(arrays_per_rank, comm_dtype,
                                           blocking=True).wait()

    # stage 4
    def all_gather_v(self, arrays_per_rank, comm_dtype='float32'):
        dtype = mc.comm_dtype_of(comm_dtype)
        if hasattr(self, '_all_gather_plans'):
            plans, head, counts = self._all_gather_plans(arrays_per_rank,
                                                         dtype)
        else:   # older communicator: MpiCommunicator.all_gather_v's rule
            plans = [self._plan([(a.shape, False) for a in seg])
                     for seg in arrays_per_rank]
            head = [len(p) if dtype == numpy.float16 else 0 for p in plans]
            counts = [h + p.size for h, p in zip(head, plans)]
        total = sum(counts)
        # MpiCommunicator.all_gather_v: the displacements, O(P)
        displs = [0]
        for c in counts[:-1]:
            displs.append(displs[-1] + c)
        itemsize = numpy.dtype(dtype).itemsize
        self._count(mc.ring_all_gather(counts, self.rank), itemsize)
        self._note_buffer('ag send', counts[self.rank] * itemsize)
        self._note_buffer('ag recv', total * itemsize)
        out = []
        for q, seg in enumerate(arrays_per_rank):
            if q == self.rank:
                out.append(list(seg))
            else:
                out.append([_zeros_like_view(a, numpy.float32) for a in seg])
        peak = tracemalloc.get_traced_memory()[1] \
            if tracemalloc.is_tracing() else 0
        self.sim['gather_mark'] = (time.perf_counter(), peak)
        return out

    def allreduce_mean(self, arrays, comm_dtype='float32'):
        if not arrays:
            return []
        dtype = mc.comm_dtype_of(comm_dtype)
        plan = self._plan([(a.shape, False) for a in arrays])
        self._count_allreduce(plan.size, numpy.dtype(dtype).itemsize)
        self._note_buffer('allreduce', plan.size * numpy.dtype(dtype).itemsize)
        return list(arrays)


# --- one simulated rank ------------------------------------------------------
def build_model(name):
    numpy.random.seed(0)
    if name == 'resnet50':
        model = resnet.ResNet50()
    elif name == 'resnet20':
        model = resnet.ResNetCIFAR(20, n_class=10)
    else:
        raise ValueError(name)
    for p in model.params():
        p.grad = numpy.zeros_like(p.array)
    return model


def _capture_statistics(opt):
    """What the forward/backward hook leaves in the blocks: one
    (zero-stride) statistic of its real shape per due statistic."""
    opt._set_due_statistics()
    for block in opt.fisher_blocks:
        shapes = block.statistic_shapes()
        for name in block.statistic_names:
            if name in block.due:
                block.accumulate(name, numpy.broadcast_to(
                    numpy.zeros((), numpy.float32), tuple(shapes[name])))


def _owned_intervals(opt):
    return dict((b.schedule_keys[n], 1) for b in opt.owned_blocks
                for n in b.statistic_names if n in b.due)


class _Meter(object):
    """Wall time and tracemalloc peak (above the memory in use at start) of
    a phase; ``gc.collect()`` first so earlier garbage does not count."""

    def __init__(self, trace):
        self.trace = trace

    def start(self):
        gc.collect()
        if self.trace:
            tracemalloc.reset_peak()
            self.base = tracemalloc.get_traced_memory()[0]
        self.t = time.perf_counter()

    def stop(self, peak=None):
        elapsed = time.perf_counter() - self.t
        if not self.trace:
            return elapsed, 0
        if peak is None:
            peak = tracemalloc.get_traced_memory()[1]
        return elapsed, peak - self.base


def setup_rank(model, size, rank, opt_kwargs, meter):
    """Communicator, ``opt.setup`` and the first update's ``_synchronize``
    of rank ``rank``: ``(opt, comm, mpi_comm, measures)``."""
    mpi_comm = SimMpiComm(rank, size)
    out = {}
    meter.start()
    comm = SimCommunicator(mpi_comm)
    out['comm_s'] = time.perf_counter() - meter.t
    out['init_bytes'] = mpi_comm.bytes_received
    opt = DistributedKFAC(comm, lr=0.01, **opt_kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        opt.setup(model)
    parts = {}
    for name in ('_check_models_agree', '_broadcast_model'):
        method = getattr(opt, name)

        def measured(method=method, name=name):
            t, b = time.perf_counter(), mpi_comm.bytes_received
            result = method()
            parts[name] = (time.perf_counter() - t,
                           mpi_comm.bytes_received - b)
            return result
        setattr(opt, name, measured)   # _synchronize calls these
    assign = assignment_module.assign_blocks

    def measured_assign(*args, **kwargs):   # _synchronize calls it
        t = time.perf_counter()
        result = assign(*args, **kwargs)
        parts['assign_blocks'] = (time.perf_counter() - t, 0)
        return result
    assignment_module.assign_blocks = measured_assign
    try:
        t = time.perf_counter()
        opt._synchronize()
        sync_s = time.perf_counter() - t
        out['setup_s'], out['setup_peak'] = meter.stop()
    finally:
        assignment_module.assign_blocks = assign
    for name in ('_check_models_agree', '_broadcast_model'):
        delattr(opt, name)
    out['agree_s'], out['agree_bytes'] = parts.get('_check_models_agree',
                                                   (0.0, 0))
    out['bcast_s'] = parts.get('_broadcast_model', (0.0, 0))[0]
    out['bcast_bytes'] = mpi_comm.buffer_bytes
    out['assign_s'] = parts.get('assign_blocks', (0.0, 0))[0]
    out['sync_rest_s'] = sync_s - out['agree_s'] - out['bcast_s']
    out['lists_s'] = out['sync_rest_s'] - out['assign_s']
    out['mpi_calls'] = dict(mpi_comm.calls)
    return opt, comm, mpi_comm, out


def step_rank(opt, comm, meter):
    """One step's planning (stages 2 and 4) of a set-up rank."""
    _capture_statistics(opt)
    built0 = comm.sim['plans_built']
    lookups0 = comm.sim['plan_lookups']
    sent0 = comm.bytes_sent
    meter.start()
    if opt.communicate_after_forward:
        opt.after_forward()
    opt.exchange_statistics_and_gradients()
    t2 = time.perf_counter()
    opt._old_params = [[p.array for p in b.params] for b in opt.owned_blocks]
    opt.exchange_parameters(_owned_intervals(opt))
    end = time.perf_counter()
    gather_t, gather_peak = comm.sim['gather_mark']
    plan_s, peak = meter.stop(gather_peak)
    return {
        'stage2_s': t2 - meter.t,
        'stage4_s': gather_t - t2,
        'plan_s': gather_t - meter.t,
        'apply_s': end - gather_t,
        'step_peak': peak,
        'plans_built': comm.sim['plans_built'] - built0,
        'plan_lookups': comm.sim['plan_lookups'] - lookups0,
        'sent': comm.bytes_sent - sent0,
    }


def simulate_rank(model, size, rank, opt_kwargs, reps, trace):
    """Setup (best of ``reps``) and steps (a cold one, then the best of
    ``reps``) of rank ``rank`` of ``size``."""
    meter = _Meter(trace)
    best = None
    for _ in range(max(reps, 1)):
        opt, comm, mpi_comm, setup = setup_rank(model, size, rank,
                                                opt_kwargs, meter)
        if best is None or setup['setup_s'] < best['setup_s']:
            best = setup
    out = dict(best)
    costs = [assignment_module.block_cost(b) for b in opt.fisher_blocks]
    owners = assignment_module.block_owners(opt.fisher_blocks, size,
                                            opt.assignment)
    assert owners == list(opt.owners)
    out['imbalance'] = assignment_module.load_imbalance(costs, owners, size)
    out['idle'] = size - len(set(owners))
    out['owned_blocks'] = len(opt.owned_blocks)
    cold = step_rank(opt, comm, meter)
    out['cold_plans_built'] = cold['plans_built']
    steps = [step_rank(opt, comm, meter) for _ in range(max(reps, 1))]
    out.update(min(steps, key=lambda s: s['plan_s']))
    out['step_peak'] = max(s['step_peak'] for s in steps + [cold])
    out['buffers'] = dict(comm.sim['buffers'])
    return out, opt


def signature_cost(opt):
    """The model-agreement data of the design before the digest: every rank
    all-gathered its pickled signature (``len`` bytes each, P per rank, P^2
    in all) and kept P unpickled copies (``kept`` bytes each)."""
    sig = opt._model_signature()
    data = pickle.dumps(sig, pickle.HIGHEST_PROTOCOL)
    was = tracemalloc.is_tracing()
    if not was:
        tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    copy = pickle.loads(data)
    kept = tracemalloc.get_traced_memory()[0] - base
    del copy
    if not was:
        tracemalloc.stop()
    t = time.perf_counter()
    for _ in range(20):
        copy = pickle.loads(data)
        assert copy == sig
    return len(data), kept, (time.perf_counter() - t) / 20


# --- report ------------------------------------------------------------------
def slope(xs, ys, points=3):
    """Least-squares slope of log y against log x over the last
    ``points`` P (nan when a value is 0)."""
    xs, ys = xs[-points:], ys[-points:]
    if len(xs) < 2 or min(ys) <= 0:
        return float('nan')
    lx, ly = numpy.log(xs), numpy.log(ys)
    return float(numpy.polyfit(lx, ly, 1)[0])


TIME_KEYS = ('setup_s', 'comm_s', 'agree_s', 'bcast_s', 'sync_rest_s',
             'assign_s', 'lists_s', 'plan_s', 'stage2_s', 'stage4_s',
             'apply_s')
MAX_KEYS = ('setup_peak', 'step_peak', 'plans_built', 'cold_plans_built',
            'init_bytes', 'agree_bytes', 'bcast_bytes', 'sent')


def simulate(model, size, opt_kwargs, reps):
    """The row of one P: the max over ranks 0 and P-1, and the step memory
    of rank P-1 (which owns the fewest blocks: its peak is the lists and
    plans, not its own parameter steps)."""
    row = {'P': size}
    opt = None
    for rank in sorted(set([0, size - 1])):
        timing, opt = simulate_rank(model, size, rank, opt_kwargs, reps,
                                    trace=False)
        tracemalloc.start()
        try:
            memory, _ = simulate_rank(model, size, rank, opt_kwargs, 1,
                                      trace=True)
        finally:
            tracemalloc.stop()
        for key in TIME_KEYS + MAX_KEYS:
            source = memory if key.endswith('_peak') else timing
            row[key] = max(row.get(key, 0), source[key])
        for purpose, nbytes in timing['buffers'].items():
            key = 'buf ' + purpose
            row[key] = max(row.get(key, 0), nbytes)
        row['kept'] = max(row.get('kept', 0), sum(timing['buffers'].values()))
        if rank == size - 1:
            row['last_step_peak'] = memory['step_peak']
            row['last_owned'] = timing['owned_blocks']
        row['Bcast'] = timing['mpi_calls'].get('Bcast', 0)
        row['allgather'] = timing['mpi_calls'].get('allgather', 0)
        row['imbalance'] = timing['imbalance']
        row['idle'] = timing['idle']
    return row, opt


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--ranks', default=','.join(
        str(2 ** i) for i in range(3, 13)), help='P values (default 8..4096)')
    parser.add_argument('--model', default='resnet50',
                        choices=('resnet50', 'resnet20'))
    parser.add_argument('--comm-dtype', default='float32',
                        choices=('float32', 'float16'))
    parser.add_argument('--overlap', action='store_true',
                        help='communicate_after_forward=True (the A factors '
                        'reduced in a collective of their own)')
    parser.add_argument('--reps', type=int, default=3,
                        help='setups and steps timed (best taken)')
    args = parser.parse_args()
    ranks = [int(r) for r in args.ranks.split(',')]
    opt_kwargs = dict(comm_dtype=args.comm_dtype,
                      communicate_after_forward=args.overlap)
    model = build_model(args.model)
    rows = []
    opt = None
    print(HEADER.format(args.model, args.comm_dtype, ', overlap' if
                        args.overlap else ''))
    print(' '.join(_head(name, fmt) for name, fmt, _ in COLUMNS))
    for size in ranks:
        row, opt = simulate(model, size, opt_kwargs, args.reps)
        rows.append(row)
        print_row(row)
        sys.stdout.flush()
    findings(rows, opt)


HEADER = (
    '{} ({}{}), per rank: the max over ranks 0 and P-1. Setup = communicator '
    '+ opt.setup + the first update\'s _synchronize, ms: comm = ChainerMN '
    'rank bookkeeping, agree = model-agreement check, bcast = broadcast of '
    'the model, assign = assign_blocks, lists = the block costs and '
    'per-rank block lists; setup MB = its tracemalloc peak; init '
    'KB / agree B = pickled bytes received by the bookkeeping / the '
    'agreement check. Step = planning of stages 2 (st2) and 4 (st4, with '
    'this rank\'s own parameter steps: O(model/P)), ms; '
    'step MB = its peak, last KB = the peak of rank P-1 (owns the fewest '
    'blocks: lists and plans only); plans = packing plans built by a '
    'repeated step (cold = by the first); apply = stage 4 adding the '
    'gathered steps (ms, O(model)); rs send = the stage-2 send buffer, '
    'kept = all kept buffers (MB); '
    'sent = MB sent per step (ring); imbal = max/mean owner load; idle = '
    'ranks owning no block.')

COLUMNS = (
    ('P', '{:>5}', 'P'),
    ('setup', '{:>6.1f}', 'setup_s'),
    ('comm', '{:>5.1f}', 'comm_s'),
    ('agree', '{:>5.1f}', 'agree_s'),
    ('bcast', '{:>5.1f}', 'bcast_s'),
    ('assign', '{:>6.1f}', 'assign_s'),
    ('lists', '{:>5.1f}', 'lists_s'),
    ('setup MB', '{:>8.2f}', 'setup_peak'),
    ('init KB', '{:>7.1f}', 'init_bytes'),
    ('agree B', '{:>7}', 'agree_bytes'),
    ('step', '{:>6.2f}', 'plan_s'),
    ('st2', '{:>5.2f}', 'stage2_s'),
    ('st4', '{:>5.2f}', 'stage4_s'),
    ('step MB', '{:>7.2f}', 'step_peak'),
    ('last KB', '{:>7.1f}', 'last_step_peak'),
    ('plans', '{:>5}', 'plans_built'),
    ('cold', '{:>4}', 'cold_plans_built'),
    ('apply', '{:>5.1f}', 'apply_s'),
    ('rs send', '{:>7.1f}', 'buf rs send'),
    ('kept', '{:>6.1f}', 'kept'),
    ('sent', '{:>5.0f}', 'sent'),
    ('imbal', '{:>6.1f}', 'imbalance'),
    ('idle', '{:>5}', 'idle'),
)
MB = float(2 ** 20)


def _scaled(key, v):
    if key.endswith('_s'):
        return v * 1e3
    if key in ('setup_peak', 'step_peak', 'sent', 'kept') or key.startswith(
            'buf '):
        return v / MB
    if key in ('init_bytes', 'last_step_peak'):
        return v / 1024.0
    return v


def print_row(row):
    print(' '.join(fmt.format(_scaled(key, row.get(key, 0)))
                   for _, fmt, key in COLUMNS))


def _head(name, fmt):
    width = int(fmt[3:].split('.')[0].rstrip('}'))
    return '{:>{}}'.format(name, width)


FLAG_SLOPE = 1.3
GROWTH = (('setup time', 'setup_s'),
          ('setup memory', 'setup_peak'),
          ('bookkeeping bytes (rank 0)', 'init_bytes'),
          ('agreement bytes', 'agree_bytes'),
          ('assign_blocks time', 'assign_s'),
          ('step planning time', 'plan_s'),
          ('step memory, rank P-1', 'last_step_peak'),
          ('plans built per step', 'plans_built'),
          ('stage-2 send buffer', 'buf rs send'),
          ('bytes sent per step', 'sent'))


def findings(rows, opt):
    ps = [r['P'] for r in rows]
    print('\nGrowth per rank, log-log slope fitted over P = {} (1 = '
          'linear; > {} flagged: noise moves the slopes of timings on a '
          'busy machine by ~0.2):'.format(', '.join(str(p) for p in ps[-3:]),
                                          FLAG_SLOPE))
    flagged = []
    for label, key in GROWTH:
        s = slope(ps, [r.get(key, 0) for r in rows])
        flag = ' SUPER-LINEAR' if s > FLAG_SLOPE else ''
        if flag:
            flagged.append(label)
        print('  {:<28} {:>6.2f}{}'.format(label, s, flag))
    print('  super-linear per rank: {}'.format(', '.join(flagged) or 'none'))
    sig_bytes, sig_kept, sig_load_s = signature_cost(opt)
    last = rows[-1]
    print('\nModel agreement: {} B received per rank at P = {} ({} '
          'all-gathers). The all-gather of pickled signatures (the code '
          'before the digest) would receive {:.1f} MB, keep {:.1f} MB of '
          'unpickled copies and spend {:.2f} s unpickling and comparing them '
          'per rank, and move {:.1f} GB in all, at P = {} ({} B per '
          'signature).'.format(
              last['agree_bytes'], last['P'], last['allgather'],
              sig_bytes * last['P'] / MB, sig_kept * last['P'] / MB,
              sig_load_s * last['P'],
              sig_bytes * last['P'] ** 2 / 2.0 ** 30, last['P'], sig_bytes))
    print('First update: {} broadcasts of the model ({:.1f} MB), one per '
          'parameter and BN statistic array.'.format(
              last['Bcast'], last['bcast_bytes'] / MB))
    n_blocks = len(opt.fisher_blocks)
    for row in rows:
        if row['P'] not in (1024, 4096) and row is not rows[-1]:
            continue
        print('At P = {}: setup {:.0f} ms per rank (assign_blocks {:.0f}, '
              'per-rank lists {:.0f}); step planning {:.1f} ms (+ {:.0f} ms '
              'adding the gathered steps); kept buffers {:.0f} MB, of which '
              '{:.0f} MB the stage-2 send buffer (every rank packs every '
              'gradient and statistic); {:.0f} MB sent per step; {} of {} '
              'ranks '
              'own no block ({} blocks), the most loaded owner carries '
              '{:.0f}x the mean load; a ring collective takes {} '
              'steps.'.format(
                  row['P'], row['setup_s'] * 1e3, row['assign_s'] * 1e3,
                  row['lists_s'] * 1e3,
                  row['plan_s'] * 1e3, row['apply_s'] * 1e3,
                  row['kept'] / MB, row.get('buf rs send', 0) / MB,
                  row['sent'] / MB,
                  row['idle'], row['P'], n_blocks, row['imbalance'],
                  row['P'] - 1))
    return flagged


if __name__ == '__main__':
    main()
