"""The recognize component: the step function on a temp folder, and the component through kfp.local (file:// URIs)."""

from __future__ import annotations

import json

from components.conftest import run_component, tiny_config, tiny_values


def best_matches(results_dir) -> list[str]:
    """The best gallery identity of each face recognize found, in image order."""
    results = json.loads((results_dir / "results.json").read_text())
    return [face["top_k"][0]["identity"] for image in results["images"] for face in image["faces"]]


def test_step_function_names_faces_in_images(tiny_data, tiny_models, tiny_gallery, tmp_path):
    from facepipe.gallery.recognize import recognize

    detector, recognizer = tiny_models
    probe = sorted((tiny_data / "faces").iterdir())[0]
    recognize(tiny_config("recognize"), probe, tiny_gallery, detector / "model.pt", recognizer / "model.pt", tmp_path)
    matches = best_matches(tmp_path)
    assert len(matches) >= tiny_config("synth").images  # a face (at least) in every image of the folder
    assert matches.count(probe.name) > len(matches) / 2, matches  # mostly the identity whose folder it is
    assert (tmp_path / "results.csv").exists()


def test_component_through_kfp_local(kfp_local, tiny_data, tiny_models, tiny_gallery):
    from components.recognize.component import recognize

    detector, recognizer = tiny_models
    probe = sorted((tiny_data / "faces").iterdir())[0]
    task = run_component(kfp_local, recognize, {}, config=tiny_values("recognize"), images_uri=probe.as_uri(),
                         gallery_uri=str(tiny_gallery), detector_uri=str(detector), recognizer_uri=str(recognizer),
                         output_uri="", mlflow_parent_run_id="")
    matches = best_matches(task / "results")
    assert matches.count(probe.name) > len(matches) / 2, matches
    assert json.loads((task / "metrics").read_text())["faces"] == len(matches)
