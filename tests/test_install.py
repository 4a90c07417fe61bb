"""The package as pip installs it (issue 19): dependencies, extras, no mpi4py.

The clean-venv leg of ``scripts/test.sh`` (``scripts/wheel_check.sh``) builds
the wheel and installs it into a fresh venv; these tests check, in this
checkout's venv, what that leg relies on: what ``pyproject.toml`` declares, and
``scripts/install_check.py without-mpi`` with mpi4py hidden.
"""
import importlib.metadata
import inspect
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

import chainerkfac
from chainerkfac import _optional

tomllib = pytest.importorskip('tomllib')  # Python >= 3.11

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECK = os.path.join(ROOT, 'scripts', 'install_check.py')


def _project():
    with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
        return tomllib.load(f)['project']


def _requirements(name):
    """``(own lines, included files)`` of requirements file `name`."""
    own, included = [], []
    with open(os.path.join(ROOT, name)) as f:
        for line in f:
            line = line.split('#', 1)[0].strip()
            if line.startswith('-r '):
                included.append(line[3:].strip())
            elif line:
                own.append(line)
    return own, included


def _pins(name):
    """{distribution: requirement line} of a file and the files it includes."""
    own, included = _requirements(name)
    pins = {}
    for other in included:
        pins.update(_pins(other))
    pins.update((re.split(r'[\[=<>]', line)[0], line) for line in own)
    return pins


@pytest.mark.parametrize('extra', ['gpu-cuda12', 'gpu-cuda13', 'gpu-cudnn'])
def test_gpu_extras_are_their_requirements_files(extra):
    """Each GPU extra: its file's own pins, and the NumPy generation of the
    file it builds on."""
    got = _project()['optional-dependencies'][extra]
    own, (base,) = _requirements('requirements-{}.txt'.format(extra))
    numpy_major = int(_pins(base)['numpy'].split('==')[1].split('.')[0])
    assert sorted(got) == sorted(own + ['numpy>=2' if numpy_major >= 2
                                        else 'numpy<2'])


@pytest.mark.parametrize('name', [
    'requirements.txt', 'requirements-numpy2.txt', 'requirements-py312.txt',
    'requirements-py312-numpy2.txt'])
def test_mpi_extra_pins_what_the_requirements_files_pin(name):
    pins = _pins(name)
    assert sorted(_project()['optional-dependencies']['mpi']) == sorted(
        [pins['mpi4py'], pins['mpich']])


def test_dependencies_need_no_mpi_and_keep_pkg_resources():
    deps = _project()['dependencies']
    assert 'chainer==7.8.1' in deps and 'setuptools<82' in deps
    assert not any(d.startswith(('mpi4py', 'mpich')) for d in deps)


def test_without_mpi4py_import_kfac_and_one_line_errors():
    """``install_check.py without-mpi`` with mpi4py hidden: import, a KFAC
    step, the one-line errors (the leg's first check, here in .venv)."""
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, CHECK, 'without-mpi',
                           '--hide-mpi4py'],
                          cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'OK without mpi4py' in proc.stdout
    assert proc.stdout.count(_optional.MPI_EXTRA) == 3


def _normal(dist):  # PEP 503 names
    return re.sub(r'[-_.]+', '-', dist).lower()


def _name_of(requirement):
    return _normal(re.split(r'[\[=<>!~; ]', requirement)[0])


def _declared_closure():
    """The package's required dependencies, theirs, and so on (installed
    metadata, extras left out)."""
    declared, todo = set(), [_name_of(d) for d in _project()['dependencies']]
    while todo:
        dist = todo.pop()
        if dist not in declared:
            declared.add(dist)
            todo.extend(_name_of(r)
                        for r in importlib.metadata.requires(dist) or ()
                        if 'extra ==' not in r)
    return declared


ONLY_DECLARED = textwrap.dedent('''
    import importlib.abc, importlib.metadata, json, re, sys
    allowed = set(json.loads(sys.argv[1]))
    providers = importlib.metadata.packages_distributions()

    class OnlyDeclared(importlib.abc.MetaPathFinder):
        """Top-level modules of installed distributions outside `allowed`
        import as if they were not installed."""
        def find_spec(self, fullname, path, target=None):
            dists = {re.sub(r'[-_.]+', '-', d).lower()
                     for d in providers.get(fullname.partition('.')[0], ())}
            if dists and not dists & allowed:
                raise ModuleNotFoundError('No module named %r' % fullname,
                                          name=fullname)
            return None

    sys.meta_path.insert(0, OnlyDeclared())
    sys.path.insert(0, 'scripts')
    import install_check
    install_check.without_mpi(hide=False)
    import scipy.linalg  # the CPU inverses used it
''')


def test_the_declared_dependencies_suffice_for_single_process_kfac():
    """Only the required dependencies (and theirs) importable, the rest of
    .venv hidden (mpi4py, pillow, matplotlib, ...): import, K-FAC steps and
    the one-line errors work (scipy was missing from the declaration)."""
    allowed = sorted(_declared_closure() | {'chainerkfac'})
    assert 'scipy' in allowed and 'mpi4py' not in allowed
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, '-c', ONLY_DECLARED,
                           json.dumps(allowed)],
                          cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'OK without mpi4py' in proc.stdout


def test_a_broken_mpi4py_is_not_taken_for_a_missing_one():
    missing = ModuleNotFoundError("No module named 'mpi4py'", name='mpi4py')
    assert _optional.is_mpi4py_missing(missing)
    _optional.reraise_unless_mpi4py_missing(missing)   # swallowed
    for other in (ImportError('libmpi.so.12: cannot open shared object file',
                              name='mpi4py.MPI'),
                  ModuleNotFoundError("No module named 'cupy'", name='cupy')):
        assert not _optional.is_mpi4py_missing(other)
        with pytest.raises(ImportError) as e:
            _optional.reraise_unless_mpi4py_missing(other)
        assert e.value is other


def test_the_checked_entry_points_keep_their_signatures():
    assert list(inspect.signature(
        chainerkfac.create_communicator).parameters) == [
            'name', 'mpi_comm', 'abort_on_exception', 'blas_threads',
            'options']
    assert 'DistributedKFAC' in chainerkfac.create_communicator.__doc__
    init = chainerkfac.DistributedKFAC.__init__
    assert list(inspect.signature(init).parameters)[:4] == [
        'self', 'communicator', 'args', 'comm_dtype']


def test_the_isolated_build_gets_a_setuptools_that_reads_the_license_table():
    """``license = {text = ...}`` is what setuptools<70 (bootstrap.sh's
    editable install) reads; setuptools 77 deprecates it, with builds failing
    from 2027-02-18, so the isolated build (pip install ., the wheel leg) must
    take a setuptools below 77."""
    with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
        config = tomllib.load(f)
    assert isinstance(config['project']['license'], dict)
    assert config['build-system']['requires'] == ['setuptools>=61,<77']
