"""The train_detection component: the step function on a temp folder, and the component through kfp.local."""

from __future__ import annotations

import json

import cv2
import numpy as np
from kfp.dsl import Dataset

from components.conftest import run_component, tiny_config, tiny_values


def detects_on_a_scene(model_dir, data) -> np.ndarray:
    """The trained model.pt loaded as `detect` loads it, run on one training scene: (N, 15) rows."""
    from facepipe.detection.infer import Detector

    scene = next(p for p in sorted((data / "detection" / "train").rglob("*")) if p.suffix in (".jpg", ".png"))
    return Detector.load(model_dir / "model.pt").detect(cv2.imread(str(scene)), score_threshold=0.0)


def test_step_function_trains_a_detector_on_a_temp_folder(tiny_data, tiny_trained):
    out, result = tiny_trained["detector"]  # train_detection(tiny config, data/detection, temp folder)
    cfg = tiny_config("train_detection")
    assert result["train.steps"] == min(cfg.max_steps, result["total_steps"])
    labels = (tiny_data / "detection" / "train" / "label.txt").read_text().splitlines()
    assert result["num_images"] == sum(line.startswith("#") for line in labels)  # every labelled scene
    assert detects_on_a_scene(out, tiny_data).shape[1] == 15  # box, score, 5 landmarks
    assert (out / "manifest.json").exists() and (out / "model.onnx").exists()


def test_component_through_kfp_local(kfp_local, tiny_data):
    from components.train_detection.component import train_detection

    task = run_component(kfp_local, train_detection, {"images": (Dataset, tiny_data)},
                         **tiny_values("train_detection"))
    assert (task / "detector" / "model.onnx").exists()
    assert detects_on_a_scene(task / "detector", tiny_data).shape[1] == 15
    metrics = json.loads((task / "metrics").read_text())
    assert "val.ap50" in metrics
    assert metrics["train.steps"] == min(tiny_config("train_detection").max_steps, metrics["total_steps"])
    assert "<h1>facepipe step: train_detection</h1>" in (task / "report").read_text()
