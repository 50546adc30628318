"""The train_recognition component: the step function on a temp folder, and the component through kfp.local."""

from __future__ import annotations

import json

import cv2
import numpy as np
from kfp.dsl import Dataset

from components.conftest import run_component, tiny_config, tiny_values


def embeds_faces(model_dir, data) -> np.ndarray:
    """Two faces of one identity embedded by the trained model.pt, loaded as `recognize` loads it."""
    from facepipe.recognition.embed import Recognizer

    recognizer = Recognizer.load(model_dir / "model.pt")
    files = sorted(next(iter(sorted((data / "faces").iterdir()))).iterdir())[:2]
    size = recognizer.input_size
    return recognizer.embed(np.stack([cv2.resize(cv2.imread(str(f)), (size, size)) for f in files]))


def test_step_function_trains_a_recognizer_on_a_temp_folder(tiny_data, tiny_trained):
    out, result = tiny_trained["recognizer"]  # train_recognition(tiny config, packed records, temp folder)
    cfg, synth = tiny_config("train_recognition"), tiny_config("synth")
    assert result["num_classes"] == synth.identities and result["num_images"] == synth.identities * synth.images
    assert result["steps"] == min(cfg.max_steps, cfg.epochs * (result["num_images"] // cfg.batch_size))
    assert embeds_faces(out, tiny_data).shape == (2, cfg.embedding_size)
    assert (out / "manifest.json").exists()


def test_component_through_kfp_local(kfp_local, tiny_data, tiny_records):
    from components.train_recognition.component import train_recognition

    task = run_component(kfp_local, train_recognition, {"records": (Dataset, tiny_records)},
                         **tiny_values("train_recognition"))
    assert (task / "recognizer" / "model.onnx").exists()
    assert embeds_faces(task / "recognizer", tiny_data).shape == (2, tiny_config("train_recognition").embedding_size)
    assert json.loads((task / "metrics").read_text())["steps"] == tiny_config("train_recognition").max_steps
    assert "<h1>facepipe step: train_recognition</h1>" in (task / "report").read_text()
