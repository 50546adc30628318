"""The train_detection component: the step function on a temp folder, and the component through kfp.local."""

from __future__ import annotations

import json

import torch
from kfp.dsl import Dataset

from components.conftest import run_component, tiny_config, tiny_values


def test_step_function_trains_a_detector_on_a_temp_folder(tiny_trained):
    out, result = tiny_trained["detector"]  # train_detection(tiny config, data/detection, temp folder)
    model = torch.load(out / "model.pt", weights_only=True)
    assert model["kind"] == "detector"
    assert 1 <= result["train.steps"] <= tiny_config("train_detection").max_steps
    assert (out / "manifest.json").exists() and (out / "model.onnx").exists()


def test_component_through_kfp_local(kfp_local, tiny_data):
    from components.train_detection.component import train_detection

    task = run_component(kfp_local, train_detection, {"images": (Dataset, tiny_data)},
                         config=tiny_values("train_detection"), output_uri="", mlflow_parent_run_id="")
    assert (task / "detector" / "model.pt").exists() and (task / "detector" / "model.onnx").exists()
    metrics = json.loads((task / "metrics").read_text())
    assert "val.ap50" in metrics and metrics["train.steps"] >= 1
    assert "<h1>facepipe step: train_detection</h1>" in (task / "report").read_text()
