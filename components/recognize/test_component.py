"""The recognize component: the step function on a temp folder, and the component through kfp.local (file:// URIs)."""

from __future__ import annotations

import json

from components.conftest import run_component, tiny_config, tiny_values


def test_step_function_names_faces_in_images(tiny_data, tiny_models, tiny_gallery, tmp_path):
    from facepipe.gallery.recognize import recognize

    detector, recognizer = tiny_models
    probe = sorted((tiny_data / "faces").iterdir())[0]
    recognize(tiny_config("recognize"), probe, tiny_gallery, detector / "model.pt", recognizer / "model.pt", tmp_path)
    assert (tmp_path / "results.json").exists() and (tmp_path / "results.csv").exists()


def test_component_through_kfp_local(kfp_local, tiny_data, tiny_models, tiny_gallery):
    from components.recognize.component import recognize

    detector, recognizer = tiny_models
    probe = sorted((tiny_data / "faces").iterdir())[0]
    task = run_component(kfp_local, recognize, {}, config=tiny_values("recognize"), images_uri=probe.as_uri(),
                         gallery_uri=str(tiny_gallery), detector_uri=str(detector), recognizer_uri=str(recognizer),
                         output_uri="", mlflow_parent_run_id="")
    results = json.loads((task / "results" / "results.json").read_text())
    assert results
    assert json.loads((task / "metrics").read_text())
