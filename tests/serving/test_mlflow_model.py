"""Trained models and the online recognizer as MLflow models: logged (through the local runner's
spool too), registered, loaded back with `mlflow.pyfunc.load_model`, answering as `facepipe serve` does."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import requests


@pytest.fixture
def sqlite_store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)  # through the environment only: mlflow.set_*_uri
    return uri                                      # would stay set for every later test


def test_recognize_model_through_the_spool_answers_as_the_service(serve, people, gallery_dir, untrained_recognizer,
                                                                   sqlite_store, tmp_path, monkeypatch):
    import mlflow

    from facepipe.orchestration.component_runtime import SPOOL_ENV, _ChildRun, replay_spool

    monkeypatch.setenv(SPOOL_ENV, str(tmp_path / "spool"))
    child = _ChildRun("build_gallery", "", {})
    child.log_model("gallery", {"gallery": str(gallery_dir), "detector": None,
                                "recognizer": str(untrained_recognizer)}, "facepipe-recognize")
    child.finish("FINISHED")
    (run_id,) = replay_spool(tmp_path / "spool")
    client = mlflow.tracking.MlflowClient()
    (version,) = client.search_model_versions("name = 'facepipe-recognize'")
    assert version.run_id == run_id and client.get_run(run_id).data.tags["facepipe.registered_model"] == \
        "facepipe-recognize/1"

    model = mlflow.pyfunc.load_model("models:/facepipe-recognize/1")
    meta = model.metadata
    assert meta.signature.inputs.input_names() == ["image"]
    assert any(r.startswith("torch==") for r in
               open(f"{mlflow.artifacts.download_artifacts('models:/facepipe-recognize/1')}/requirements.txt"))
    server = serve()
    images = [p.read_bytes() for name in (people["enrolled"][2], people["stranger"])
              for p in sorted((people["root"] / name).iterdir())]
    got = model.predict(pd.DataFrame({"image": images + [b"not an image"]}), params={"top_k": 3})
    for image, answer in zip(images, got):
        served = requests.post(server.url + "/v1/recognize?top_k=3", data=image, timeout=60).json()
        assert answer == served
    assert got[0]["faces"][0]["identity"] == people["enrolled"][2]
    assert got[-1]["status"] == 415


def test_trained_models_are_registered_pyfunc_models(untrained_detector, untrained_recognizer, sqlite_store):
    import mlflow

    from facepipe import tracking
    from facepipe.detection.infer import Detector
    from facepipe.recognition.embed import Recognizer

    for kind, path, name in (("detector", untrained_detector, "facepipe-detector"),
                             ("recognizer", untrained_recognizer, "facepipe-recognizer")):
        run_id = tracking.start_step_run(None, f"train_{kind}")
        version = tracking.log_model(run_id, kind, {"model": str(path)}, name)
        model = mlflow.pyfunc.load_model(f"models:/{name}/{version.version}")
        spec = model.metadata.signature.inputs.inputs[0]
        rng = np.random.default_rng(0)
        if kind == "detector":
            image = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
            assert spec.shape == (-1, -1, 3)
            np.testing.assert_allclose(model.predict(image), Detector.load(str(path)).detect(image), atol=1e-5)
        else:
            faces = rng.integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
            assert spec.shape == (-1, 32, 32, 3)
            np.testing.assert_allclose(model.predict(faces), Recognizer.load(str(path)).embed(faces), atol=1e-5)
