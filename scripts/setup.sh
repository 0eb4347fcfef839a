#!/usr/bin/env bash
# Install deepfeat and its test dependencies into ./.venv (idempotent).
# - Debian: the Fashion-MNIST data set (dataset-fashion-mnist), when apt-get is available.
# - Python: torch/torchvision pinned by constraints.txt (a fast local install on this platform).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if command -v apt-get >/dev/null 2>&1 && [ ! -d /usr/share/datasets/fashion-mnist ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
