"""chainerkfac.training.validators: the value checks config.py and
original.py share (their messages follow the key's name), and the import
cycle they used to form."""
import ast
import os

import pytest

from chainerkfac.training import validators as check

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_kinds():
    assert check.is_bool(True) and not check.is_bool(1)
    assert check.is_int(3) and not check.is_int(True) and \
        not check.is_int(3.0)
    assert check.is_number(3) and check.is_number(0.5) and \
        not check.is_number(False) and not check.is_number('1')


@pytest.mark.parametrize('made, value, message', [
    (check.integer(1), 0, 'must be >= 1'),
    (check.integer(1), 1.0, 'must be an integer'),
    (check.integer(none=True), 'x', 'must be an integer or null'),
    (check.integer(none=True), None, None),
    (check.number(0, 1), 1.5, 'must be <= 1'),
    (check.number(0, lo_open=True), 0, 'must be > 0'),
    (check.number(hi=1, hi_open=True), 1, 'must be < 1'),
    (check.number(none=True), True, 'must be a number or null'),
    (check.number(0, 1), 0.5, None),
    (check.choice('a', 'b'), 'c', "must be one of 'a', 'b'"),
    (check.choice('a', 'b'), 'b', None),
    (check.pair_range(0, 1), [0.2], 'must be a list of 2 numbers'),
    (check.pair_range(0, 1), [0.5, 0.2],
     'must satisfy 0 < low <= high <= 1'),
    (check.pair_range(0, 1), (0.2, 0.5), None),
])
def test_made_checks(made, value, message):
    assert made(value) == message


@pytest.mark.parametrize('function, good, bad, message', [
    (check.boolean, False, 0, 'must be true or false'),
    (check.string, '', 3, 'must be a string'),
    (check.nonempty_string, 'x', '', 'must be a non-empty string'),
    (check.path_or_none, None, 3, 'must be a path (string) or null'),
])
def test_plain_checks(function, good, bad, message):
    assert function(good) is None
    assert function(bad) == message


def imported_modules(path):
    with open(os.path.join(ROOT, path)) as f:
        tree = ast.parse(f.read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module)
            names.update('{}.{}'.format(node.module, a.name)
                         for a in node.names)
    return names


def test_original_does_not_import_config():
    """config imports original (it maps the original's keys); original
    takes our keys from the configuration it is given, so the two no longer
    import each other."""
    assert 'chainerkfac.training.original' in imported_modules(
        'chainerkfac/training/config.py')
    assert not any('config' in name for name in imported_modules(
        'chainerkfac/training/original.py'))
