"""Each rank creates the communicator and writes what its BLAS pools run with.

Usage: blas_threads.py OUT_DIR [BLAS_THREADS]
Writes OUT_DIR/rank<R>.json: the rank, the job's size, every BLAS pool's
thread count (threadpoolctl) after ``create_communicator('mpi')`` (with
``blas_threads=int(BLAS_THREADS)`` when given), the returned setting, and the
records chainerkfac.threads logged (level, message), a second configure call
included.
"""
import json
import logging
import os
import sys

import chainerkfac  # NOQA: I100 (first: makes Chainer importable on NumPy 2)
import threadpoolctl


class Records(logging.Handler):
    def __init__(self):
        super(Records, self).__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append((record.levelname, record.getMessage()))


def main():
    out = sys.argv[1]
    handler = Records()
    logger = logging.getLogger('chainerkfac.threads')
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    kw = {}
    if len(sys.argv) > 2:
        kw['blas_threads'] = int(sys.argv[2])
    comm = chainerkfac.create_communicator('mpi', **kw)
    # 'auto' again: no change, no line
    again = chainerkfac.configure_threads()
    pools = [dict(filepath=i['filepath'], num_threads=i['num_threads'])
             for i in threadpoolctl.threadpool_info()
             if i['user_api'] == 'blas']
    with open(os.path.join(out, 'rank{}.json'.format(comm.rank)), 'w') as f:
        json.dump(dict(rank=comm.rank, size=comm.size, pools=pools,
                       cores=len(os.sched_getaffinity(0)),
                       setting=again._asdict(), records=handler.records), f)


if __name__ == '__main__':
    main()
