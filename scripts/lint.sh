#!/usr/bin/env bash
# The lint step of scripts/test.sh, run before the tests: ruff (pinned in
# requirements.txt, so scripts/bootstrap.sh installs it into .venv) with the
# rules of pyproject.toml's [tool.ruff] (pyflakes, pycodestyle, 79 columns,
# no bare `# NOQA`), over the whole repository: the package, tests, benchmarks,
# examples, scripts, models and train_imagenet.py (ruff skips what .gitignore
# names, so the venvs too). Exits non-zero on any finding, printing each one.
#   bash scripts/lint.sh [PATH ...]   default: the repository
#   CHAINERKFAC_RUFF   the ruff executable (default .venv/bin/ruff)
# `.venv/bin/ruff check --fix PATH` fixes what it can (unused imports, blank
# lines); long lines are wrapped by hand.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ruff="${CHAINERKFAC_RUFF:-$root/.venv/bin/ruff}"
if [ ! -x "$ruff" ]; then
  echo "scripts/lint.sh: no ruff at $ruff; run scripts/bootstrap.sh (it installs requirements.txt)" >&2
  exit 1
fi
[ "$#" -gt 0 ] || set -- "$root"
# --config: the repository's rules also for paths outside it (the lint tests)
exec "$ruff" check --config "$root/pyproject.toml" "$@"
