"""PolynomialLRDecay inside a real Trainer, the WeightRescaling hook, and
what the entry points share: CommunicationVolume, the loss and accuracy
plots, the triggers and the device converter."""
import chainer
import chainer.links as L
import numpy
import pytest
from chainer import training
from chainer.training import extensions

from chainerkfac.optimizers import KFAC
from chainerkfac.training import device as device_module
from chainerkfac.training import extensions as kfac_extensions
from chainerkfac.training import triggers
from chainerkfac.training import add_weight_rescaling
from chainerkfac.training import effective_end_epoch
from chainerkfac.training import load_config
from chainerkfac.training import make_lr_schedule
from chainerkfac.training import polynomial_decay
from chainerkfac.training import PolynomialLRDecay
from chainerkfac.training import WeightRescaling
import nets

N_DATA, BATCH = 40, 8          # 5 iterations per epoch
LR0, POWER, START, END = 0.1, 2.0, 0.6, 2.2


def formula(e):
    if e < START:
        return LR0
    if e < END:
        return LR0 * (1 - (e - START) / (END - START)) ** POWER
    return 0.0


class StepLR(object):
    """Pre-update hook on one parameter: the lr each step actually uses."""
    name = 'StepLR'
    timing = 'pre'

    def __init__(self):
        self.lrs = []

    def __call__(self, rule, param):
        self.lrs.append(rule.hyperparam.lr)


def make_trainer(out, iterations, acc_iters=1, initial_lr=5.0, **kwargs):
    rng = numpy.random.RandomState(0)
    data = chainer.datasets.TupleDataset(*nets.mlp_batch(rng, n=N_DATA))
    model = nets.make(nets.MLP)
    opt = KFAC(lr=initial_lr, damping=1e-2, acc_iters=acc_iters,
               adjust_momentum=True)
    opt.setup(model)
    rec = StepLR()
    model.l1.W.update_rule.add_hook(rec)
    it = chainer.iterators.SerialIterator(data, BATCH, shuffle=False)
    trainer = training.Trainer(training.StandardUpdater(it, opt),
                               (iterations, 'iteration'), out=str(out))
    kwargs.setdefault('start_epoch', START)
    kwargs.setdefault('end_epoch', END)
    trainer.extend(PolynomialLRDecay('lr', lr0=LR0, power=POWER, **kwargs))
    return trainer, model, opt, rec


def test_polynomial_decay_function():
    assert polynomial_decay(0.3, 1.0, 2, 1, 3) == 1.0
    assert polynomial_decay(1.0, 1.0, 2, 1, 3) == 1.0
    assert polynomial_decay(2.0, 1.0, 2, 1, 3) == pytest.approx(0.25)
    assert polynomial_decay(3.0, 1.0, 2, 1, 3) == 0.0
    assert polynomial_decay(7.0, 1.0, 2, 1, 3) == 0.0
    assert effective_end_epoch(36, 53) == 53
    assert effective_end_epoch(36, 20) == 36
    assert effective_end_epoch(2, None) == 2


def test_schedule_in_trainer_per_step(tmp_path):
    # 15 steps at e = 0, 0.2, ..., 2.8: before the start, decaying, after
    # the end; the first step uses lr(0) = lr0, not the optimizer's 5.0.
    trainer, _, opt, rec = make_trainer(tmp_path, 15)
    trainer.run()
    expected = [formula(k / 5.0) for k in range(15)]
    numpy.testing.assert_allclose(rec.lrs, expected, rtol=1e-12, atol=0)
    assert rec.lrs[0] == LR0 and rec.lrs[-1] == 0.0
    assert opt.lr == formula(15 / 5.0)


def test_initialize_sets_lr(tmp_path):
    trainer, _, opt, _ = make_trainer(tmp_path, 1, start_epoch=0.0)
    assert opt.lr == 5.0
    ext = trainer.get_extension('PolynomialLRDecay')
    ext.initialize(trainer)
    assert opt.lr == LR0


def test_iters_per_epoch(tmp_path):
    trainer, _, _, rec = make_trainer(tmp_path, 12, iters_per_epoch=4)
    trainer.run()
    numpy.testing.assert_allclose(
        rec.lrs, [formula(k / 4.0) for k in range(12)], rtol=1e-12)


def test_acc_iters_refreshes_at_step_boundaries(tmp_path):
    # a step every 2 micro-batches; step j (iteration 2j) uses the lr at the
    # examples seen before its first micro-batch, e = 2(j-1)/5 (as the
    # original, triggered every acc_iters iterations)
    trainer, _, opt, rec = make_trainer(tmp_path, 14, acc_iters=2)
    trainer.run()
    numpy.testing.assert_allclose(
        rec.lrs, [formula(2 * j / 5.0) for j in range(7)], rtol=1e-12)


def test_resume_from_snapshot_gives_same_lr_and_params(tmp_path):
    full, model_a, _, rec_a = make_trainer(tmp_path / 'a', 13)
    full.extend(extensions.snapshot(filename='snap_{.updater.iteration}'),
                trigger=(6, 'iteration'))
    full.run()
    resumed, model_b, opt_b, rec_b = make_trainer(tmp_path / 'b', 13)
    chainer.serializers.load_npz(str(tmp_path / 'a' / 'snap_6'), resumed)
    assert resumed.updater.iteration == 6
    resumed.run()
    assert rec_b.lrs == rec_a.lrs[6:]
    nets.assert_params_equal(nets.params_of(model_a), nets.params_of(model_b))


def test_bad_arguments():
    with pytest.raises(ValueError, match='end_epoch'):
        PolynomialLRDecay(lr0=0.1, power=2, start_epoch=3, end_epoch=3)
    with pytest.raises(ValueError, match='power'):
        PolynomialLRDecay(lr0=0.1, power=0, start_epoch=0, end_epoch=3)
    with pytest.raises(ValueError, match='lr0'):
        PolynomialLRDecay(lr0=-1, power=2, start_epoch=0, end_epoch=3)
    with pytest.raises(TypeError):
        PolynomialLRDecay('lr', 0.1, 2, 0, 3)   # keyword-only


def test_make_lr_schedule_from_config():
    config = load_config(overrides={'epoch': 60, 'lr_end_epoch': 53})
    ext = make_lr_schedule(config)
    assert (ext.lr0, ext.power, ext.start_epoch, ext.end_epoch) == (
        config['lr'], config['lr_power'], config['lr_start_epoch'], 60)
    assert make_lr_schedule(dict(config, lr_schedule='constant')) is None


# --- WeightRescaling -------------------------------------------------------
def norm(a):
    return numpy.sqrt(numpy.sum(numpy.square(a.astype(numpy.float64))))


def cap(w):
    return numpy.sqrt(2.0 * w.shape[0])


def test_hook_caps_exactly_and_only_shrinks(rng):
    hook = WeightRescaling()
    big = chainer.Parameter(rng.randn(4, 3, 3, 3) * 10)
    hook(None, big)
    assert norm(big.array) == pytest.approx(cap(big.array), rel=1e-14)
    small = rng.randn(5, 7) * 0.01
    param = chainer.Parameter(small.copy())
    hook(None, param)
    assert (param.array == small).all()
    zero = chainer.Parameter(numpy.zeros((3, 2), numpy.float32))
    hook(None, zero)
    assert (zero.array == 0).all()


def test_add_weight_rescaling_counts():
    model = nets.make(nets.ConvNet, use_bn=True)
    with pytest.raises(RuntimeError, match='setup'):
        add_weight_rescaling(model)
    KFAC().setup(model)
    assert add_weight_rescaling(model) == 3      # c1.W, c2.W, fc.W
    assert add_weight_rescaling(model) == 0      # already there
    for name, param in model.namedparams():
        hooks = param.update_rule._hookable._post_update_hooks
        assert ('WeightRescaling' in hooks) == name.endswith('/W'), name


def scaled_pair(factor, lr, dtype=numpy.float64):
    """Two identical ConvNets, weights scaled by ``factor``; the second
    with weight rescaling."""
    models = []
    for _ in range(2):
        model = nets.make(nets.ConvNet, dtype=dtype)
        for link in (model.c1, model.c2, model.fc):
            link.W.array *= factor
        opt = KFAC(lr=lr, damping=1e-2)
        opt.setup(model)
        models.append((model, opt))
    assert add_weight_rescaling(models[1][0]) == 3
    return models


@pytest.mark.parametrize('factor,lr', [(10.0, 0.1), (0.1, 0.01)])
def test_kfac_step_with_rescaling(rng, factor, lr):
    x, t = nets.conv_batch(rng)
    (ref, opt_ref), (model, opt) = scaled_pair(factor, lr)
    opt_ref.update(ref, x, t)
    opt.update(model, x, t)
    for name in ('c1', 'c2', 'fc'):
        w_ref = getattr(ref, name).W.array
        w = getattr(model, name).W.array
        if factor > 1:    # above the cap after the step: capped exactly
            assert norm(w_ref) > cap(w)
            assert norm(w) == pytest.approx(cap(w), rel=1e-12)
            numpy.testing.assert_allclose(w, w_ref * cap(w) / norm(w_ref),
                                          rtol=1e-12)
        else:             # below the cap: untouched
            assert norm(w_ref) < cap(w)
            assert (w == w_ref).all()
    assert (model.c1.b.array == ref.c1.b.array).all()
    assert (model.fc.b.array == ref.fc.b.array).all()


def test_rescaling_acts_on_fp32_master_of_fp16_link(rng):
    x, t = nets.conv_batch(rng, dtype=numpy.float32)
    model = nets.make(nets.ConvNet, dtype=numpy.float32)
    for link in (model.c1, model.c2, model.fc):
        link.W.array *= 10
    for p in model.params():
        p.array = p.array.astype(numpy.float16)
    opt = KFAC(lr=0.1, damping=1e-2, loss_scale=256.0)
    opt.setup(model)
    opt.use_fp32_update()
    assert add_weight_rescaling(model) == 3
    opt.update(model, x.astype(numpy.float16), t)
    for link in (model.c1, model.c2, model.fc):
        master = link.W.update_rule._fp32_param.array
        assert master.dtype == numpy.float32
        assert link.W.dtype == numpy.float16
        assert norm(master) == pytest.approx(cap(master), rel=1e-6)
        assert (link.W.array == master.astype(numpy.float16)).all()


def test_rescaling_with_a_chainer_optimizer(rng):
    model = L.Linear(6, 4)
    model.W.array *= 100
    opt = chainer.optimizers.MomentumSGD(lr=0.01)
    opt.setup(model)
    assert add_weight_rescaling(model) == 1
    model.cleargrads()
    chainer.functions.sum(model(rng.randn(3, 6).astype(numpy.float32))
                          ).backward()
    opt.update()
    assert norm(model.W.array) == pytest.approx(cap(model.W.array),
                                                rel=1e-6)


# --- the entry points' shared extensions, triggers and converter ----------
class Counting(object):
    """A communicator's byte counter."""
    bytes_sent = 0


def tiny_trainer(tmp_path, iterations=6, n=N_DATA):
    x = numpy.random.RandomState(0).randn(n, 3).astype(numpy.float32)
    t = numpy.random.RandomState(1).randint(0, 2, n).astype(numpy.int32)
    model = chainer.links.Classifier(L.Linear(3, 2))
    opt = chainer.optimizers.SGD(lr=0.1)
    opt.setup(model)
    it = chainer.iterators.SerialIterator(
        chainer.datasets.TupleDataset(x, t), BATCH)
    updater = training.StandardUpdater(it, opt)
    return training.Trainer(updater, (iterations, 'iteration'),
                            out=str(tmp_path)), model


def test_communication_volume_reports_mb_per_update(tmp_path):
    trainer, _ = tiny_trainer(tmp_path, iterations=3)
    comm = Counting()
    volume = kfac_extensions.CommunicationVolume(comm, acc_iters=2)
    seen = []

    class Sender(training.Extension):
        trigger = (1, 'iteration')
        priority = training.PRIORITY_WRITER + 1   # before the report

        def __call__(self, trainer):
            comm.bytes_sent += 2 ** 20

    trainer.extend(Sender())
    trainer.extend(volume)
    trainer.extend(extensions.LogReport(trigger=(1, 'iteration')))
    trainer.extend(lambda t: seen.append(
        t.observation['comm/MB_per_update']), trigger=(1, 'iteration'))
    trainer.run()
    assert seen == [2.0, 2.0, 2.0]   # 1 MB per iteration, 2 per update


@pytest.mark.parametrize('trigger', [None, lambda: (2, 'iteration')])
def test_add_plot_reports(tmp_path, trigger):
    trainer, _ = tiny_trainer(tmp_path)
    added = kfac_extensions.add_plot_reports(
        trainer, 'iteration', trigger=trigger, extra=[(['lr'], 'lr.png')])
    plots = [e.extension for e in trainer._extensions.values()
             if isinstance(e.extension, extensions.PlotReport)]
    if not extensions.PlotReport.available():
        assert added == 0 and plots == []
        return
    assert added == 3
    assert [p._file_name for p in plots] == ['loss.png', 'accuracy.png',
                                             'lr.png']
    assert [p._y_keys for p in plots] == [
        list(keys) for keys, _ in kfac_extensions.LOSS_AND_ACCURACY] + [
        ['lr']]
    assert all(p._x_key == 'iteration' for p in plots)
    assert len(set(id(p._trigger) for p in plots)) == 3   # one each


def test_last_iteration_of_updates_or_epochs():
    assert triggers.last_iteration(4, 36, 3, 10.0) == 12
    assert triggers.last_iteration(None, 2.5, 3, 10.0) == 25
    assert triggers.last_iteration(None, 0.25, 1, 10.0) == 3   # ceil


def test_last_iteration_after_resume():
    class Updater(object):
        iteration, epoch_detail = 30, 1.5
    assert triggers.last_iteration_after_resume(4, 3, 2, Updater, 8.0) == 8
    # the rest (1.5 epochs) at this count's 8 iterations per epoch
    assert triggers.last_iteration_after_resume(None, 3, 2, Updater,
                                                8.0) == 42
    assert triggers.last_iteration_after_resume(None, 1, 2, Updater,
                                                8.0) == 30


def test_last_iteration_and_any_of_in_a_trainer(tmp_path):
    trainer, _ = tiny_trainer(tmp_path, iterations=7)
    fired = []
    is_last = triggers.LastIteration(7)
    trainer.extend(lambda t: fired.append(t.updater.iteration),
                   trigger=triggers.any_of((3, 'iteration'), is_last))
    trainer.run()
    assert fired == [3, 6, 7]


def test_any_of_state_goes_through_a_snapshot(tmp_path):
    """The interval trigger inside AnyOf keeps its state in a snapshot."""
    inner = training.triggers.IntervalTrigger(1, 'epoch')
    trigger = triggers.AnyOf(inner, triggers.LastIteration(99))
    serializer = chainer.serializers.DictionarySerializer()
    trigger.serialize(serializer)
    assert any(k.startswith('0/') for k in serializer.target)
    assert not any(k.startswith('1/') for k in serializer.target)


def test_on_device_sends_every_array():
    sent = []

    class Device(object):
        def send(self, array):
            sent.append(array)
            return 'on device'

    def converter(batch, device=None):
        return batch[0], batch[1]
    assert device_module.on_device(converter, None) is converter
    convert = device_module.on_device(converter, Device())
    assert convert((1, 2)) == ('on device', 'on device')
    assert sent == [1, 2]
