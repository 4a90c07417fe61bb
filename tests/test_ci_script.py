"""scripts/test.sh (what .ci/run calls) fails on failing tests and on none."""
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_test_sh(*args):
    return subprocess.run(['bash', os.path.join(ROOT, 'scripts', 'test.sh')]
                          + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True,
                          timeout=300)


def test_ci_entry_point_calls_the_test_script():
    with open(os.path.join(ROOT, '.ci', 'run')) as f:
        assert 'scripts/test.sh' in f.read()


def test_no_test_collected_fails():
    result = run_test_sh(os.path.join(ROOT, 'tests', 'test_linalg.py'),
                         '-k', 'no_test_is_named_like_this')
    assert result.returncode != 0
    assert 'collected no tests' in result.stdout


def test_a_failing_test_fails(tmp_path):
    failing = tmp_path / 'test_fails.py'
    failing.write_text('def test_fails():\n    assert 1 == 2\n')
    result = run_test_sh(str(failing), '-p', 'no:randomly')
    assert result.returncode != 0
    assert '1 failed' in result.stdout


def test_a_passing_selection_passes(tmp_path):
    passing = tmp_path / 'test_passes.py'
    passing.write_text('def test_passes():\n    assert 1 == 1\n')
    result = run_test_sh(str(passing))
    assert result.returncode == 0, result.stdout


def _read(path):
    with open(os.path.join(ROOT, path)) as f:
        return f.read()


def test_ci_runs_the_clean_install_leg():
    """test.sh without arguments (CI) runs scripts/wheel_check.sh, which checks
    the installed wheel without mpi4py before it installs the mpi extra, and
    then runs mpiexec -n 2 on it."""
    test_sh = _read('scripts/test.sh')
    assert 'bash scripts/wheel_check.sh' in test_sh[test_sh.index(
        '[ "$#" -eq 0 ] || exit'):]
    leg = _read('scripts/wheel_check.sh')
    without = leg.index('install_check.py" without-mpi')
    extra = leg.index('"$wheel[mpi]"')
    with_mpi = leg.index('mpiexec" -n 2 "$venv_python" '
                         '"$root/scripts/install_check.py" with-mpi')
    assert without < extra < with_mpi
    assert subprocess.run(['bash', '-n', os.path.join(
        ROOT, 'scripts', 'wheel_check.sh')]).returncode == 0
