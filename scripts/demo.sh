#!/usr/bin/env bash
# Set up (system packages, virtualenv, server binaries) and run the local demo.
# --k8s: the Kubernetes path instead (chart, operator, webhook, pods on the e2e bed; docs/e2e.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python demo/run.py "$@"
