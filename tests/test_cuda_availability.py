"""chainerkfac.cuda.availability: CuPy's import, or the reason in one line."""
import builtins
import sys

from chainerkfac.cuda import availability


def test_one_line_keeps_the_type_and_the_first_line():
    error = RuntimeError('libcublas.so.13: cannot open\nsecond line\n')
    assert availability.one_line(error) == (
        'RuntimeError: libcublas.so.13: cannot open')
    assert availability.one_line(ValueError()) == 'ValueError: '


def _failing_import(monkeypatch, error):
    real = builtins.__import__

    def fake(name, *args, **kwargs):
        if name == 'cupy' or name.startswith('cupy.'):
            raise error
        return real(name, *args, **kwargs)
    monkeypatch.delitem(sys.modules, 'cupy', raising=False)
    monkeypatch.setattr(builtins, '__import__', fake)


def test_missing_cupy_is_named(monkeypatch):
    _failing_import(monkeypatch, ImportError("No module named 'cupy'"))
    cupy, why = availability.import_cupy()
    assert cupy is None
    assert why == "CuPy is not installed (ImportError: No module named 'cupy')"


def test_broken_cupy_is_named(monkeypatch):
    _failing_import(monkeypatch, OSError('libcudart.so.13: cannot open\nmore'))
    cupy, why = availability.import_cupy()
    assert cupy is None
    assert why == 'CuPy failed to import (OSError: libcudart.so.13: cannot open)'


def test_importable_cupy_is_returned(monkeypatch):
    fake = type(sys)('cupy')
    monkeypatch.setitem(sys.modules, 'cupy', fake)
    assert availability.import_cupy() == (fake, None)
