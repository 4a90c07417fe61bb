"""BLAS threads per process: its share of the node's cores, unless the user
chose.

:func:`configure_threads` sets the thread count of every BLAS (and OpenMP)
thread pool loaded in the process, at run time, through ``threadpoolctl``. It
is called by :func:`chainerkfac.create_communicator` (every rank,
``blas_threads=`` there), by ``train_imagenet.py`` and the examples; a
single-process program calls it itself::

    import chainerkfac
    chainerkfac.configure_threads()   # or configure_threads(4), or
                                      # configure_threads(None): leave them

Nothing happens at import time.

**Why.** NumPy's and SciPy's wheels each bundle their own OpenBLAS, and each
OpenBLAS starts as many threads as the machine has cores. K-FAC calls both
every step: NumPy for the forward/backward products and the statistics, SciPy's
LAPACK (``potrf``/``potri``) for the inverses. OpenBLAS splits even the small
matrices of K-FAC's factors across its threads, and its threads busy-wait after
each call (for about 2**28 cycles, 0.1 s) instead of sleeping; the caller
busy-waits for its workers too. So every call hands work between threads, and
when a core has more runnable threads than it can run at once, each hand-over
waits for a scheduler time slice (milliseconds) instead of microseconds.
Measured on the 2-core development machine, while another job kept both cores
busy (small CNN, batch 32 per process, stale K-FAC; ``benchmarks/threads.py``,
``benchmarks/results/threads_*.md``, and timings of single calls):

- ``mpiexec -n 2`` with the default, 2 threads per library in each process (2 x
  3 busy threads on 2 cores): steps 4-10x longer than with 1 thread, the more
  the less CPU the other job took (issue 21 measured 14x and 21x).
- One process, 2 threads per library (the main thread and one worker per
  library: 3 busy threads on 2 cores): 1.6-2.0x longer in the benchmark, up to
      11x in other
  runs; six 9x9-72x72 Cholesky inverses (SciPy) took 14 ms instead of 0.055 ms,
  the caller and its worker each waiting for a core two thirds of the time.
  With this process's scheduling group given priority over the other job
  (nearly alone on the machine) 2.3-2.7x longer, and still 1.2x when only *one*
  of the two libraries had 2
  threads: the two pools together oversubscribe the cores even when nothing
      else
  runs. Element-wise NumPy work between the calls was not slowed. With
  ``OPENBLAS_THREAD_TIMEOUT=4`` (workers sleep at once; read only when OpenBLAS
  loads, so it cannot be set from here) a step with 2 threads took as long as
  with 1 (0.0073 against 0.0071 s): the busy-waiting costs, not the second
  thread.

**The default** (:func:`default_threads`): a process's share of the node's
cores is ``cores // local processes`` (at least 1), and the BLAS threads of all
its pools together fit in it: with ``p`` separate BLAS libraries loaded, each
gets ``(share - 1) // p + 1`` threads (``p (n - 1)`` workers plus the calling
thread <= share). With NumPy's and SciPy's OpenBLAS (``p = 2``): 1 thread for
one process on 2 cores, and for each of 2 processes on 2 cores; 4 for one
process on 8 cores; 2 for each of 2 processes on 8 cores. With one shared
library (``p = 1``) the whole share. A large model whose products dominate may
do better with the whole share: pass it (``configure_threads(n)``,
``create_communicator(..., blas_threads=n)``), or set ``OPENBLAS_NUM_THREADS``.

``cores`` is what the process may run on: its CPU affinity (``taskset``,
cpusets), the union over the node's processes under MPI (so a launcher's
binding counts), and at most its cgroup CPU quota (containers' ``--cpus``,
Kubernetes limits). The pools are those loaded when it is called
(``import chainerkfac`` loads NumPy's and SciPy's); a library loaded later
keeps its own default, so call it after importing one.

**The user's choice wins**: when any of :data:`USER_VARIABLES` is set
(non-empty) nothing is changed. It says so once per process in the log (logger
``chainerkfac.threads``, INFO, one line; under MPI rank 0 at INFO and the
others at DEBUG); :func:`log_to_stderr` shows it on stderr, as the scripts here
do once their devices are settled.
"""
import collections
import logging
import math
import numbers
import os
import sys

logger = logging.getLogger(__name__)

#: variables that choose BLAS/OpenMP threads; any of them set: nothing is
#: changed
USER_VARIABLES = ('OPENBLAS_NUM_THREADS', 'GOTO_NUM_THREADS',
                  'OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'BLIS_NUM_THREADS')
#: launchers' node-local process counts (MPICH's Hydra, Open MPI), read when no
#: communicator is given
LOCAL_SIZE_VARIABLES = ('MPI_LOCALNRANKS', 'OMPI_COMM_WORLD_LOCAL_SIZE')
#: launchers' global ranks: only rank 0 logs at INFO when no communicator is
#: given
RANK_VARIABLES = ('PMI_RANK', 'OMPI_COMM_WORLD_RANK')

#: what :func:`configure_threads` did. ``threads``: the count set (None when
#: nothing was set); ``source``: ``'auto'``, ``'argument'``, ``'environment'``
#: (a user variable was set: untouched) or ``'untouched'`` (``threads=None``);
#: ``local_ranks``, ``cores``, ``pools``: what the count was derived from (None
#: where nothing was derived); ``message``: the logged line.
ThreadSetting = collections.namedtuple(
    'ThreadSetting', 'threads source local_ranks cores pools message')

_setting = None
_rank_zero = True       # whether this process logged _setting at INFO
# whether _setting's line went to log_to_stderr's handler
_shown = False


def default_threads(cores, local_ranks=1, pools=1):
    """Threads per BLAS library for a process: ``(share - 1) // pools + 1``,
    ``share = max(1, cores // local_ranks)`` (the module docstring says why).

    Args:
        cores (int): the node's cores the processes may run on.
        local_ranks (int): processes sharing them.
        pools (int): separately threaded BLAS libraries in the process.
    """
    for name, value in (('cores', cores), ('local_ranks', local_ranks),
                        ('pools', pools)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError('chainerkfac: default_threads: {} must be a '
                             'positive int, not {!r}'.format(name, value))
    share = max(1, cores // local_ranks)
    return (share - 1) // pools + 1


def user_setting(environ=None):
    """``'NAME=value'`` for the first of :data:`USER_VARIABLES` set to a
    non-empty value in ``environ`` (default ``os.environ``), or None."""
    environ = os.environ if environ is None else environ
    for name in USER_VARIABLES:
        value = environ.get(name, '').strip()
        if value:
            return '{}={}'.format(name, value)
    return None


def _affinity():
    """The CPU numbers this process may run on."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return set(range(os.cpu_count() or 1))


def cgroup_cpu_limit(proc_cgroup='/proc/self/cgroup', root='/sys/fs/cgroup'):
    """CPUs this process's cgroup quota allows (rounded up), or None without a
    quota: cgroup v2 ``cpu.max``, or v1 ``cpu.cfs_quota_us``/``cfs_period_us``,
    in the process's own cgroup (``proc_cgroup`` names it) under ``root``."""
    try:
        with open(proc_cgroup) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(':', 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        path = path.strip('/')
        if controllers == '':   # v2
            candidates = [(os.path.join(root, path, 'cpu.max'),)]
        elif 'cpu' in controllers.split(','):
            candidates = [(os.path.join(root, d, path, 'cpu.cfs_quota_us'),
                           os.path.join(root, d, path, 'cpu.cfs_period_us'))
                          for d in (controllers, 'cpu', 'cpu,cpuacct')]
        else:
            continue
        for files in candidates:
            try:
                values = []
                for name in files:
                    with open(name) as f:
                        values += f.read().split()
            except OSError:
                continue
            try:
                quota, period = int(values[0]), int(values[1])
            except (IndexError, ValueError):   # 'max': this cgroup sets none
                break
            if quota > 0 and period > 0:
                return max(1, int(math.ceil(quota / float(period))))
            break
    return None


def _cores(cpus):
    limit = cgroup_cpu_limit()
    return len(cpus) if limit is None else max(1, min(len(cpus), limit))


def _node_view(comm):
    """``(local_ranks, cores, is_rank_zero)`` for this process; a collective
    over ``comm``'s ranks when one is given (mpi4py or ChainerMN)."""
    cpus = _affinity()
    if comm is None:
        local = 1
        for name in LOCAL_SIZE_VARIABLES:
            if os.environ.get(name, '').strip().isdigit():
                local = max(1, int(os.environ[name]))
                break
        rank = next((os.environ[n] for n in RANK_VARIABLES
                     if os.environ.get(n, '').strip().isdigit()), '0')
        return local, _cores(cpus), int(rank) == 0
    mpi_comm = getattr(comm, 'mpi_comm', comm)
    from mpi4py import MPI
    node = mpi_comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        union = set()
        for cpu_set in node.allgather(sorted(cpus)):
            union.update(cpu_set)
        local = node.size
    finally:
        node.Free()
    return local, _cores(union), mpi_comm.rank == 0


def _threadpoolctl():
    try:
        import threadpoolctl
    except ImportError:
        raise ImportError(
            'chainerkfac: setting the BLAS threads needs threadpoolctl (pip '
            'install threadpoolctl, pinned in requirements.txt); or set '
            'OPENBLAS_NUM_THREADS, or pass blas_threads=None')
    return threadpoolctl


def _blas_pools(threadpoolctl):
    info = threadpoolctl.threadpool_info()
    return max(1, len({i['filepath'] for i in info
                       if i['user_api'] == 'blas'}))


def _s(n):
    return '' if n == 1 else 's'


def _stderr_handler():
    for handler in logger.handlers:
        if getattr(handler, '_chainerkfac_stderr', False):
            return handler
    return None


def _announce(message, is_rank_zero):
    """Logs the new setting's line (INFO on rank 0, DEBUG elsewhere)."""
    global _rank_zero, _shown
    _rank_zero = is_rank_zero
    logger.log(logging.INFO if is_rank_zero else logging.DEBUG, '%s', message)
    _shown = _stderr_handler() is not None


def _checked(threads):
    """``threads`` as ``'auto'``, None or an int >= 1; ValueError otherwise."""
    if threads is None or (isinstance(threads, str) and threads == 'auto'):
        return threads
    if (isinstance(threads, numbers.Integral) and not isinstance(threads, bool)
            and threads >= 1):
        return int(threads)
    raise ValueError("chainerkfac: BLAS threads must be 'auto', None or a "
                     "positive int, not {!r}".format(threads))


def configure_threads(threads='auto', comm=None):
    """Sets this process's BLAS (and OpenMP) threads; returns a
    :class:`ThreadSetting`. The module docstring says what and why.

    Call it once, before training; every process of an MPI job calls it with
    ``comm`` (it is a collective then). A later ``'auto'`` call returns the
    first call's setting and changes nothing.

    Args:
        threads: ``'auto'`` (the default): :func:`default_threads` for this
            process's share of its node's cores, unless one of
            :data:`USER_VARIABLES` is set (then nothing changes); an int >= 1:
            that many threads in every pool, whatever the environment; None:
            leave the threads as they are.
        comm: the job's communicator (a ChainerMN or chainerkfac communicator,
            or an ``mpi4py`` ``Comm``), whose ranks on this node share its
            cores. Without one, a launcher's node-local count
            (:data:`LOCAL_SIZE_VARIABLES`) is used, else 1.

    Raises:
        ValueError: ``threads`` is none of these.
        ImportError: threadpoolctl is needed (to set a count) and missing.
    """
    global _setting
    threads = _checked(threads)
    if threads == 'auto' and _setting is not None:
        return _setting
    # the collective first, on every rank whatever it then decides
    local, cores, is_rank_zero = _node_view(comm)
    if threads is None:
        setting = ThreadSetting(None, 'untouched', None, None, None,
                                'chainerkfac: BLAS threads left as they are '
                                '(blas_threads=None)')
        logger.debug('%s', setting.message)
        return setting
    if threads == 'auto':
        chosen = user_setting()
        if chosen is not None:
            _setting = ThreadSetting(
                None, 'environment', local, cores, None,
                'chainerkfac: BLAS threads left as set by {}'.format(chosen))
            _announce(_setting.message, is_rank_zero)
            return _setting
    threadpoolctl = _threadpoolctl()
    pools = _blas_pools(threadpoolctl)
    if threads == 'auto':
        count, source = default_threads(cores, local, pools), 'auto'
        where = ("this process's {} core{}".format(cores, _s(cores))
                 if local == 1 else 'each of the {} processes sharing this '
                 "node's {} core{}".format(local, cores, _s(cores)))
        message = ('chainerkfac: BLAS threads set to {} per library ({} BLAS '
                   'librar{}) on {}; OPENBLAS_NUM_THREADS or blas_threads= '
                   'chooses another count'.format(
                       count, pools, 'y' if pools == 1 else 'ies', where))
    else:
        count, source = threads, 'argument'
        message = ('chainerkfac: BLAS threads set to {} (blas_threads={})'
                   .format(count, threads))
    threadpoolctl.threadpool_limits(limits=count)
    _setting = ThreadSetting(count, source, local, cores, pools, message)
    _announce(message, is_rank_zero)
    return _setting


def log_to_stderr():
    """Shows this module's line (INFO) on stderr, once per process: the
    setting already made, if any (written now), and any later one. What
    entry-point scripts call once their devices are settled, so that an error
    before it stays their only line. Idempotent; returns the handler."""
    global _shown
    handler = _stderr_handler()
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter('%(message)s'))
        handler._chainerkfac_stderr = True
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    if _setting is not None and not _shown:
        _shown = True
        if _rank_zero:
            handler.stream.write(_setting.message + '\n')
            handler.flush()
    return handler
