"""The recognize component: the step function on a temp folder, and the component through kfp.local (file:// URIs)."""

from __future__ import annotations

import json

import pytest

from components.conftest import run_component, tiny_config, tiny_values


@pytest.fixture(scope="module")
def distinct_recognizer(tmp_path_factory):
    """A randomly initialised recognizer: it tells any two images apart. The tiny pipeline's, after a
    few steps, can collapse every face onto one embedding (cosine 0.9999998 between any two faces,
    seen on an AMD EPYC CPU), and then which enrolled image comes first is rounding noise."""
    from tests.gallery.conftest import save_untrained_recognizer

    out = tmp_path_factory.mktemp("distinct-recognizer")
    save_untrained_recognizer(out / "model.pt")
    return out


@pytest.fixture(scope="module")
def face_gallery(tiny_data, distinct_recognizer, tmp_path_factory):
    """Every enrolled image its own template, each image one face (no detector): the tiny detector,
    a few steps trained, finds noise; an enrolled image must then find itself whatever the recognizer."""
    from facepipe.gallery.build import build_gallery

    out = tmp_path_factory.mktemp("face-gallery")
    build_gallery(tiny_config("build_gallery", template="all"), tiny_data / "faces", None,
                  distinct_recognizer / "model.pt", out)
    return out


def best_matches(results_dir) -> list[str]:
    """The best gallery identity of each face recognize found, in image order."""
    results = json.loads((results_dir / "results.json").read_text())
    return [face["top_k"][0]["identity"] for image in results["images"] for face in image["faces"]]


def test_step_function_names_faces_in_images(tiny_data, distinct_recognizer, face_gallery, tmp_path):
    from facepipe.gallery.recognize import recognize

    probe = sorted((tiny_data / "faces").iterdir())[0]
    recognize(tiny_config("recognize"), probe, face_gallery, None, distinct_recognizer / "model.pt", tmp_path)
    matches = best_matches(tmp_path)
    assert len(matches) == tiny_config("synth").images  # one face per image
    # At least the enrolled images of this identity are named as it.
    assert matches.count(probe.name) >= tiny_config("build_gallery").max_images_per_identity, matches
    assert (tmp_path / "results.csv").exists()


def test_component_through_kfp_local(kfp_local, tiny_data, distinct_recognizer, face_gallery):
    from components.recognize.component import recognize

    probe = sorted((tiny_data / "faces").iterdir())[-1]
    task = run_component(kfp_local, recognize, {}, **tiny_values("recognize"), images_uri=probe.as_uri(),
                         gallery_uri=str(face_gallery), detector_uri="", recognizer_uri=str(distinct_recognizer),
                         output_uri="", mlflow_parent_run_id="")
    matches = best_matches(task / "results")
    assert matches.count(probe.name) >= tiny_config("build_gallery").max_images_per_identity, matches
    assert json.loads((task / "metrics").read_text())["faces"] == len(matches)
