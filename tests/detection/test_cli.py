"""The commands a user runs: train-detection, detect, evaluate detection; and LFW composites."""

from __future__ import annotations

import json

import cv2
import numpy as np

from facepipe.cli import main
from facepipe.manifest import read_manifest


def test_train_detect_evaluate_commands(scenes, tmp_path, capsys):
    job = tmp_path / "job.yaml"
    job.write_text("train_detection:\n  image_size: 64\n  batch_size: 4\n  epochs: 1\n  eval_max_images: 2\n"
                   "  crop_scales: [0.8, 1.0]\n")
    model_dir = tmp_path / "model"
    assert main(["train-detection", str(scenes), str(model_dir), "--config", str(job),
                 "--set", "max_steps=2", "--set", "checkpoint_every=1"]) == 0
    assert json.loads((model_dir / "metrics.json").read_text())["train.steps"] == 2
    model = model_dir / "model.pt"

    out = tmp_path / "detect"
    images = scenes / "test" / "images"
    one = sorted(images.glob("*.jpg"))[0]
    assert main(["detect", "--model", str(model), str(images), "--out", str(out), "--score-threshold", "0.0",
                 "--scales", "1,1.5"]) == 0
    found = json.loads((out / "detections.json").read_text())
    assert one.name in found
    rows = found[one.name]
    assert rows and all(len(r) == 15 for r in rows)
    annotated = cv2.imread(str(out / "annotated" / one.name))
    assert annotated.shape == cv2.imread(str(one)).shape
    assert "detections.json" in read_manifest(out, verify=True)["files"]

    ev = tmp_path / "eval"
    assert main(["evaluate", "detection", "--model", str(model), "--data", str(scenes), "--out", str(ev)]) == 0
    metrics = json.loads((ev / "metrics.json").read_text())
    assert 0.0 <= metrics["detection.ap50"] <= 1.0
    assert {"detection.ap50_easy", "detection.ap50_medium", "detection.ap50_hard",
            "detection.recall_at_1fppi"} <= set(metrics)
    assert (ev / "pr_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["detect", "--model", str(model), str(tmp_path / "no.jpg"), "--out", str(out)]) == 2
    assert "no.jpg" in capsys.readouterr().err


def test_composites_paste_faces_at_known_boxes(lfw_dev, tmp_path):
    from facepipe.data.composite import CompositeConfig, build_composites
    from facepipe.data.labels import read_labels

    cfg = CompositeConfig(scenes=3, width=320, height=240, faces_min=2, faces_max=3, first_letters="IJK",
                          negative_fraction=0.0, seed=5)
    report = build_composites(cfg, lfw_dev, tmp_path)
    labels = read_labels(tmp_path / "label.txt")
    assert len(labels) == 3 and report["faces"] == sum(len(x.faces) for x in labels) >= 3
    for item in labels:
        image = cv2.imread(str(tmp_path / "images" / item.path))
        assert image.shape == (240, 320, 3)
        for face in item.faces:
            x, y, w, h = face.box
            assert face.landmarks is None and w == h >= cfg.min_face
            assert x >= 0 and y >= 0 and x + w <= 320 and y + h <= 240
            # The pasted photo is there: the box is not flat background.
            assert image[int(y):int(y + h), int(x):int(x + w)].std() > 5
    # Same config, same scenes.
    again = build_composites(cfg, lfw_dev, tmp_path / "again")
    assert again == report
    a = cv2.imread(str(tmp_path / "images" / labels[0].path))
    b = cv2.imread(str(tmp_path / "again" / "images" / labels[0].path))
    assert np.array_equal(a, b)


def test_train_detection_logs_to_mlflow(scenes, tmp_path, monkeypatch):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "detection-test")
    assert main(["train-detection", str(scenes), str(tmp_path / "m"), "--image-size", "64", "--batch-size", "4",
                 "--epochs", "1", "--set", "max_steps=2", "--set", "log_every=1", "--set", "eval_max_images=2",
                 "--set", "export_onnx=false"]) == 0
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("detection-test").experiment_id])
    # the edge logs the config once, under its own keys and values as given ("auto", not "cpu");
    # the step's derived numbers are metrics
    from facepipe.config import keys
    from facepipe.detection.config import DetectionTrainConfig

    assert sorted(run.data.params) == sorted(keys(DetectionTrainConfig))
    assert run.data.params["device"] == "auto" and run.data.params["image_size"] == "64"
    assert run.data.metrics["world_size"] == 1
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train.loss")] == [1, 2]
    assert "val.ap50" in run.data.metrics
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"metrics.json", "loss_curve.png"}


def test_torchrun_ddp_two_processes(scenes, tmp_path, project_root):
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", "-m", "facepipe.cli", "train-detection", str(scenes), str(out),
                           "--image-size", "64", "--batch-size", "4", "--epochs", "1",
                           "--set", "eval_max_images=2", "--set", "export_onnx=false"],
                          cwd=project_root, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    train_images = len([line for line in (scenes / "train" / "label.txt").read_text().splitlines()
                        if line.startswith("#")])
    # Each step takes 4 images on each of the 2 processes.
    assert metrics["world_size"] == 2 and metrics["train.steps"] == train_images // 8
    assert "model.pt" in read_manifest(out, verify=True)["files"]
