"""What a training step learns on the device, brought to the host once.

During a K-FAC step the device produces small results the host must act on:
whether each Cholesky factorization succeeded, whether a preconditioned
direction was finite (the fused update already chose the plain gradient on
the device when not), how far each refreshed statistic moved (the stale
rule's input). Reading each of them back would stall the host once per block.
Instead they are written into one :class:`StepStatus` and fetched together
by :func:`fetch`, the only device-to-host transfer of a step's compute
(:data:`fetch_count` counts them, for tests and benchmarks).

Slots: every owned block ``i`` has ``SLOTS_PER_BLOCK`` consecutive int32
slots starting at ``i * SLOTS_PER_BLOCK``: slot 0 is the block's fallback
flag (non-zero: its parameters took the plain gradient this step), the next
ones the statuses of its statistics' inversions, in
``block.statistic_names`` order.
"""
import numpy
from chainer import backend

SLOTS_PER_BLOCK = 4

#: number of :func:`fetch` calls so far (each is one device-to-host copy)
fetch_count = 0


def fetch(*parts):
    """Brings arrays from the device to the host in ONE transfer.

    Args:
        parts: arrays (any shape, any real dtype) or lists of 0-d arrays,
            all on one device.

    Returns:
        list: a float64 NumPy array per part (1-D, in order). Integers and
        float32 values are exact in float64.
    """
    global fetch_count
    fetch_count += 1
    flat = []
    for part in parts:
        if isinstance(part, (list, tuple)):
            flat.append([p.reshape(1) for p in part])
        else:
            flat.append(part.reshape(-1))
    arrays = [a for p in flat for a in (p if isinstance(p, list) else [p])]
    if not arrays:
        return [numpy.zeros(0) for _ in parts]
    xp = backend.get_array_module(arrays[0])
    joined = xp.concatenate([a.astype(numpy.float64) for a in arrays])
    host = numpy.asarray(joined) if xp is numpy else joined.get()
    out, start = [], 0
    for p in flat:
        n = sum(a.size for a in p) if isinstance(p, list) else p.size
        out.append(host[start:start + n])
        start += n
    return out


class StepStatus(object):
    """The int32 status slots of one step's owned blocks, on their device.

    Args:
        xp: ``numpy`` or ``cupy``.
        n_blocks (int): number of blocks this process owns.

    The array is allocated once and zeroed at each :meth:`reset`.
    """

    def __init__(self, xp, n_blocks):
        self.xp = xp
        self.array = xp.zeros(max(n_blocks, 1) * SLOTS_PER_BLOCK, numpy.int32)

    def reset(self):
        self.array.fill(0)

    @staticmethod
    def fallback_slot(index):
        """Slot of block ``index``'s fallback flag."""
        return index * SLOTS_PER_BLOCK

    @staticmethod
    def statistic_slot(index, position):
        """Slot of the inversion status of block ``index``'s statistic
        number ``position`` (in ``statistic_names`` order)."""
        if not 0 <= position < SLOTS_PER_BLOCK - 1:
            raise ValueError('a block has at most {} statistics'.format(
                SLOTS_PER_BLOCK - 1))
        return index * SLOTS_PER_BLOCK + 1 + position

    def flag_fallback_if(self, index, failed):
        """Sets block ``index``'s fallback flag where the 0-d device boolean
        ``failed`` holds (no host read)."""
        slot = self.fallback_slot(index)
        self.array[slot] = self.xp.maximum(self.array[slot],
                                           failed.astype(numpy.int32))
