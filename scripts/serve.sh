#!/usr/bin/env bash
# Set up (once) and start the service on the bundled model (models/fall-detector.onnx).
# Extra arguments go to `python -m service serve`, e.g. --host 0.0.0.0 --port 8000.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] && .venv/bin/python -c "import service, onnxruntime, av" 2>/dev/null || scripts/setup.sh service
exec .venv/bin/python -m service serve "$@"
