"""The evaluate component: the step function on a temp folder, and the component through kfp.local."""

from __future__ import annotations

import json

from kfp.dsl import Dataset, Model

from components.conftest import run_component, tiny_config, tiny_values


def test_step_function_writes_stable_metrics_and_plots(tiny_data, tiny_models, tiny_gallery, tmp_path):
    from facepipe.evaluation.pipeline_eval import STABLE_KEYS, evaluate_pipeline

    detector, recognizer = tiny_models
    metrics = evaluate_pipeline(tiny_config("evaluate"), tiny_data, detector / "model.pt", recognizer / "model.pt",
                                tiny_gallery, tmp_path)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert set(STABLE_KEYS) <= set(written)
    assert 0.0 <= metrics["verification.accuracy"] <= 1.0
    assert list(tmp_path.rglob("*.png"))


def test_component_through_kfp_local(kfp_local, tiny_data, tiny_models, tiny_gallery):
    from components.evaluate.component import evaluate

    detector, recognizer = tiny_models
    task = run_component(kfp_local, evaluate, {"images": (Dataset, tiny_data), "detector": (Model, detector),
                                               "recognizer": (Model, recognizer), "gallery": (Dataset, tiny_gallery)},
                         config=tiny_values("evaluate"), output_uri="", mlflow_parent_run_id="")
    metrics = json.loads((task / "metrics").read_text())
    assert "verification.accuracy" in metrics and "detection.ap50" in metrics
    report = (task / "report").read_text()
    assert report.count("data:image/png;base64,") >= 2  # the plots are inside the report
