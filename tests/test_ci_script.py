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
