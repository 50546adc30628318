"""Shared test setup: project paths, the real-data folder, and the fixture plugins."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["tests.fixtures.services", "tests.fixtures.synth"]

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LFW_DEV = PROJECT_ROOT.parent / "shared" / "data" / "lfw-dev"
MXNET_PYTHON = PROJECT_ROOT / ".venv-mxnet" / "bin" / "python"

# Keep torch from fighting over the two cores with the other tiers' subprocesses.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def project_root() -> Path:
    return PROJECT_ROOT


@pytest.fixture(scope="session")
def lfw_dev() -> Path:
    if not (LFW_DEV / "images").is_dir():
        pytest.skip(f"real LFW photos not found at {LFW_DEV} (see ../shared/data/lfw-dev/README.md)")
    return LFW_DEV


@pytest.fixture(scope="session")
def mxnet_python() -> Path:
    """The MXNet 1.9.1 interpreter (scripts/mxnet-venv.sh makes it; `make test` runs that first)."""
    if not MXNET_PYTHON.exists():
        pytest.fail(f"{MXNET_PYTHON} missing: run scripts/mxnet-venv.sh (make test does)")
    return MXNET_PYTHON
