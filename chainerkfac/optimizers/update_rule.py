"""Per-parameter update rule of K-FAC: heavy-ball momentum on a direction."""
import warnings

import chainer
import numpy
from chainer import optimizer

from chainerkfac.cuda import ops

_default_hyperparam = optimizer.Hyperparameter()
_default_hyperparam.lr = 0.01
_default_hyperparam.momentum = 0.9
_default_hyperparam.adjust_momentum = False


class KFACUpdateRule(optimizer.UpdateRule):
    """Heavy-ball update on a direction ``Delta`` held in the gradient slot.

    ``v <- mu_t v - lr Delta``, ``theta <- theta + v``. For parameters with a
    Fisher block ``Delta`` is the preconditioned gradient, for the others the
    plain gradient. With ``adjust_momentum`` the momentum of a step whose
    learning rate dropped is ``mu_t = mu * lr_t / lr_{t-1}`` (as the original
    code), so that a learning-rate decay also damps the velocity.

    The update is split in :meth:`begin` (fp32 master copy, loss-scale removal,
    the rule's pre-update hooks) and :meth:`finish` (post-update hooks, copy
    back to fp16) so the optimizer can precondition in between.
    """

    def __init__(self, parent_hyperparam=None, lr=None, momentum=None):
        super(KFACUpdateRule, self).__init__(
            parent_hyperparam or _default_hyperparam)
        if lr is not None:
            self.hyperparam.lr = lr
        if momentum is not None:
            self.hyperparam.momentum = momentum
        self.lr_prev = 0.0

    def init_state(self, param):
        with chainer.using_device(param.device):
            self.state['v'] = param.device.xp.zeros_like(param.data)

    def effective_momentum(self):
        hp = self.hyperparam
        lr, momentum = hp.lr, hp.momentum
        if hp.adjust_momentum and 0 < lr < self.lr_prev:
            momentum = momentum * lr / self.lr_prev
        return momentum

    def begin(self, param):
        """Prepares the variable to update; returns None if nothing to do.

        The returned variable (``param`` or its fp32 master copy) holds the
        gradient with the loss scale removed and the rule's hooks applied.
        """
        if param.array is None or param.grad is None:
            return None
        if self._use_fp32_update and param.dtype == numpy.float16:
            if self._fp32_param is None:
                self._fp32_param = chainer.Parameter(
                    param.array.astype(numpy.float32), name=param.name)
            target = self._fp32_param
            target.grad = param.grad.astype(numpy.float32)
        else:
            target = param
        self._init_states(target)
        if param._loss_scale is not None:
            target.grad /= param._loss_scale
        self._hookable.call_hooks('pre', args=(self, target))
        return target

    def finish(self, param, target):
        """Runs the post-update hooks and copies an fp32 master back."""
        self._hookable.call_hooks('post', args=(self, target))
        self.lr_prev = self.hyperparam.lr
        if target is not param:
            param.array = target.array.astype(param.dtype)
            target.grad = None

    def update(self, param):
        """Plain (unpreconditioned) update, used for parameters without a
        Fisher block."""
        if not self.enabled:
            return
        self.t += 1
        with chainer.using_device(param.device):
            target = self.begin(param)
            if target is not None:
                self.update_core(target)
                self.finish(param, target)

    def apply(self, target, direction, fallback, flags, slot):
        """``v <- mu_t v - lr d``, ``theta <- theta + v`` in one fused
        kernel, with ``d = fallback`` where ``flags[slot]`` is set (a
        device-side decision: no host synchronisation) and ``direction``
        otherwise."""
        ops.momentum_update(target.array, self.state['v'], direction,
                            fallback, flags, slot, self.hyperparam.lr,
                            self.effective_momentum())

    def update_core(self, param):
        """Momentum SGD on the plain gradient (NumPy or CuPy: one kernel)."""
        xp = param.xp
        self.apply(param, param.grad, param.grad,
                   xp.zeros(1, numpy.int32), 0)

    def serialize(self, serializer):
        """Saves/loads ``t``, ``lr_prev`` and the velocity ``v``.

        A rule that never updated its parameter (in DistributedKFAC, one
        owned by another rank) has no velocity: it saves ``has_v = 0`` and
        no ``v``, and loading that leaves the state to be created at the
        first update. A snapshot that says it has a velocity but lacks it
        is an error (``KeyError`` naming the key), never a silent reset of
        the momentum; one written before ``has_v`` existed without a ``v``
        resets it with a warning. (Chainer does not save the fp32 master
        copy of an fp16 parameter; it is re-made from the fp16 value.)
        """
        self.t = serializer('t', self.t)
        self.lr_prev = float(serializer('lr_prev', self.lr_prev))
        if not isinstance(serializer, chainer.serializer.Deserializer):
            serializer('has_v', int(self.state is not None))
            if self.state is not None:
                serializer('v', self.state['v'])
            return
        try:
            has_v = int(serializer('has_v', 0))
        except KeyError:                    # written before has_v existed
            has_v = None
        if has_v == 0:
            self._state = None
            return
        try:
            v = serializer('v', None)
        except KeyError:
            if has_v:
                raise KeyError('chainerkfac: the snapshot says this '
                               'parameter has a momentum velocity but holds '
                               'no "v": it is incomplete')
            warnings.warn('chainerkfac: a snapshot without a momentum '
                          'velocity (written by an older version): momentum '
                          'restarts from zero', RuntimeWarning)
            v = None
        self._state = None if v is None else {'v': v}
