"""Fixtures for the component tests: kfp.local with a temp pipeline root, and image names.

Components pin their base image from images/images.lock.json when they are defined; on a
checkout without the lock (before `make push-images`) the tests use flagged unpinned names.
kfp.local's SubprocessRunner runs the component in this interpreter, so the image is only a name.
"""

from __future__ import annotations

import os

import pytest

from facepipe.config import project_file
from facepipe.orchestration import images
# The shared data and service fixtures are registered once by the root conftest.py.

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
    """A component's `<step>__<key>` inputs as the pipeline passes them: every key, defaults overridden."""
    from facepipe.orchestration.params import step_parameters

    return {p.name: overrides.get(p.key, p.default) for p in step_parameters(step)}


TINY_JOB = project_file("jobs/tiny.yaml")


def tiny_config(step: str, **overrides):
    """The step's config from jobs/tiny.yaml (what the pipeline tests run), with overrides."""
    from facepipe.config import load_config
    from facepipe.steps import STEPS

    return load_config(STEPS[step].config_class(), TINY_JOB, {k: str(v) for k, v in overrides.items()},
                       section=step)


def tiny_values(step: str, **overrides) -> dict:
    """tiny_config as the component's `<step>__<key>` inputs."""
    from facepipe.config import to_dict
    from facepipe.orchestration.params import encode, step_parameters

    cfg = to_dict(tiny_config(step, **overrides))
    return {p.name: encode(cfg[p.key], p.encoded) for p in step_parameters(step)}


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """jobs/tiny.yaml's synthetic data folder (faces/, faces_eval/, pairs, detection/)."""
    from facepipe.data.synth import synthesize

    out = tmp_path_factory.mktemp("tiny-data")
    synthesize(tiny_config("synth"), out)
    return out


@pytest.fixture(scope="session")
def tiny_records(tiny_data, tmp_path_factory):
    from facepipe.data.pack import pack

    out = tmp_path_factory.mktemp("tiny-records")
    pack(tiny_config("pack"), tiny_data / "faces", out, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_trained(tiny_data, tiny_records, tmp_path_factory):
    """{"detector": (dir, result), "recognizer": (dir, result)}: the step functions, a few steps each."""
    from facepipe.detection.train import train_detection
    from facepipe.recognition.train import train_recognition

    detector, recognizer = tmp_path_factory.mktemp("tiny-detector"), tmp_path_factory.mktemp("tiny-recognizer")
    return {"detector": (detector, train_detection(tiny_config("train_detection"), tiny_data / "detection", detector)),
            "recognizer": (recognizer, train_recognition(tiny_config("train_recognition"), tiny_records, recognizer))}


@pytest.fixture(scope="session")
def tiny_models(tiny_trained):
    """(detector dir, recognizer dir), each with model.pt."""
    return tiny_trained["detector"][0], tiny_trained["recognizer"][0]


@pytest.fixture(scope="session")
def tiny_gallery_built(tiny_data, tiny_models, tmp_path_factory):
    """(gallery dir, build report) from the build_gallery step function."""
    from facepipe.gallery.build import build_gallery

    out = tmp_path_factory.mktemp("tiny-gallery")
    detector, recognizer = tiny_models
    return out, build_gallery(tiny_config("build_gallery"), tiny_data / "faces", detector / "model.pt",
                              recognizer / "model.pt", out)


@pytest.fixture(scope="session")
def tiny_gallery(tiny_gallery_built):
    return tiny_gallery_built[0]


def run_component(root, component, imports: dict, **params):
    """Run `component` through kfp.local in a one-task pipeline whose input artifacts are imported
    from existing folders (`imports`: input name -> (artifact class, path)); returns its output folder."""
    from kfp import dsl

    @dsl.pipeline(name="component-test")
    def one_task():
        artifacts = {name: dsl.importer(artifact_uri=str(path), artifact_class=cls, reimport=False).output
                     for name, (cls, path) in imports.items()}
        component(**artifacts, **params)

    one_task()
    (run,) = sorted(root.glob("component-test-*"))
    (task,) = [p for p in run.iterdir() if p.is_dir() and not p.name.startswith("importer")]
    return task
