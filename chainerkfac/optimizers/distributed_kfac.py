"""Distributed K-FAC: the four-stage pipeline of Osawa et al. (CVPR 2019)."""
import hashlib

import chainer
import chainer.links as L
import numpy

from chainerkfac import _optional
from chainerkfac import assignment as assignment_module
from chainerkfac import errors
from chainerkfac import wire
# mpi4py: the [mpi] extra; without it DistributedKFAC() says what to install
try:
    from mpi4py import MPI
    from chainerkfac.communicators.mpi_communicator import comm_dtype_of
except ImportError as e:
    _optional.reraise_unless_mpi4py_missing(e)
from chainerkfac.fisher_blocks.base import compute_dtype
from chainerkfac.optimizers.kfac import KFAC


def named_persistents(model):
    """``(path, value)`` of every persistent value of ``model``, sorted."""
    out = []
    for path, link in model.namedlinks():
        for name in link._persistent:
            out.append((path.rstrip('/') + '/' + name, getattr(link, name)))
    return sorted(out, key=lambda item: item[0])


def _first_mismatch(reference, signature, rank):
    """Text naming the first entry where ``signature`` (of ``rank``) differs
    from rank 0's ``reference``."""
    for a, b in zip(reference, signature):
        if a != b:
            return ('rank 0 has {} {} {} {} where rank {} has {} {} {} {}'
                    .format(*(a + (rank,) + b)))
    return 'rank 0 has {} arrays, rank {} has {}'.format(
        len(reference), rank, len(signature))


class DistributedKFAC(KFAC):
    """Data-parallel K-FAC whose curvature work is split across processes.

    One step on ``p`` processes, each on its own slice of the global batch:

    1. forward/backward and local statistics (every rank, every block);
    2. ReduceScatterV: gradients and factors (symmetric ones as upper
       triangles) summed over ranks; rank r receives the means of the
       blocks it owns. Parameters without a block, and the running
       statistics of BatchNormalization links, are all-reduced (so every
       rank keeps identical BN statistics; this all-reduce is fp32);
    3. the owner of each block: EMA, damping, Cholesky inverses,
       preconditioning and the momentum update of its parameters;
    4. AllGatherV of the parameter steps ``theta_new - theta_old``; every
       rank (the owner too) adds the gathered steps, so all ranks hold
       identical parameters whatever the communication precision.

    At the first ``update``, before its forward pass, the ranks check that
    their models agree (names, shapes, dtypes: the first mismatch is an
    error), rank 0's parameters and BN statistics are broadcast, and the
    step is then taken (nothing is skipped). On one process this is exactly
    :class:`KFAC` (no copies, no packing).

    Optimizer hooks run after stage 2 on the gradients a rank owns.
    Per-parameter hooks (``WeightDecay``, ``GradientHardClipping``, ...)
    work as in one process; ``GradientClipping`` is replaced by
    :class:`DistributedGradientClipping` (the global norm from one scalar
    all-reduce, the same scale on every rank); any other hook that needs
    every gradient at once is refused at ``add_hook``. Momentum and curvature
    state live on the owner only: snapshot with
    :mod:`chainerkfac.training.checkpoint` (``ShardedSnapshot``, ``load``:
    rank 0 writes the shared state, each rank its blocks; a snapshot resumes
    on any number of processes). A load that held other ranks' blocks but
    not this rank's (one rank's file loaded on every rank) is refused on
    every rank at the next update
    (:class:`~chainerkfac.errors.ForeignSnapshotError`).

    Args:
        communicator: from :func:`chainerkfac.create_communicator`.
        *args: :class:`KFAC`'s positional arguments (``lr``, ``momentum``,
            ``cov_ema_decay``, ``damping``, ...), in the original code's
            order: ``DistributedKFAC(comm, 0.01)`` sets ``lr``.
        comm_dtype (str): ``'float32'`` or ``'float16'`` (the paper's half
            precision) for stages 2 and 4; fp16 values are scaled by powers
            of two against overflow and underflow (see
            :meth:`~.MpiCommunicator.reduce_scatter_v`);
            about 3 significant digits survive in gradients, factors and
            parameter steps.
        assignment (str): ``'balanced'`` (greedy by estimated inversion and
            preconditioning cost) or ``'count'`` (the original code's
            contiguous chunks). More ranks than blocks leave ranks idle.
        communicate_after_forward (bool): start the reduction of the A
            factors with a non-blocking collective right after the forward
            pass, overlapping the backward pass.
        only_pic_update_weight (bool): the original's name for what this
            class always does (the owner updates its blocks' parameters and
            the steps are all-gathered); False (all-gather preconditioned
            gradients, every rank updating every parameter) is refused.
        **kwargs: the hyper-parameters of :class:`KFAC`.

    Attributes:
        indices (list of lists): the original code's per-rank block lists:
            ``indices[r]`` are the positions in :attr:`fisher_blocks` of the
            blocks rank ``r`` owns (available after ``setup`` once the links
            are initialised).
    """

    @_optional.needs_mpi4py('DistributedKFAC')
    def __init__(self, communicator, *args, comm_dtype='float32',
                 assignment='balanced', communicate_after_forward=False,
                 only_pic_update_weight=True, **kwargs):
        if not only_pic_update_weight:
            raise ValueError(
                'chainerkfac.DistributedKFAC: only_pic_update_weight=False '
                '(all-gathering preconditioned gradients) is not offered: the '
                'owner of a block updates it and the parameter steps are '
                'all-gathered (what the original does by default)')
        super(DistributedKFAC, self).__init__(*args, **kwargs)
        if assignment not in assignment_module.ASSIGNMENTS:
            raise ValueError('chainerkfac.DistributedKFAC: assignment must be '
                             'one of {}, got {!r}'.format(
                                 assignment_module.ASSIGNMENTS, assignment))
        self.communicator = communicator
        self.comm_dtype = comm_dtype_of(comm_dtype)
        self.assignment = assignment
        self.communicate_after_forward = communicate_after_forward
        self.owners = None
        self._pending_a = None
        self._old_params = None
        self._missing = []          # this step's due statistics not captured
        self._tail = None           # their flag (and the loss), every segment
        self._layout = None         # this step's wire.StepLayout
        self._missing_seen = None   # the flags' mean over ranks (device)
        self._examples = {}         # schedule key -> examples behind it here
        self._mean_loss = None      # the step's loss, mean over ranks
        self._load_problem = None   # a loaded snapshot held others' blocks

    @property
    def _distributed(self):
        return self.communicator.size > 1

    def setup(self, link):
        super(DistributedKFAC, self).setup(link)
        self.owners = None
        self._bn_links = [lk for _, lk in sorted(link.namedlinks())
                          if isinstance(lk, L.BatchNormalization)]
        return self

    # --- first update: agreement, broadcast, assignment -----------------
    def _model_signature(self):
        sig = [('param', name, tuple(p.shape) if p.array is not None
                else None, str(p.dtype) if p.array is not None else None)
               for name, p in sorted(self.target.namedparams())]
        sig += [('persistent', name, tuple(numpy.shape(v)),
                 str(getattr(v, 'dtype', type(v).__name__)))
                for name, v in named_persistents(self.target)]
        return sig

    def _check_models_agree(self):
        """Raises on every rank unless all ranks' models have the same
        parameter and persistent names, shapes and dtypes.

        Costs O(1) bytes per rank whatever the process count: rank 0's
        32-byte digest of its signature is broadcast and one integer is
        all-reduced. Only when they differ is rank 0's signature broadcast,
        so that each differing rank names its first mismatch.
        """
        comm = self.communicator.mpi_comm
        mine = self._model_signature()
        digest = hashlib.sha256(repr(mine).encode()).digest()
        reference = comm.bcast(digest, root=0)
        if not comm.allreduce(int(digest != reference), op=MPI.MAX):
            return
        reference = comm.bcast(mine if comm.rank == 0 else None, root=0)
        report = None
        if mine != reference:
            report = _first_mismatch(reference, mine, comm.rank)
        reports = [r for r in comm.allgather(report) if r is not None]
        raise ValueError('chainerkfac: models differ across ranks: ' +
                         reports[0])

    def _broadcast_model(self):
        """Rank 0's parameters and BN running statistics to every rank."""
        comm = self.communicator.mpi_comm
        arrays = [p.array for _, p in sorted(self.target.namedparams())]
        for link in self._bn_links:
            arrays += [a for a in (link.avg_mean, link.avg_var)
                       if a is not None]
        for array in arrays:
            if array is None:
                raise ValueError(
                    'chainerkfac: DistributedKFAC needs initialised '
                    'parameters at the first update; run one forward pass '
                    'or give the links their input sizes')
            host = numpy.ascontiguousarray(chainer.backend.CpuDevice().send(
                array))
            comm.Bcast([host, MPI.BYTE], root=0)
            if host is not array:
                array[...] = chainer.backend.get_array_module(
                    array).asarray(host)

    def _synchronize(self):
        self._agree_on_loaded_state()
        self._check_models_agree()
        self._broadcast_model()
        self.owners = assignment_module.block_owners(
            self.fisher_blocks, self.communicator.size, self.assignment)
        self._blocks_by_rank = [
            [b for b, r in zip(self.fisher_blocks, self.owners) if r == rank]
            for rank in range(self.communicator.size)]
        self.owned_blocks = self._blocks_by_rank[self.communicator.rank]

    def blocks_of(self, rank):
        """The blocks owned by ``rank``, in block order."""
        return self._blocks_by_rank[rank]

    @property
    def indices(self):
        owners = self.owners
        if owners is None:
            owners = assignment_module.block_owners(
                self.fisher_blocks, self.communicator.size, self.assignment)
        return [[i for i, r in enumerate(owners) if r == rank]
                for rank in range(self.communicator.size)]

    def add_hook(self, hook, name=None, timing='auto'):
        """As Chainer's, except that ``GradientClipping`` becomes
        :class:`DistributedGradientClipping` and any other hook that needs
        every gradient at once (``call_for_each_param`` false) is refused:
        after stage 2 a rank holds only its own blocks' gradients."""
        if isinstance(hook, chainer.optimizer_hooks.GradientClipping):
            hook = DistributedGradientClipping(hook.threshold)
        elif not getattr(hook, 'call_for_each_param', False):
            raise ValueError(
                'chainerkfac.DistributedKFAC: optimizer hook {} acts on all '
                'gradients at once, but after stage 2 each rank holds only '
                'the gradients of the blocks it owns; use a per-parameter '
                'hook or GradientClipping'.format(
                    getattr(hook, 'name', type(hook).__name__)))
        return super(DistributedKFAC, self).add_hook(hook, name, timing)

    def reduce_adaptation(self, new_loss, old_loss, model, plain):
        """One 3-value all-reduce: the ranks' losses before and after the
        step (means) and the owners' parts of the quadratic model, the
        plain parameters' part counted on rank 0 (the same everywhere)."""
        if not self._distributed:
            return super(DistributedKFAC, self).reduce_adaptation(
                new_loss, old_loss, model, plain)
        comm = self.communicator
        mine = numpy.array([float(new_loss), float(old_loss), float(model) + (
            float(plain) if comm.rank == 0 else 0.0)], numpy.float64)
        total = numpy.empty_like(mine)
        comm.mpi_comm.Allreduce(mine, total, op=MPI.SUM)
        return total[0] / comm.size, total[1] / comm.size, float(total[2])

    def reduce_kl_sum(self, blocks_sum, plain_grads):
        """KL clipping's ``S`` over all ranks: each owner's blocks' part,
        plus the plain parameters' ``g . g`` on rank 0 (their gradients are
        all-reduced: the same on every rank), in one scalar all-reduce."""
        if not self._distributed:
            return super(DistributedKFAC, self).reduce_kl_sum(blocks_sum,
                                                              plain_grads)
        mine = float(blocks_sum)
        if self.communicator.rank == 0:
            mine += sum(float(g.astype(numpy.float64).ravel() @
                              g.astype(numpy.float64).ravel())
                        for g in plain_grads)
        return self.communicator.mpi_comm.allreduce(mine)

    def owned_gradient_square_norm(self):
        """Squared L2 norm of the gradients this rank holds for the whole
        model after stage 2: its blocks' (the global ones), plus, on rank 0,
        the parameters without a block (all-reduced: the same everywhere)."""
        total = 0.0
        params = [p for b in self.owned_blocks for p in b.params]
        if self.communicator.rank == 0 or not self._distributed:
            params += self.plain_params
        for param in params:
            if param.grad is not None:
                g = param.grad.astype(numpy.promote_types(
                    param.grad.dtype, numpy.float32), copy=False).ravel()
                total += float(g.dot(g))
        return total

    # --- the step ---------------------------------------------------------
    def update(self, lossfun=None, *args, **kwds):
        if self._distributed and self.owners is None and lossfun is not None:
            if self._loss_scaling_is_dynamic:
                raise ValueError(
                    'chainerkfac: DistributedKFAC does not support dynamic '
                    'loss scaling; pass a static loss_scale')
            self._synchronize()
        super(DistributedKFAC, self).update(lossfun, *args, **kwds)

    def _step_layout(self):
        """This step's :class:`~chainerkfac.wire.StepLayout` (built once per
        step: the schedule's due statistics are known before the forward
        pass and the same on every rank)."""
        if self._layout is None:
            self._layout = wire.StepLayout(
                self._blocks_by_rank, lambda block: block.due,
                self.communicate_after_forward,
                2 if self.schedule.uses_change else 1)
        return self._layout

    def after_forward(self):
        if self._distributed and self.communicate_after_forward:
            layout = self._step_layout()
            local = {}
            for block in self.fisher_blocks:
                if 'A' in block.due:
                    local[block] = self._due_statistics(block, ['A'])
            self._pending_a = self.communicator.start_reduce_scatter_v(
                [self._arrays(layout.forward(r), local)
                 for r in range(self.communicator.size)],
                self.comm_dtype, purpose='rs_forward')

    def _due_statistics(self, block, names):
        """This rank's statistics ``names`` of ``block`` (all due), and
        their per-example moments as 1-element arrays.

        Every rank must send the statistics the schedule says are due, so
        that all pass MPI the same counts. A due statistic this rank did not
        capture (its forward or backward pass skipped the link: a
        data-dependent branch, a bug in the model) is sent as zeros and
        recorded; the step then ends on every rank with an error naming the
        link and the rank (:meth:`verify_device_checks`).

        Returns:
            tuple: ``({name: statistic}, {name: moment})``.
        """
        stats, moments = block.take_statistics(names, with_moments=True)
        xp = block.link.xp
        dtype = compute_dtype(block.params[0].array)
        out = {}
        for name in names:
            if name not in stats:
                self._missing.append('{} {}'.format(block.name, name))
                stats[name] = xp.zeros(block.statistic_shapes()[name], dtype)
                moment = None
            else:
                moment, examples = moments[name]
                self._examples[block.schedule_keys[name]] = examples
                if moment is None:      # a fixed schedule: only the presence
                    moment = 1.0
            # a missed statistic's moment is 0: all ranks 0 = all skipped
            out[name] = (xp.zeros(1, stats[name].dtype) if moment is None
                         else xp.asarray(moment, stats[name].dtype).reshape(1))
        return stats, out

    def _arrays(self, entries, local):
        """The ``(array, symmetric)`` pairs this rank sends for ``entries``
        (:mod:`chainerkfac.wire`): its gradients, statistics and moments
        (``local[block] = (stats, moments)``) and its tail."""
        out = []
        for e in entries:
            if e.kind == wire.GRADIENT:
                array = getattr(e.block.link, e.name).grad
            elif e.kind == wire.STATISTIC:
                array = local[e.block][0][e.name]
            elif e.kind == wire.MOMENT:
                array = local[e.block][1][e.name]
            else:
                array = self._tail
            out.append((array, e.symmetric))
        return out

    def exchange_statistics_and_gradients(self):
        if not self._distributed:
            return super(
                DistributedKFAC, self).exchange_statistics_and_gradients()
        comm, layout = self.communicator, self._step_layout()
        local = {}
        for block in self.fisher_blocks:
            names = [n for n in block.statistic_names if n in block.due
                     and not (n == 'A' and self.communicate_after_forward)]
            local[block] = self._due_statistics(block, names)
        xp = self.target.xp
        flag = xp.full(1, 1.0 if self._missing else 0.0, numpy.float32)
        self._mean_loss = None
        loss = self.step_loss()
        self._tail = flag if loss is None else xp.concatenate(
            [flag, loss.reshape(1)])
        received = comm.reduce_scatter_v(
            [self._arrays(layout.stage2(r), local) for r in range(comm.size)],
            self.comm_dtype)
        own = layout.stage2(comm.rank)
        if self._pending_a is not None:
            own = own + layout.forward(comm.rank)
            received = list(received) + list(self._pending_a.wait())
        self._pending_a = None
        stats = dict((b, ({}, {}, {})) for b in self.owned_blocks)
        for e, array in zip(own, received):
            if e.kind == wire.GRADIENT:
                getattr(e.block.link, e.name).grad[...] = array
            elif e.kind == wire.STATISTIC:
                stats[e.block][0][e.name] = array
            elif e.kind == wire.MOMENT:
                examples = self._examples.get(e.block.schedule_keys[e.name], 0)
                moment = array.reshape(())
                stats[e.block][1][e.name] = (moment, examples * comm.size)
                # every rank missed it (or it is exactly zero): keep the EMA
                stats[e.block][2][e.name] = (moment > 0).astype(array.dtype)
            else:
                self._missing_seen = array[:1]
                self._mean_loss = None if loss is None else array[1]
        self._allreduce_plain_and_bn()
        ordered = []
        for block in self.owned_blocks:            # in statistic_names order
            values, moments, present = stats[block]
            ordered.append((block, dict(
                (n, values[n]) for n in block.statistic_names
                if n in values), moments, present))
        return ordered

    def _set_due_statistics(self):
        super(DistributedKFAC, self)._set_due_statistics()
        self._layout = None

    def step_loss(self):
        """This rank's loss before stage 2, the mean over ranks after it."""
        if self._mean_loss is not None:
            return self._mean_loss
        return super(DistributedKFAC, self).step_loss()

    def device_checks(self):
        """The mean over ranks of the missed-statistics flags (read with
        the step's one fetch)."""
        return [self._missing_seen] if self._missing_seen is not None else []

    def verify_device_checks(self, values):
        """When any rank missed a due statistic (the flag every segment
        carries), the ranks gather the names (only then) and agree: a
        statistic every rank missed (a link every rank skipped this step)
        is not refreshed, as in :class:`KFAC` (its owner saw a zero moment
        and kept its EMA); one that some ranks missed and others captured
        ends every rank with the same error naming both."""
        self._missing_seen = None
        missing, self._missing = self._missing, []
        if not (len(values) and values[0] > 0):
            return
        per_rank = self.communicator.mpi_comm.allgather(missing)
        size = len(per_rank)
        partial = []
        for name in sorted(set(n for names in per_rank for n in names)):
            ranks = [r for r, names in enumerate(per_rank) if name in names]
            if len(ranks) < size:
                partial.append('{} on ranks {} (captured on {})'.format(
                    name, ranks, [r for r in range(size) if r not in ranks]))
        if partial:
            raise RuntimeError(
                'chainerkfac: statistics due this step were captured on some '
                'ranks only: {}; every rank must call the same links with a '
                'Fisher block in each update (a data-dependent branch, or a '
                'bug in the model, skips a link on some ranks; a link every '
                'rank skips is fine)'.format('; '.join(partial)))

    def _allreduce_plain_and_bn(self):
        arrays = [p.grad for p in self.plain_params if p.grad is not None]
        for link in self._bn_links:
            arrays += [a for a in (link.avg_mean, link.avg_var)
                       if a is not None]
        # fp32 whatever comm_dtype: a small buffer, and BN variances need it
        means = self.communicator.allreduce_mean(arrays, 'float32')
        for array, mean in zip(arrays, means):
            array[...] = mean

    def update_parameters(self, status):
        if self._distributed:
            self._old_params = [[p.array.copy() for p in b.params]
                                for b in self.owned_blocks]
        super(DistributedKFAC, self).update_parameters(status)

    def exchange_parameters(self, decisions):
        """Stage 4: every rank adds the parameter steps of every owner, and
        learns each owner's schedule decisions (one value per statistic of
        its blocks, every step: the next interval of a refreshed statistic,
        -1 for an early refresh, 0 otherwise), so the schedule of the next
        step is identical everywhere. Steps travel in at least float32 and
        every rank, the owner too, adds the same received step, so all
        ranks hold identical parameters whatever the parameters' dtype."""
        if not self._distributed:
            return decisions
        comm, rank = self.communicator, self.communicator.rank
        layout = self._step_layout()
        olds = dict((id(p), old) for block, olds in zip(self.owned_blocks,
                                                        self._old_params)
                    for p, old in zip(block.params, olds))
        per_rank = []
        for r in range(comm.size):
            arrays = []
            for e in layout.stage4(r):
                if e.kind == wire.DECISIONS:
                    keys = layout.schedule_keys(r)
                    arrays.append(numpy.array([decisions[k] for k in keys],
                                              numpy.float32) if r == rank
                                  else numpy.empty(len(keys), numpy.float32))
                    continue
                param = getattr(e.block.link, e.name)
                dtype = wire.step_dtype(param.dtype)
                if r == rank:
                    arrays.append(param.array.astype(dtype)
                                  - olds[id(param)].astype(dtype))
                else:
                    arrays.append(param.xp.empty(param.shape, dtype))
            per_rank.append(arrays)
        gathered = comm.all_gather_v(per_rank, self.comm_dtype)
        everything = {}
        for r in range(comm.size):
            for e, step in zip(layout.stage4(r), gathered[r]):
                if e.kind == wire.DECISIONS:
                    received = chainer.backend.CpuDevice().send(step)
                    everything.update(
                        (k, int(round(float(v))))
                        for k, v in zip(layout.schedule_keys(r), received))
                    continue
                param = getattr(e.block.link, e.name)
                old = olds[id(param)] if r == rank else param.array
                new = old.astype(step.dtype, copy=False) + step
                param.array[...] = new.astype(param.dtype, copy=False)
        self._old_params = None
        return everything

    def refreshed_keys(self):
        """Every statistic due at this step, on any rank: each was captured
        and reduced (a missed one ended the step with an error)."""
        if not self._distributed:
            return super(DistributedKFAC, self).refreshed_keys()
        return set(b.schedule_keys[n] for b in self.fisher_blocks
                   for n in b.due)

    # --- loading a snapshot: one rank's state is not every rank's ----------
    def serialize(self, serializer):
        """:meth:`KFAC.serialize`. On several processes a load is checked
        (:meth:`_foreign_state_problem`) and re-synchronises the ranks at the
        next update, as the first one does (every rank loads, as every rank
        updates): if any rank's load held other ranks' blocks, every rank
        raises there, so no rank is left waiting in a collective."""
        super(DistributedKFAC, self).serialize(serializer)
        if self._distributed and isinstance(
                serializer, chainer.serializer.Deserializer):
            self._load_problem = self._foreign_state_problem()
            self.owners = None

    def _foreign_state_problem(self):
        """One line when the state just loaded held momentum or curvature of
        Fisher blocks other ranks own but none of a block this rank owns
        (one rank's file loaded on every rank, or a per-rank file of another
        assignment: this rank's blocks would restart from nothing), else
        None. A snapshot holding no block's state (taken before the first
        update) or every block's (one process's) passes."""
        try:
            owners = self.owners or assignment_module.block_owners(
                self.fisher_blocks, self.communicator.size, self.assignment)
        except ValueError:   # links not initialised: no assignment yet
            return None
        rank = self.communicator.rank
        held = [any(v is not None for v in b.ema.values()) or any(
            p.update_rule is not None and p.update_rule.state is not None
            for p in b.params) for b in self.fisher_blocks]
        lost = [b.name for b, r, h in zip(self.fisher_blocks, owners, held)
                if r == rank and not h]
        if not lost or not any(h for r, h in zip(owners, held) if r != rank):
            return None
        return ('chainerkfac: rank {} loaded a snapshot holding the momentum '
                'and curvature of Fisher blocks other ranks own, not of {} '
                '(which it owns): one rank\'s file (ChainerMN\'s rank-0 '
                'snapshot, serializers.save_npz of the trainer) loaded on '
                'every rank, which would restart those blocks from nothing; '
                'resume from a sharded snapshot '
                '(chainerkfac.training.checkpoint.ShardedSnapshot, then '
                'checkpoint.load on every rank; train_imagenet.py --resume '
                'DIR/snapshot_iter_N), or from one file per rank written and '
                'loaded on as many processes'.format(rank, lost[0]))

    def _agree_on_loaded_state(self):
        """Every rank raises :class:`~chainerkfac.errors.ForeignSnapshotError`
        when a rank's last load held other ranks' blocks (one integer
        all-reduced; the message only then)."""
        comm = self.communicator.mpi_comm
        if comm.allreduce(int(self._load_problem is not None), op=MPI.MAX):
            problem = errors.agreed_error(comm, self._load_problem)
            raise errors.ForeignSnapshotError(problem)


class DistributedGradientClipping(object):
    """``GradientClipping`` across ranks: ``g <- g min(1, c / ||g||)`` with
    the norm of the whole model's gradient, from one scalar all-reduce of the
    ranks' partial squared norms (:meth:`DistributedKFAC.owned_gradient_\
square_norm`); every rank applies the same scale to the gradients it
    holds. The optimizer puts it in place of ``GradientClipping``."""

    name = 'GradientClipping'
    call_for_each_param = False
    timing = 'pre'

    def __init__(self, threshold):
        self.threshold = threshold

    def __call__(self, opt):
        square = opt.owned_gradient_square_norm()
        if opt._distributed:
            square = opt.communicator.mpi_comm.allreduce(square)
        norm = numpy.sqrt(square)
        rate = self.threshold / norm if norm > 0 else 1.0
        if rate < 1:
            params = [p for b in opt.owned_blocks for p in b.params]
            params += opt.plain_params
            for param in params:
                if param.grad is not None:
                    param.grad *= param.grad.dtype.type(rate)
