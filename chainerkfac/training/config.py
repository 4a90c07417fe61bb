"""Training configuration of the ImageNet script: schema, defaults, checks.

A configuration is a flat JSON object; :func:`load_config` fills in the
defaults of :data:`SCHEMA` (the original script's defaults, i.e. its bs4k
hyper-parameters), rejects unknown keys and checks types and ranges.
Files of the original code's format (its ``examples/imagenet/configs``)
load too: :func:`resolve_config` maps their keys
(:mod:`chainerkfac.training.original`) and says where a value is used
otherwise than the file says.
``DEFAULTS`` and ``DOCS`` give the default and the documentation per key.

Global mini-batch = ``batchsize x processes x acc_iters``
(:func:`global_batchsize`); :func:`for_processes` keeps it on fewer or more
processes by changing ``acc_iters``.
"""
import collections
import json
import warnings

from chainerkfac.assignment import ASSIGNMENTS
from chainerkfac.optimizers.kfac import BN_FISHER_MODES
from chainerkfac.optimizers.kfac import PI_TYPES
from chainerkfac.training import original as original_module
from chainerkfac.training import validators as check

Key = collections.namedtuple('Key', ('default', 'check', 'doc'))


SCHEMA = collections.OrderedDict([
    # model and data
    ('arch', Key('resnet50', check.nonempty_string,
                 "model name: 'resnet50' (the paper), 'resnet50_d' (the "
                 "original code's README results), 'resnet20'.. (CIFAR-style, "
                 "for 28x28/32x32); checked when the model is built")),
    ('crop_size', Key(224, check.integer(1), 'side of the random (train) / '
                      'centre (validation) crop')),
    ('batchsize', Key(32, check.integer(1), 'mini-batch per process and per '
                      'micro-step (the original: 32 per GPU)')),
    ('val_batchsize', Key(16, check.integer(1),
                          'validation mini-batch per process')),
    ('acc_iters', Key(1, check.integer(1),
                      'micro-batches per K-FAC step: gradients and Kronecker '
                      'factors are averaged over them; global batch = '
                      'batchsize x processes x acc_iters')),
    ('epoch', Key(36, check.number(0, lo_open=True),
                  'epochs the trainer runs (the original configs: 36/36/36/'
                  '46/61/81, one more than the README reports)')),
    ('n_processes', Key(None, check.integer(1, none=True),
                        'processes the configuration assumes '
                        '(informational; see for_processes)')),
    # optimizer
    ('lr', Key(8.18e-3, check.number(0), 'lr0, the initial learning rate')),
    ('momentum', Key(0.997, check.number(0, 1), 'heavy-ball momentum m0')),
    ('adjust_momentum', Key(True, check.boolean,
                            'use m0 lr_t/lr_{t-1} on steps whose lr dropped')),
    ('damping', Key(2.5e-4, check.number(0), 'Tikhonov damping gamma: pi '
                    'sqrt(gamma) to A, sqrt(gamma)/pi to G')),
    ('cov_ema_decay', Key(1.0, check.number(0, 1, lo_open=True),
                          'weight of the newest statistics in the factor '
                          'EMA (1.0: no averaging, as the original configs)')),
    ('stab_coeff', Key(16.0, check.number(0),
                       'BN damping multiplier: F + stab_coeff gamma I. 16 is '
                       'what the original ran (its configs say 64 but the '
                       'script never passed it)')),
    ('bn_fisher', Key('full', check.choice(*BN_FISHER_MODES),
                      "BN Fisher: 'full' (2C x 2C, the original code), "
                      "'unit' (2x2 per channel, SP-NGD), 'diag' (CVPR)")),
    ('pi_type', Key('tracenorm', check.choice(*PI_TYPES),
                    "'tracenorm' (pi = sqrt((tr A/dim A)/(tr G/dim G))) or "
                    "'none' (pi = 1)")),
    ('stale', Key(False, check.boolean,
                  "SP-NGD's stale statistics (KFAC(stale=...), whose own "
                  'default is True); false: every statistic and inverse '
                  'every step, as the original code ran (the CVPR paper '
                  'describes refreshing the factors less often after the '
                  'first iterations: secondary source, not in its code)')),
    ('stale_threshold', Key(0.1, check.number(0, lo_open=True),
                            'stale rule: the drift of a statistic (relative '
                            'Frobenius change of its expectation, sampling '
                            'noise removed) each interval aims at')),
    ('stale_max_interval', Key(20, check.integer(1), 'stale rule: longest '
                               'interval (steps)')),
    ('stale_warmup', Key(5, check.integer(0), 'stale rule: steps that refresh '
                         'everything')),
    ('stale_growth', Key('proportional',
                         check.choice('proportional', 'increment', 'double'),
                         'stale rule: interval k -> k * threshold / drift '
                         '(at most 2k), k + 1 or 2k')),
    ('stale_loss_ratio', Key(1.5, check.number(1, lo_open=True, none=True),
                             'stale rule: a loss above this times its recent '
                             'average refreshes everything at the next step '
                             '(null: never)')),
    # curvature options (issue 18), all off by default: the paper's K-FAC
    ('inverse', Key('cholesky', check.choice('cholesky', 'eigen'),
                    "'cholesky' (inverses of the damped factors, the paper) "
                    "or 'eigen' (eigenbases of the factors, exact Tikhonov "
                    'damping of the Kronecker product)')),
    ('fisher', Key('empirical', check.choice('empirical', 'mc'),
                   "'empirical' (G from the labels' gradient, the paper) or "
                   "'mc' (from targets sampled from the model's softmax: "
                   'mc_samples extra backward passes on steps some G/F is '
                   'due)')),
    ('mc_samples', Key(1, check.integer(1), "samples of fisher 'mc'")),
    ('kl_clip', Key(None, check.number(0, lo_open=True, none=True),
                    'bound kappa on the step: scale min(1, sqrt(kappa / '
                    '(lr^2 sum(Delta . g)))) (null: none)')),
    ('damping_adaptation', Key(False, check.boolean,
                               'Levenberg-Marquardt adaptation of damping '
                               'from the reduction ratio (one extra forward '
                               'pass every damping_adaptation_interval '
                               'steps)')),
    ('damping_adaptation_interval', Key(5, check.integer(1),
                                        'steps between damping '
                                        'adaptations')),
    ('damping_bounds', Key([1e-8, 100.0], check.pair_range(0, float('inf')),
                           'the adapted damping stays in [low, high]')),
    ('weight_decay', Key(0.0, check.number(0),
                         'L2 coefficient added to the gradient before '
                         'preconditioning (the original: none)')),
    ('weight_rescaling', Key(True, check.boolean,
                             'cap ||W||_F at sqrt(2 d_out) after each update '
                             'of conv/FC weights (the original: on)')),
    # learning-rate schedule
    ('lr_schedule', Key('polynomial', check.choice('polynomial', 'constant'),
                        "'polynomial' (PolynomialLRDecay) or 'constant'")),
    ('lr_power', Key(11.0, check.number(0, lo_open=True), 'p of the '
                     'polynomial decay')),
    ('lr_start_epoch', Key(1.0, check.number(0), 'e_start: lr = lr0 before it '
                           '(no warmup)')),
    ('lr_end_epoch', Key(53.0, check.number(0, none=True),
                         "the original's polynomial_epoch; the decay ends "
                         "at e_end = max(epoch, lr_end_epoch) (epoch if "
                         "null)")),
    # distribution and precision
    ('comm_dtype', Key('float32', check.choice('float32', 'float16'),
                       'dtype of the ReduceScatterV/AllGatherV buffers '
                       '(the original: float32)')),
    ('communicate_after_forward', Key(False, check.boolean,
                                      'reduce the A factors during the '
                                      'backward pass')),
    ('assignment', Key('balanced', check.choice(*ASSIGNMENTS),
                       "layer-to-process assignment: 'balanced' or 'count' "
                       "(the original's contiguous chunks)")),
    ('fp16', Key(False, check.boolean, 'fp16 model with fp32 master weights '
                 '(the original trained in fp32)')),
    ('loss_scale', Key(None, check.number(0, lo_open=True, none=True),
                       'static loss scale for fp16 (null: none)')),
    # augmentation
    ('mixup_alpha', Key(0.4, check.number(0), 'mixup: lambda ~ Beta(alpha, '
                        'alpha), lambda <- max(lambda, 1 - lambda); 0 '
                        'disables')),
    ('running_mixup', Key(True, check.boolean,
                          'mix with the previous (already mixed) batch, as '
                          'the original')),
    ('random_erasing_p', Key(0.5, check.number(0, 1),
                             'per-example probability of random erasing; 0 '
                             'disables')),
    ('random_erasing_area', Key([0.02, 0.25], check.pair_range(0, 1),
                                'erased area fraction ~ U(low, high)')),
    ('random_erasing_aspect', Key([0.3, 1.0],
                                  check.pair_range(0, float('inf')),
                                  'aspect ratio ~ U(low, high), randomly '
                                  'transposed')),
    ('notes', Key('', check.string, 'free text')),
])

DEFAULTS = collections.OrderedDict(
    (k, v.default) for k, v in SCHEMA.items())
DOCS = collections.OrderedDict((k, v.doc) for k, v in SCHEMA.items())


def _copy(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def validate(config):
    """Checks a complete configuration; raises ValueError listing every
    problem."""
    unknown = sorted(k for k in config if k not in SCHEMA)
    if unknown:
        raise ValueError(
            'unknown configuration key(s): {}; valid keys: {}'.format(
                ', '.join(unknown), ', '.join(SCHEMA)))
    errors = []
    for key, spec in SCHEMA.items():
        message = spec.check(config[key])
        if message:
            errors.append('{} {} (got {!r})'.format(key, message,
                                                    config[key]))
    if (not errors and config['lr_schedule'] == 'polynomial'
            and not config['lr_start_epoch'] < _end_epoch(config)):
        errors.append(
            'lr_start_epoch ({}) must be < max(epoch, lr_end_epoch) '
            '({})'.format(config['lr_start_epoch'], _end_epoch(config)))
    if errors:
        raise ValueError('invalid configuration: ' + '; '.join(errors))
    return config


def _end_epoch(config):
    end = config['lr_end_epoch']
    return config['epoch'] if end is None else max(config['epoch'], end)


Resolved = collections.namedtuple(
    'Resolved', ('config', 'original', 'warnings', 'run_options'))


def _read(path):
    with open(path) as f:
        try:
            given = json.load(f)
        except ValueError as e:
            raise ValueError('{}: not valid JSON: {}'.format(path, e))
    if not isinstance(given, dict):
        raise ValueError('{}: the configuration must be a JSON object'
                         .format(path))
    return given


def resolve_config(path=None, overrides=None):
    """Reads a JSON configuration in this package's format or the original
    code's (``examples/imagenet/configs/*.json`` of tyohei/chainerkfac, or a
    mix), applies ``overrides`` (either format too) and the defaults.

    Precedence: ``overrides`` > the file > :data:`DEFAULTS`. The original's
    keys are mapped by :func:`chainerkfac.training.original.translate`. In a
    file of the original's format, ``stab_coeff`` is replaced by what the
    original ran (16: its script never passed the files' value) unless
    ``overrides`` gives it, and a warning says so.

    Returns:
        Resolved: ``config`` (every key of :data:`SCHEMA`), ``original``
        (``{'file': {...}, 'overrides': {...}}``: each of the original's
        keys given, its value and the key it set), ``warnings`` (one line
        each) and
        ``run_options`` (the original's run options found in the file, e.g.
        ``iterator``; see :data:`chainerkfac.training.original.RUN_OPTIONS`).

    Raises:
        ValueError: unreadable JSON, keys of neither format (all are
            listed, with the valid ones), a setting given under both names,
            or bad values (all are listed).
    """
    given = _read(path) if path is not None else {}
    for key in original_module.COMMAND_LINE_ONLY:
        if key in given:
            raise ValueError(
                '{}: {!r} is a command-line argument of the original\'s '
                'train.py and of this script, not a configuration key'
                .format(path, key))
    base = collections.OrderedDict(
        (k, _copy(v.default)) for k, v in SCHEMA.items())
    try:
        from_file = original_module.translate(given, base)
    except ValueError as e:
        raise ValueError('{}: {}'.format(path, e) if path else str(e))
    base.update((k, _copy(v)) for k, v in from_file.config.items())
    lower = {k: v['value'] for k, v in from_file.original.items()}
    from_args = original_module.translate(
        dict(overrides or {}), base, lower_original=lower)
    if from_args.run_options:
        raise ValueError('overrides: {} are run options, not configuration '
                         'keys'.format(', '.join(from_args.run_options)))
    config = collections.OrderedDict(base)
    config.update((k, _copy(v)) for k, v in from_args.config.items())
    warnings = list(from_file.warnings) + list(from_args.warnings)
    stab = given.get('stab_coeff')
    if (path is not None and original_module.is_original_format(given)
            and 'stab_coeff' in given and 'stab_coeff' not in from_args.config
            and stab != original_module.STAB_COEFF_AS_RUN):
        config['stab_coeff'] = original_module.STAB_COEFF_AS_RUN
        warnings.append(original_module.stab_coeff_warning(stab, path))
    original = {'file': from_file.original, 'overrides': from_args.original}
    try:
        validate(config)
    except ValueError as e:
        message = str(e)
        mapped = ['{} -> {}'.format(k, v['sets']) for part in original.values()
                  for k, v in part.items() if v['sets']]
        if mapped:
            message += ' (the original\'s keys given: {})'.format(
                ', '.join(mapped))
        if path is None:
            raise ValueError(message)
        raise ValueError('{}: {}'.format(path, message))
    return Resolved(dict(config), original, warnings,
                    dict(from_file.run_options))


def load_config(path=None, overrides=None):
    """Reads a JSON configuration, applies ``overrides`` and the defaults.

    Either format, this package's or the original code's
    (:func:`resolve_config`, whose warnings are issued with
    :func:`warnings.warn`; the original's run options are left out).

    Args:
        path (str): JSON file holding one object; None: defaults only.
        overrides (dict): values taking precedence over the file's.

    Returns:
        dict: every key of :data:`SCHEMA`.

    Raises:
        ValueError: unreadable JSON, unknown keys (all are listed, with the
            valid ones) or bad values (all are listed).
    """
    resolved = resolve_config(path, overrides)
    for message in resolved.warnings:
        warnings.warn(message, OriginalConfigWarning, stacklevel=2)
    return resolved.config


class OriginalConfigWarning(UserWarning):
    """A value of the original's format that is used otherwise than it
    says (see :func:`resolve_config`)."""


def global_batchsize(config, n_processes=None):
    """``batchsize x n_processes x acc_iters`` (``n_processes`` defaults to
    the configuration's)."""
    if n_processes is None:
        n_processes = config['n_processes']
    if n_processes is None:
        raise ValueError('global_batchsize: the number of processes is not '
                         'given and the configuration has none')
    return config['batchsize'] * n_processes * config['acc_iters']


def for_processes(config, n_processes):
    """A copy of ``config`` for ``n_processes`` processes with the same
    global mini-batch (and so the same hyper-parameters): ``acc_iters`` is
    scaled, e.g. 4K = 32 x 128 x 1 = 32 x 8 x 16.

    Raises:
        ValueError: the global batch is not a multiple of
            ``batchsize x n_processes``.
    """
    total = global_batchsize(config)
    per_step = config['batchsize'] * n_processes
    if total % per_step:
        raise ValueError(
            'global batch {} is not a multiple of batchsize x n_processes = '
            '{} x {}'.format(total, config['batchsize'], n_processes))
    out = dict(config, n_processes=n_processes, acc_iters=total // per_step)
    return dict(validate(out))
