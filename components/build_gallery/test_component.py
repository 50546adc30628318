"""The build_gallery component: the step function on a temp folder, and the component through kfp.local."""

from __future__ import annotations

import json

from kfp.dsl import Dataset, Model

from components.conftest import run_component, tiny_config, tiny_values


def test_step_function_enrols_every_identity(tiny_gallery_built):
    out, report = tiny_gallery_built  # build_gallery(tiny config, data/faces, detector, recognizer, temp folder)
    assert report["identities"] == tiny_config("synth").identities and (out / "manifest.json").exists()


def test_component_through_kfp_local(kfp_local, tiny_data, tiny_models):
    from components.build_gallery.component import build_gallery

    detector, recognizer = tiny_models
    task = run_component(kfp_local, build_gallery, {"images": (Dataset, tiny_data), "detector": (Model, detector),
                                                    "recognizer": (Model, recognizer)},
                         config=tiny_values("build_gallery"), output_uri="", mlflow_parent_run_id="")
    assert (task / "gallery" / "manifest.json").exists()
    assert json.loads((task / "metrics").read_text())["identities"] == 8.0
