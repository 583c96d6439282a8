#!/usr/bin/env bash
# The project's test command: lint, types, import layers, then the whole suite on real servers.
set -euo pipefail
cd "$(dirname "$0")/.."
# Idempotent: installs only what is missing, so this works on a fresh machine too.
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/lint-imports
set +e
.venv/bin/pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests: that is a failure here" >&2
    exit 1
fi
exit "$status"
