"""Optional dependencies (the extras of ``pyproject.toml``), said in one line.

``pip install chainerkfac`` gives single-process K-FAC with Chainer and NumPy
alone. The communicators and :class:`~chainerkfac.optimizers.DistributedKFAC`
need mpi4py and an MPI library: ``pip install 'chainerkfac[mpi]'`` (mpi4py and
MPICH's wheel, the versions of ``requirements.txt``). Their modules import
mpi4py at the top as before; where the package imports them it catches only
"mpi4py is not installed" (:func:`reraise_unless_mpi4py_missing`), so that
``import chainerkfac`` works without it, and ``create_communicator(...)``,
``DistributedKFAC(...)`` and the communicator classes stop with one line
naming the extra (:class:`MissingDependency`).
"""
import functools

#: what to run where mpi4py is missing
MPI_EXTRA = "pip install 'chainerkfac[mpi]'"


class MissingDependency(ImportError):
    """An optional dependency is not installed. The message is one line that
    names what to install."""


def mpi4py_missing_error(what):
    """The one-line :class:`MissingDependency` for `what` without mpi4py."""
    return MissingDependency(
        'chainerkfac: {} needs mpi4py, which is not installed: {} (mpi4py '
        'and MPICH; with an MPI of your own, pip install mpi4py)'.format(
            what, MPI_EXTRA))


def is_mpi4py_missing(error):
    """Whether ImportError `error` says that mpi4py is not installed (and not
    that something else failed, e.g. mpi4py finding no MPI library)."""
    name = getattr(error, 'name', None) or ''
    return (isinstance(error, ModuleNotFoundError)
            and name.split('.')[0] == 'mpi4py')


def reraise_unless_mpi4py_missing(error):
    """For ``except ImportError as error:`` around imports that need mpi4py:
    raises `error` again unless it says that mpi4py is not installed."""
    if not is_mpi4py_missing(error):
        raise error


def check_mpi4py(what):
    """Raises the one-line :class:`MissingDependency` for `what` when mpi4py
    is not installed."""
    try:
        import mpi4py  # NOQA: F401
    except ImportError as e:
        reraise_unless_mpi4py_missing(e)
        raise mpi4py_missing_error(what) from None


def needs_mpi4py(what):
    """Decorator: the function first calls :func:`check_mpi4py` (`what`)."""
    def decorate(function):
        @functools.wraps(function)
        def checked(*args, **kwargs):
            check_mpi4py(what)
            return function(*args, **kwargs)
        return checked
    return decorate


def attributes_needing_mpi4py(module, *names):
    """A module ``__getattr__`` for a module whose `names` could not be
    imported without mpi4py: reading one raises the one-line error."""
    def __getattr__(name):
        if name in names:
            raise mpi4py_missing_error('{}.{}'.format(module, name))
        raise AttributeError('module {!r} has no attribute {!r}'.format(
            module, name))
    return __getattr__
