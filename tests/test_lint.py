"""The lint step (issue 19 item 7): ``scripts/lint.sh`` runs the pinned ruff
with pyproject.toml's rules, fails on a finding, and a finding fails
``scripts/test.sh`` (CI's command) even when every test passes."""
import os
import re
import sys

import pytest

from mpi_helpers import run_command

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINT = os.path.join(ROOT, 'scripts', 'lint.sh')
RUFF = os.path.join(os.path.dirname(sys.executable), 'ruff')

#: one finding of each kind the configuration adds to ruff's defaults, and
#: the plain ones: an unused import (F401), a line over 79 columns (E501), a
#: bare NOQA (PGH004), a missing blank line (E302, a preview rule)
DIRTY = '''import os
import sys
x = 1  # NOQA
def f():
    return sys.argv, '{}'
'''.format('a' * 80)
CLEAN = '''import sys

x = 1


def f():
    return sys.argv, '{}'
'''.format('a' * 40)


def _lint(*paths):
    return run_command(['bash', LINT] + [str(p) for p in paths], 120)


def test_requirements_pin_the_ruff_that_the_venv_runs():
    with open(os.path.join(ROOT, 'requirements.txt')) as f:
        pins = re.findall(r'^ruff==(\S+)$', f.read(), re.M)
    assert len(pins) == 1
    if not os.path.exists(RUFF):
        pytest.skip('no ruff beside {}'.format(sys.executable))
    result = run_command([RUFF, '--version'], 60)
    assert result.stdout.split() == ['ruff', pins[0]]


def test_each_finding_is_reported_and_fails(tmp_path):
    path = tmp_path / 'dirty.py'
    path.write_text(DIRTY)
    result = _lint(path)
    assert result.returncode == 1, result.stdout
    for rule, line in [('unused-import', 1), ('blanket-noqa', 3),
                       ('blank-lines-top-level', 4), ('line-too-long', 5)]:
        assert re.search(r'{}.*\n\s*--> {}:{}:'.format(rule, re.escape(
            str(path)), line), result.stdout), (rule, result.stdout)


def test_the_same_code_without_the_findings_passes(tmp_path):
    path = tmp_path / 'clean.py'
    path.write_text(CLEAN)
    result = _lint(path)
    assert result.returncode == 0, result.stdout


@pytest.mark.skipif(os.environ.get('CHAINERKFAC_BOOTSTRAPPED') != '1',
                    reason='runs scripts/test.sh again: only under '
                           'scripts/test.sh, whose venv is then up to date')
@pytest.mark.parametrize('lint_rc', [0, 1])
def test_a_lint_finding_fails_test_sh_when_the_tests_pass(tmp_path, lint_rc):
    """test.sh with one passing test selected and a stand-in for ruff that
    reports a finding (or none): its exit status is the lint step's."""
    stub = tmp_path / 'ruff'
    stub.write_text('#!/bin/sh\necho "x.py:1:8: F401 stand-in finding"\n'
                    'exit {}\n'.format(lint_rc))
    stub.chmod(0o755)
    test = ('tests/test_assignment.py::'
            'test_count_is_the_original_contiguous_split')
    result = run_command(['bash', os.path.join(ROOT, 'scripts', 'test.sh'),
                          test], 240, CHAINERKFAC_RUFF=str(stub))
    assert '1 passed' in result.stdout, result.stdout
    assert 'F401 stand-in finding' in result.stdout
    if lint_rc:
        assert result.returncode == 1, result.stdout
        assert 'ruff found lint findings' in result.stdout
    else:
        assert result.returncode == 0, result.stdout
