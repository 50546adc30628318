"""Paths shared by the test tiers (fixtures are registered by the root conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LFW_DEV = PROJECT_ROOT.parent / "shared" / "data" / "lfw-dev"
MXNET_PYTHON = PROJECT_ROOT / ".venv-mxnet" / "bin" / "python"

# Keep torch from fighting over the two cores with the other tiers' subprocesses.
os.environ.setdefault("OMP_NUM_THREADS", "2")
