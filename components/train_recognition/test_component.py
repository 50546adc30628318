"""The train_recognition component: the step function on a temp folder, and the component through kfp.local."""

from __future__ import annotations

import json

import torch
from kfp.dsl import Dataset

from components.conftest import run_component, tiny_config, tiny_values


def test_step_function_trains_a_recognizer_on_a_temp_folder(tiny_trained):
    out, result = tiny_trained["recognizer"]  # train_recognition(tiny config, packed records, temp folder)
    model = torch.load(out / "model.pt", weights_only=True)
    assert model["kind"] == "recognizer" and model["embedding_size"] == tiny_config("train_recognition").embedding_size
    assert result and (out / "manifest.json").exists()


def test_component_through_kfp_local(kfp_local, tiny_records):
    from components.train_recognition.component import train_recognition

    task = run_component(kfp_local, train_recognition, {"records": (Dataset, tiny_records)},
                         config=tiny_values("train_recognition"), output_uri="", mlflow_parent_run_id="")
    assert (task / "recognizer" / "model.pt").exists() and (task / "recognizer" / "model.onnx").exists()
    assert json.loads((task / "metrics").read_text())
    assert "<h1>facepipe step: train_recognition</h1>" in (task / "report").read_text()
