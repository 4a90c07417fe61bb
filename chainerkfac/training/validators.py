"""Value checks of the configuration keys and of the original's run options,
kept once for :mod:`~chainerkfac.training.config` and
:mod:`~chainerkfac.training.original`.

A check takes a value and returns an error message (``'must be ...'``, to
follow the key's name) or None; the functions with arguments return such a
check.
"""
import numbers


def is_bool(v):
    return isinstance(v, bool)


def is_int(v):
    """An integer that is not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_number(v):
    """A real number that is not a bool."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def integer(lo=None, none=False):
    """An integer, ``>= lo`` when given; null too with ``none``."""
    def check(v):
        if none and v is None:
            return None
        if not is_int(v):
            return 'must be an integer{}'.format(' or null' if none else '')
        if lo is not None and v < lo:
            return 'must be >= {}'.format(lo)
    return check


def number(lo=None, hi=None, lo_open=False, hi_open=False, none=False):
    """A number within ``lo`` and ``hi`` (each open or closed); null too
    with ``none``."""
    def check(v):
        if none and v is None:
            return None
        if not is_number(v):
            return 'must be a number{}'.format(' or null' if none else '')
        if lo is not None and (v <= lo if lo_open else v < lo):
            return 'must be {} {}'.format('>' if lo_open else '>=', lo)
        if hi is not None and (v >= hi if hi_open else v > hi):
            return 'must be {} {}'.format('<' if hi_open else '<=', hi)
    return check


def choice(*values):
    """One of ``values``."""
    def check(v):
        if v not in values:
            return 'must be one of {}'.format(', '.join(map(repr, values)))
    return check


def boolean(v):
    if not is_bool(v):
        return 'must be true or false'


def string(v):
    if not isinstance(v, str):
        return 'must be a string'


def nonempty_string(v):
    if not isinstance(v, str) or not v:
        return 'must be a non-empty string'


def path_or_none(v):
    if v is not None and not isinstance(v, str):
        return 'must be a path (string) or null'


def pair_range(lo, hi):
    """A list ``[a, b]`` with ``lo < a <= b <= hi``."""
    def check(v):
        if (not isinstance(v, (list, tuple)) or len(v) != 2
                or not all(is_number(x) for x in v)):
            return 'must be a list of 2 numbers'
        a, b = v
        if not lo < a <= b <= hi:
            return 'must satisfy {} < low <= high <= {}'.format(lo, hi)
    return check
