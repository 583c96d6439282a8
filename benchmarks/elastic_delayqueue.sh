#!/bin/sh
# The issue-14 scenario at full size: 2,000 jobs (delays 0-20 s, about 1 in 10 revoked) through
# the real sidecar while the DelayQueue goes 3 -> 5 -> 2 nodes. Prints lost/early/doubled (all
# asserted 0), the maximum lateness and the drain time. The test suite runs 600 jobs.
set -e
cd "$(dirname "$0")/.."
ELASTIC_JOBS="${ELASTIC_JOBS:-2000}" ELASTIC_PUBLISH_SECONDS="${ELASTIC_PUBLISH_SECONDS:-40}" \
  exec .venv/bin/pytest -q -s -p no:cacheprovider tests/operator/test_elastic_delayqueue.py "$@"
