#!/usr/bin/env bash
# Set up (system packages, virtualenv, server binaries) and run the local demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python demo/run.py "$@"
