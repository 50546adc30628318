"""The commands a user runs: train-detection, detect, evaluate detection; and LFW composites."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

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


def test_mosaics_of_whole_photos_label_main_faces_at_the_lfw_geometry(lfw_dev, tmp_path):
    from facepipe.data.composite import CompositeConfig, build_composites, read_ignored
    from facepipe.data.labels import read_labels

    cfg = CompositeConfig(scenes=4, width=320, height=240, photos_min=2, photos_max=4, photos=12, whole_photos=True,
                          first_letters="IJK", negative_fraction=0.0, evaluation=True, seed=5)
    report = build_composites(cfg, lfw_dev, tmp_path)
    labels = read_labels(tmp_path / "label.txt")
    whole = [x for x in labels if x.path.startswith("photos/")]
    mosaics = [x for x in labels if not x.path.startswith("photos/")]
    assert len(whole) == 12 and len(mosaics) == 4 and report["faces"] == sum(len(x.faces) for x in labels)
    # Whole photos are read through the link, never copied; evaluation labels the main face from
    # the geometry alone (the cascade benchmarked beside the detector must not draw its own answers).
    assert (tmp_path / "images" / "photos").is_symlink()
    for item in whole:
        assert cv2.imread(str(tmp_path / "images" / item.path)).shape == (250, 250, 3)
        assert [f.box.tolist() for f in item.faces] == [[70.0, 70.0, 110.0, 110.0]]
    assert sum(len(x.faces) for x in mosaics) >= 4
    for item in mosaics:
        image = cv2.imread(str(tmp_path / "images" / item.path))
        assert image.shape == (240, 320, 3)
        for face in item.faces:
            x, y, w, h = face.box
            assert face.landmarks is None and w == pytest.approx(h, abs=0.01) and w >= cfg.min_face - 1
            assert x >= 0 and y >= 0 and x + w <= 320 and y + h <= 240
            # A photo is there: the box is not flat background.
            assert image[int(y):int(y + h), int(x):int(x + w)].std() > 5
    assert set(read_ignored(tmp_path)) <= {x.path for x in labels}
    # Same config, same scenes.
    again = build_composites(cfg, lfw_dev, tmp_path / "again")
    assert again == report
    a = cv2.imread(str(tmp_path / "images" / mosaics[0].path))
    b = cv2.imread(str(tmp_path / "again" / "images" / mosaics[0].path))
    assert np.array_equal(a, b)


def test_negative_mosaics_hold_no_faces_and_training_mode_uses_the_teacher(lfw_dev, tmp_path):
    from facepipe.data.composite import CompositeConfig, build_composites
    from facepipe.data.labels import read_labels

    build_composites(CompositeConfig(scenes=2, photos=20, negative_fraction=1.0, first_letters="IJK", seed=2),
                     lfw_dev, tmp_path / "neg")
    assert [len(x.faces) for x in read_labels(tmp_path / "neg" / "label.txt")] == [0, 0]
    build_composites(CompositeConfig(scenes=0, photos=10, whole_photos=True, first_letters="IJK", seed=2),
                     lfw_dev, tmp_path / "teach")
    boxes = [f.box.tolist() for x in read_labels(tmp_path / "teach" / "label.txt") for f in x.faces[:1]]
    # The cascade's box replaces the geometry box where they agree: not all boxes are the fixed one.
    assert len(boxes) == 10 and any(b != [70.0, 70.0, 110.0, 110.0] for b in boxes)


def test_place_mirrors_boxes_inside_their_frame():
    from facepipe.data.composite import _place

    frame = (10, 20, 210, 240)
    boxes = np.array([[60.0, 70.0, 100.0, 110.0]], np.float32)
    kept, cut = _place(boxes, 2.0, frame, (5, 7), False, np.array([0, 0, 1000, 1000.0]))
    assert kept.tolist() == [[5 + 100, 7 + 100, 5 + 180, 7 + 180]] and len(cut) == 0
    # Mirrored: x -> 10 + 210 - x inside the frame, so [60, 100] -> [120, 160], then frame-local x2.
    kept, _ = _place(boxes, 2.0, frame, (5, 7), True, np.array([0, 0, 1000, 1000.0]))
    assert kept.tolist() == [[5 + 220, 7 + 100, 5 + 300, 7 + 180]]
    # Cut by the visible region: 40% shown stays unlabelled but is returned to be ignored.
    kept, cut = _place(boxes, 1.0, (0, 0, 250, 250), (0, 0), False, np.array([84.0, 0, 1000, 1000]))
    assert len(kept) == 0 and cut.tolist() == [[60, 70, 100, 110]]


def test_label_faces_command_labels_a_users_photos(lfw_dev, tmp_path, capsys):
    import shutil

    src = tmp_path / "mine"
    (src / "trip").mkdir(parents=True)
    people = sorted((lfw_dev / "images").glob("J*"))[:3]
    for person in people:
        shutil.copy(sorted(person.glob("*.jpg"))[0], src / "trip")
    blank = np.full((200, 300, 3), 90, np.uint8)
    cv2.imwrite(str(src / "wall.png"), blank)
    (src / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "labelled"
    assert main(["label-faces", str(src), str(out)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["images"] == 4 and report["unreadable"] == 1 and report["negative_images"] >= 1
    labels = {x.path: x for x in read_labels_of(out)}
    assert not labels["wall.png"].faces
    found = [labels[f"trip/{sorted(p.glob('*.jpg'))[0].name}"].faces for p in people]
    # LFW photos are cut around a cascade detection: the teacher finds their centred face.
    for faces in found:
        assert faces and any(abs(f.box[0] + f.box[2] / 2 - 125) < 25 for f in faces)
        assert all(f.landmarks is None for f in faces)
    assert (out / "images" / "trip").is_dir() and "label.txt" in read_manifest(out, verify=True)["files"]
    # The output trains: train-detection reads it as it is.
    assert main(["labels", str(out)]) == 0
    assert main(["label-faces", str(tmp_path / "nowhere"), str(tmp_path / "x")]) == 2
    assert "not a folder of photos" in capsys.readouterr().err


def read_labels_of(split):
    from facepipe.data.labels import read_labels

    return read_labels(split / "label.txt")


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
