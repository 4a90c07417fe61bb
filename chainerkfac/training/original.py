"""The original code's configuration keys and options, mapped to ours.

The original ImageNet script (tyohei/chainerkfac, ``examples/imagenet/
train.py``) read a flat JSON file of its own key names
(``examples/imagenet/configs/*.json``) and merged it into its command-line
options. :func:`translate` maps those names to this package's
:data:`~chainerkfac.training.config.SCHEMA`, so the original's files load
unchanged (:func:`~chainerkfac.training.config.resolve_config`); the same
table serves the original's command-line flags of ``train_imagenet.py``.

What each original key becomes (``docs/migrating.md`` has the whole table):

* ``arch_file`` + ``arch_name`` -> ``arch``: ``models/resnet50_d.py`` /
  ``ResNet50`` is ``'resnet50_d'`` and the original's default
  ``models/resnet50.py`` / ``ResNet50`` (a file its repository did not ship)
  is the plain ``'resnet50'``. Other model files cannot be loaded: the
  original's models computed mixup, random erasing and the loss inside the
  model; here a model only maps images to logits.
* ``normalize_weight`` -> ``weight_rescaling``; ``lr_plan`` ->
  ``lr_schedule`` (``'polynomial'``; any other value ran a constant lr in
  the original, and does here); ``epoch_lr_decay_start`` ->
  ``lr_start_epoch``; ``polynomial_decay_p`` -> ``lr_power``;
  ``polynomial_epoch`` -> ``lr_end_epoch``; ``re_rate`` ->
  ``random_erasing_p``; ``re_area_rl``/``re_area_rh`` ->
  ``random_erasing_area``; ``re_aspect_rl`` -> ``random_erasing_aspect``
  (the original's upper bound was fixed at 1).
* The same names in both: ``batchsize``, ``val_batchsize``, ``acc_iters``,
  ``epoch``, ``lr``, ``momentum``, ``adjust_momentum``, ``cov_ema_decay``,
  ``damping``, ``stab_coeff``, ``mixup_alpha``, ``running_mixup``,
  ``communicate_after_forward``.
* ``stab_coeff`` in a file of the original's format: its files say 64, but
  its ``train.py`` never passed ``stab_coeff`` to the optimizer, whose
  default 16 is what ran. 16 is used, with a warning saying how to use the
  file's value (``--stab_coeff``).
* ``nw_skip_scale_comp`` (reuse the rescaling factor for up to 10 steps, an
  approximation that only saved time; off in every file) is accepted;
  ``true`` is not honoured: the factor is computed every step (warning).
* The original's other options may also appear in its files (its
  ``train.py`` merged any key into its options): ``train_root``,
  ``val_root``, ``mean``, ``loaderjob``, ``iterator``, ``initmodel``,
  ``resume``, ``out``, ``test``, ``stats``, ``config_out`` and
  ``use_tensor_core`` are returned as run options, which
  ``train_imagenet.py`` applies unless the command line gives them.
  ``train``, ``val`` and ``config`` are command-line arguments only.
"""
import collections
import os

from chainerkfac.training import validators

#: the original's keys with another name here
RENAMED = collections.OrderedDict([
    ('normalize_weight', 'weight_rescaling'),
    ('epoch_lr_decay_start', 'lr_start_epoch'),
    ('polynomial_decay_p', 'lr_power'),
    ('polynomial_epoch', 'lr_end_epoch'),
    ('re_rate', 'random_erasing_p'),
])

#: the original's keys mapped by a rule rather than a rename, and the key
#: each of them sets here (None: not a setting here)
MAPPED = collections.OrderedDict([
    ('arch_file', 'arch'),
    ('arch_name', 'arch'),
    ('lr_plan', 'lr_schedule'),
    ('re_area_rl', 'random_erasing_area'),
    ('re_area_rh', 'random_erasing_area'),
    ('re_aspect_rl', 'random_erasing_aspect'),
    ('nw_skip_scale_comp', None),
])

#: keys whose presence marks a file as the original's format
ORIGINAL_ONLY = tuple(RENAMED) + tuple(MAPPED)

#: hyper-parameters of the same name and meaning in both
SAME = ('batchsize', 'val_batchsize', 'acc_iters', 'epoch', 'lr',
        'momentum', 'adjust_momentum', 'cov_ema_decay', 'damping',
        'stab_coeff', 'mixup_alpha', 'running_mixup',
        'communicate_after_forward')

#: what the original's runs used for stab_coeff: its train.py never passed
#: the configs' value, so KFAC's default ran
STAB_COEFF_AS_RUN = 16.0

#: the original's default model (``--arch_file``/``--arch_name``)
DEFAULT_ARCH_FILE = 'models/resnet50.py'
DEFAULT_ARCH_NAME = 'ResNet50'
#: ``os.path.basename(arch_file)`` -> our model, for ``arch_name`` ResNet50
ARCH_FILES = collections.OrderedDict([('resnet50_d.py', 'resnet50_d'),
                                      ('resnet50.py', 'resnet50')])

#: the original's erasing bounds when a file gives one of the pair only
#: (its argparse defaults)
RE_AREA_DEFAULT = (0.02, 0.25)


def _check_iterator(v):
    if v not in ('thread', 'process', 'serial'):
        return "must be 'thread', 'process' or 'serial'"


def _check_loaderjob(v):
    if not validators.is_int(v) or v < 0:
        return 'must be an integer >= 0'


#: the original's other options, allowed in its files: key -> check
RUN_OPTIONS = collections.OrderedDict([
    ('train_root', validators.nonempty_string),
    ('val_root', validators.nonempty_string),
    ('mean', validators.path_or_none),
    ('loaderjob', _check_loaderjob),
    ('iterator', _check_iterator),
    ('initmodel', validators.path_or_none),
    ('resume', validators.path_or_none),
    ('out', validators.nonempty_string),
    ('test', validators.boolean),
    ('stats', validators.boolean),
    ('config_out', validators.nonempty_string),
    ('use_tensor_core', validators.boolean),
])

#: the original's positional arguments and --config: not allowed in a file
COMMAND_LINE_ONLY = ('train', 'val', 'config')

#: every key of the original's format
KNOWN = ORIGINAL_ONLY + SAME + tuple(RUN_OPTIONS)

Translation = collections.namedtuple(
    'Translation', ('config', 'original', 'warnings', 'run_options'))


def arch_of(arch_file, arch_name):
    """Our model name for the original's ``--arch_file``/``--arch_name``.

    Raises:
        ValueError: a model the original's repository did not define.
    """
    for value, key in ((arch_file, 'arch_file'), (arch_name, 'arch_name')):
        if not isinstance(value, str) or not value:
            raise ValueError('{} must be a non-empty string (got {!r})'
                             .format(key, value))
    arch = ARCH_FILES.get(os.path.basename(arch_file))
    if arch is None or arch_name != DEFAULT_ARCH_NAME:
        raise ValueError(
            'arch_file {!r} / arch_name {!r}: not one of the original\'s '
            'models ({}); other model files cannot be loaded here, because '
            'the original\'s models computed mixup, erasing and the loss '
            'themselves (choose a model with --arch)'.format(
                arch_file, arch_name, ', '.join(
                    'models/{}:{} = {}'.format(f, DEFAULT_ARCH_NAME, a)
                    for f, a in ARCH_FILES.items())))
    return arch


def is_original_format(given):
    """Whether a configuration uses any key only the original's format
    has."""
    return any(k in given for k in ORIGINAL_ONLY)


def translate(given, base, lower_original=None):
    """Maps the original's keys of ``given`` to ours.

    Args:
        given (dict): a configuration in either format (or a mix).
        base (dict): the complete configuration of lower precedence
            (defaults, or defaults plus the file), in the order of
            :data:`~chainerkfac.training.config.SCHEMA`: its keys are ours
            (so this module needs not import ``config``, which imports it),
            and it fills the other half of ``re_area_rl``/``re_area_rh``.
        lower_original (dict): the original's keys of lower precedence
            (``{key: value}``): fill the other half of
            ``arch_file``/``arch_name``.

    Returns:
        Translation: ``config`` (our keys; the keys ``given`` already had in
        our format are kept), ``original`` (``{original key: {'value':
        given value, 'sets': our key or None}}``, in the order of
        ``given``), ``warnings`` (one line each) and ``run_options`` (the
        original's run options found).

    Raises:
        ValueError: a key given under both names, a key of neither format
            (all listed), or a bad value of an original-only key.
    """
    ours = base   # every key of SCHEMA, in its order
    lower_original = lower_original or {}
    unknown = sorted(k for k in given if k not in ours and k not in KNOWN)
    if unknown:
        raise ValueError(
            'unknown configuration key(s): {}; valid keys: {}; and the '
            'original\'s: {}'.format(', '.join(unknown), ', '.join(ours),
                                     ', '.join(k for k in KNOWN
                                               if k not in ours)))
    both = []
    for old, new in list(RENAMED.items()) + [
            (k, v) for k, v in MAPPED.items() if v is not None]:
        if old in given and new in given:
            both.append('{} and {}'.format(old, new))
    if both:
        raise ValueError(
            'the same setting under the original\'s name and ours: {} '
            '(give one)'.format('; '.join(sorted(set(both)))))
    config = collections.OrderedDict(
        (k, v) for k, v in given.items() if k in ours)
    original = collections.OrderedDict()
    warnings = []
    run_options = collections.OrderedDict()

    def record(key, sets):
        original[key] = {'value': given[key], 'sets': sets}

    for old, new in RENAMED.items():
        if old in given:
            config[new] = given[old]
            record(old, new)
    if 'arch_file' in given or 'arch_name' in given:
        arch_file = given.get('arch_file', lower_original.get(
            'arch_file', DEFAULT_ARCH_FILE))
        arch_name = given.get('arch_name', lower_original.get(
            'arch_name', DEFAULT_ARCH_NAME))
        config['arch'] = arch_of(arch_file, arch_name)
        for key in ('arch_file', 'arch_name'):
            if key in given:
                record(key, 'arch')
    if 'lr_plan' in given:
        plan = given['lr_plan']
        if not isinstance(plan, str):
            raise ValueError('lr_plan must be a string (got {!r})'.format(
                plan))
        config['lr_schedule'] = ('polynomial' if plan == 'polynomial'
                                 else 'constant')
        if plan not in ('polynomial', 'constant'):
            warnings.append(
                "lr_plan {!r}: the original ran a constant lr for any "
                "lr_plan but 'polynomial', and so does this (lr_schedule "
                "'constant')".format(plan))
        record('lr_plan', 'lr_schedule')
    if 're_area_rl' in given or 're_area_rh' in given:
        low, high = base.get('random_erasing_area', RE_AREA_DEFAULT)
        low = given.get('re_area_rl', low)
        high = given.get('re_area_rh', high)
        config['random_erasing_area'] = [low, high]
        for key in ('re_area_rl', 're_area_rh'):
            if key in given:
                record(key, 'random_erasing_area')
    if 're_aspect_rl' in given:
        config['random_erasing_aspect'] = [given['re_aspect_rl'], 1.0]
        record('re_aspect_rl', 'random_erasing_aspect')
    for key in ('re_area_rl', 're_area_rh', 're_aspect_rl'):
        if key in given and not validators.is_number(given[key]):
            raise ValueError('{} must be a number (got {!r})'.format(
                key, given[key]))
    if 'nw_skip_scale_comp' in given:
        skip = given['nw_skip_scale_comp']
        if not isinstance(skip, bool):
            raise ValueError('nw_skip_scale_comp must be true or false (got '
                             '{!r})'.format(skip))
        if skip:
            warnings.append(
                'nw_skip_scale_comp: not honoured; weight rescaling computes '
                'the exact norm every step (the option only saved time by '
                'reusing an approximate scale for up to 10 steps)')
        record('nw_skip_scale_comp', None)
    for key, check in RUN_OPTIONS.items():
        if key in given:
            message = check(given[key])
            if message:
                raise ValueError('{} {} (got {!r})'.format(key, message,
                                                           given[key]))
            run_options[key] = given[key]
    original = collections.OrderedDict(
        (k, original[k]) for k in given if k in original)
    return Translation(config, original, warnings, run_options)


def stab_coeff_warning(value, source):
    """The one line said when an original-format file's ``stab_coeff``
    is replaced by what the original ran."""
    return ('stab_coeff: {} says {!r}, but the original\'s train.py never '
            'passed stab_coeff to its optimizer, so its runs used {!r}; '
            'using {!r} (what ran); pass --stab_coeff {!r} to use the '
            'file\'s value'.format(source, value, STAB_COEFF_AS_RUN,
                                   STAB_COEFF_AS_RUN, value))
