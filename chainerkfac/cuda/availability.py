"""Whether CuPy can be imported here, with the reason in one line when not.

Shared by everything that must stop with one clear line on a machine
without a usable CuPy (``--gpu`` in the entry points, the ``'pure_nccl'``
communicator).
"""


def one_line(error):
    """``ExceptionType: first line of its message``."""
    text = str(error).strip().splitlines()
    return '{}: {}'.format(type(error).__name__, text[0] if text else '')


def import_cupy():
    """``(cupy, None)``, or ``(None, why)`` when CuPy cannot be imported
    (not installed, or a broken install: CUDA libraries, driver, ...)."""
    try:
        import cupy
    except ImportError as e:
        return None, 'CuPy is not installed ({})'.format(one_line(e))
    except Exception as e:
        return None, 'CuPy failed to import ({})'.format(one_line(e))
    return cupy, None
