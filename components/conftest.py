"""Fixtures for the component tests: kfp.local with a temp pipeline root, and image names.

Components pin their base image from images/images.lock.json when they are defined; on a
checkout without the lock (before `make push-images`) the tests use flagged unpinned names.
kfp.local's SubprocessRunner runs the component in this interpreter, so the image is only a name.
"""

from __future__ import annotations

import os

import pytest

from facepipe.orchestration import images
# The shared data and service fixtures (tests/conftest.py registers them for tests/ only).
from tests.fixtures.services import mlflow_env, mlflow_server, obs_env, obs_server, s3_env, s3_server  # noqa: F401
from tests.fixtures.synth import synth_small, synth_small_config  # noqa: F401

if not images.lock_path().exists():
    os.environ.setdefault(images.UNPINNED_ENV, "1")


@pytest.fixture
def kfp_local(tmp_path, monkeypatch):
    """kfp.local initialised (subprocess runner, caching off); yields the pipeline root."""
    import kfp.local

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = tmp_path / "kfp-root"
    kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(root),
                   enable_caching=False)
    return root


def step_values(step: str, **overrides) -> dict:
    """A component's config dict as the pipeline passes it: every key, defaults overridden."""
    from facepipe.orchestration.params import step_parameters

    values = {p.key: p.default for p in step_parameters(step)}
    values.update(overrides)
    return values
