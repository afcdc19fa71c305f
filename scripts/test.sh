#!/usr/bin/env bash
# Set up (system packages + virtualenv, idempotent) and run the whole test suite, slow tests included.
# Pass pytest arguments to narrow it, e.g. scripts/test.sh -m "not slow".
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh all
export FALLDET_DATA="${FALLDET_DATA:-$(cd .. && pwd)/shared/data}"
exec .venv/bin/python -m pytest -q --timeout 900 --durations 15 "$@"
