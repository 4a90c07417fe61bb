#!/usr/bin/env python
"""Bytes each rank writes per snapshot of ResNet-50 (ImageNet, the
configs/bs4k_resnet50.json recipe): sharded snapshots
(chainerkfac.training.checkpoint) against the earlier per-rank format (every
rank the whole trainer).

For P processes the blocks are assigned as DistributedKFAC assigns them; the
owned state of a rank (EMAs and damped inverses of its factors, fp32; its
parameters' momentum) is filled with arrays of the real shapes, and the
rank-local state is what train_imagenet.py keeps per rank: the iterator's
order over its shard of the 1,281,167 training images, four random states,
and running mixup's last batch (32 x 3 x 224 x 224 fp32 and its soft
targets). Files are written with the real writer to a temporary directory
(uncompressed; the earlier format was zip-compressed, which saves a few per
cent on trained fp32 weights) for rank 0, the rank with the most owned state
('busiest'), the busiest of the others ('next') and a rank that owns nothing
('idle'); the totals over all ranks follow from the shapes.

    .venv/bin/python benchmarks/snapshot_size.py [--processes 8 128 1024]
"""
import argparse
import os
import shutil
import sys
import tempfile

import numpy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import chainerkfac  # NOQA: E402,I100 (before chainer)
import chainer  # NOQA: E402
from chainer.serializers import npz as chainer_npz  # NOQA: E402

from chainerkfac.datasets.augment import BatchAugmenter  # NOQA: E402
from chainerkfac.datasets.augment import RandomStateExtension  # NOQA: E402
from chainerkfac.optimizers import KFAC  # NOQA: E402
from chainerkfac.training import checkpoint  # NOQA: E402
from chainerkfac.training.classifier import Classifier  # NOQA: E402
from models import resnet  # NOQA: E402

TRAIN_IMAGES = 1281167
BATCH, CROP, CLASSES = 32, 224, 1000
OPT = 'updater/optimizer:main'
RANK_LOCAL = ('updater/iterator:main', 'extensions/random_state')


class Trainer(object):
    """The parts of train_imagenet.py's trainer that hold state."""

    def __init__(self, model, optimizer, iterator, random_state):
        self.model, self.optimizer = model, optimizer
        self.iterator, self.random_state = iterator, random_state

    def serialize(self, s):
        u = s['updater']
        self.iterator.serialize(u['iterator:main'])
        self.optimizer.serialize(u['optimizer:main'])
        self.model.serialize(u['model:main'])
        u('iteration', 1000)
        self.random_state.serialize(s['extensions']['random_state'])


def owned_bytes(block):
    """Bytes of a block's owned arrays (EMA + inverse per statistic, fp32;
    momentum of each parameter)."""
    stats = sum(2 * 4 * int(numpy.prod(shape))
                for shape in block.statistic_shapes().values())
    return stats + sum(p.array.nbytes for p in block.params)


def fill(optimizer, owners, rank):
    """Gives the blocks ``rank`` owns state of the real shapes; clears the
    others."""
    for block, owner in zip(optimizer.fisher_blocks, owners):
        mine = owner == rank
        for name, shape in block.statistic_shapes().items():
            value = numpy.zeros(shape, numpy.float32) if mine else None
            block.ema[name] = value
            block.inverse[name] = value
        for param in block.params:
            rule = param.update_rule
            rule._state = ({'v': numpy.zeros_like(param.array)} if mine
                           else None)
            rule.t = 1000 if mine else 0


def legacy_bytes(path, target):
    """Bytes of the earlier format's file: the whole trainer of one rank."""
    s = chainer_npz.DictionarySerializer()
    target.serialize(s)
    with open(path, 'wb') as f:
        numpy.savez(f, **s.target)
    return os.path.getsize(path)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--processes', type=int, nargs='+',
                   default=[8, 128, 1024])
    args = p.parse_args()
    numpy.random.seed(0)
    model = Classifier(resnet.get_model('resnet50', CLASSES))
    optimizer = KFAC(bn_fisher='full', stale=False)
    optimizer.setup(model)
    blocks = optimizer.fisher_blocks
    model_bytes = sum(p.array.nbytes for p in model.params()) + sum(
        numpy.asarray(v).nbytes for _, v in
        chainerkfac.optimizers.distributed_kfac.named_persistents(model))
    total_owned = sum(owned_bytes(b) for b in blocks)
    print('ResNet-50: {} Fisher blocks, {:.1f} MB of parameters and BN '
          'statistics, {:.1f} MB of owned state in all (EMAs, inverses, '
          'momentum)'.format(len(blocks), model_bytes / 1e6,
                             total_owned / 1e6))
    print('{:>6} {:>6} {:>9} {:>12} {:>12} {:>12} {:>14} {:>14}'.format(
        'P', 'idle', 'rank', 'owned MB', 'local MB', 'new MB', 'earlier MB',
        'new/earlier'))
    tmp = tempfile.mkdtemp(prefix='snapshot_size_')
    try:
        for size in args.processes:
            owners = checkpoint.block_owners(optimizer, size)
            per_rank = numpy.zeros(size)
            for block, owner in zip(blocks, owners):
                per_rank[owner] += owned_bytes(block)
            busiest = int(per_rank.argmax())
            second = int(per_rank[1:].argmax()) + 1 if size > 1 else 0
            idle = [r for r in range(size) if per_rank[r] == 0]
            shard = -(-TRAIN_IMAGES // size)
            new_total = legacy_total = 0.0
            rows = {}
            for rank in sorted(set([0, busiest, second] + idle[:1])):
                fill(optimizer, owners, rank)
                iterator = chainer.iterators.SerialIterator(
                    range(shard), BATCH,
                    order_sampler=chainer.iterators.ShuffleOrderSampler(
                        numpy.random.RandomState(rank)))
                augmenter = BatchAugmenter(CROP, (0.0,) * 3, (1.0,) * 3,
                                           CLASSES, mixup_alpha=0.4)
                augmenter.mixup.prev_x = numpy.zeros(
                    (BATCH, 3, CROP, CROP), numpy.float32)
                augmenter.mixup.prev_t = numpy.zeros((BATCH, CLASSES),
                                                     numpy.float32)
                target = Trainer(model, optimizer, iterator,
                                 RandomStateExtension(
                                     augmenter=augmenter,
                                     order=numpy.random.RandomState(0)))
                d = os.path.join(tmp, 'p{}_r{}'.format(size, rank))
                os.makedirs(d)
                written = checkpoint.write_files(
                    d, target, optimizer, rank, size, 'x' * 32, 1000, OPT,
                    RANK_LOCAL)
                legacy = legacy_bytes(os.path.join(d, 'legacy'), target)
                rows[rank] = (written, legacy)
                shutil.rmtree(d)
            # every rank's bytes: its owned state + the idle rank's file
            base_rank = idle[0] if idle else None
            if base_rank is not None:
                base_new = rows[base_rank][0][checkpoint.rank_file(base_rank)]
                base_legacy = rows[base_rank][1]
            else:   # nobody idle: derive the base from rank 0
                base_new = (rows[0][0][checkpoint.rank_file(0)] - per_rank[0])
                base_legacy = rows[0][1] - per_rank[0]
            new_total = rows[0][0][checkpoint.SHARED] + sum(
                base_new + per_rank[r] for r in range(size))
            legacy_total = sum(base_legacy + per_rank[r] for r in range(size))
            for rank, (written, legacy) in sorted(rows.items()):
                label = ('0' if rank == 0 else
                         'busiest' if rank == busiest else
                         'next' if rank == second else 'idle')
                if rank == busiest and rank == 0:
                    label = '0=busiest'
                new = sum(written.values())
                print('{:>6} {:>6} {:>9} {:>12.2f} {:>12.2f} {:>12.2f} '
                      '{:>14.2f} {:>14.3f}'.format(
                          size, len(idle), label, per_rank[rank] / 1e6,
                          (written[checkpoint.rank_file(rank)]
                           - per_rank[rank]) / 1e6, new / 1e6, legacy / 1e6,
                          new / legacy))
            mixup = BATCH * (3 * CROP * CROP + CLASSES) * 4
            print('{:>6} all ranks: new {:.2f} GB, earlier {:.2f} GB; '
                  'without running mixup\'s batch (mixup_alpha 0): the '
                  'rank-local part of a file is {:.3f} MB, all ranks new '
                  '{:.2f} GB, earlier {:.2f} GB'.format(
                      size, new_total / 1e9, legacy_total / 1e9,
                      (base_new - mixup) / 1e6,
                      (new_total - size * mixup) / 1e9,
                      (legacy_total - size * mixup) / 1e9))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
