#!/usr/bin/env bash
# Install deepfeat and its test dependencies into ./.venv (idempotent).
# - Debian: the Fashion-MNIST data set (dataset-fashion-mnist) and Chromium (the HTML reports are checked in
#   headless Chromium by tests/test_html_reports.py), when apt-get is available.
# - Python: torch/torchvision pinned by constraints.txt (a fast local install on this platform).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
APT_PKGS=""
[ -d /usr/share/datasets/fashion-mnist ] || APT_PKGS="dataset-fashion-mnist"
command -v chromium >/dev/null 2>&1 || APT_PKGS="$APT_PKGS chromium"
if command -v apt-get >/dev/null 2>&1 && [ -n "$APT_PKGS" ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  # shellcheck disable=SC2086  # a list of package names
  $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $APT_PKGS >/dev/null
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
