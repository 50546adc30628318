#!/usr/bin/env bash
# MXNet 1.9.1 in its own venv: the outside reference for RecordIO compatibility tests and benches.
# MXNet breaks with numpy >= 1.24, so it never enters the project's environment.
set -euo pipefail
cd "$(dirname "$0")/.."
V=.venv-mxnet
if [ -x $V/bin/python ] && $V/bin/python -c "import mxnet" 2>/dev/null; then exit 0; fi
python3 -m venv $V
$V/bin/pip install -q --disable-pip-version-check mxnet==1.9.1 numpy==1.23.5 opencv-python-headless==4.8.1.78
$V/bin/python -c "import mxnet; print('mxnet', mxnet.__version__)"
