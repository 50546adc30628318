"""Bad detection input: clear errors naming file and line, clipped/dropped boxes counted, negatives kept."""

from __future__ import annotations

import pytest
import torch

from facepipe.cli import main
from facepipe.config import from_dict, load_config
from facepipe.detection.config import DetectionTrainConfig
from facepipe.detection.data import DetectionDataset, load_samples
from facepipe.detection.infer import Detector
from facepipe.detection.train import train_detection
from facepipe.errors import ConfigError, DataError

from .conftest import TINY, write_tree

FACE = "10 10 20 20 14 16 0.0 24 16 0.0 19 20 0.0 15 25 0.0 23 25 0.0 0.0"


def test_malformed_label_line_names_file_and_line(tmp_path):
    write_tree(tmp_path / "train", f"# a.jpg\n{FACE}\n# b.jpg\n10 10 twenty 20\n", {"a.jpg": (64, 64), "b.jpg": (64, 64)})
    with pytest.raises(DataError) as err:
        train_detection(from_dict(DetectionTrainConfig, TINY), tmp_path, tmp_path / "out")
    assert "label.txt" in str(err.value) and "line 4" in str(err.value) and "twenty" in str(err.value)


def test_boxes_clipped_dropped_and_negatives_kept(tmp_path, capsys):
    text = (f"# a.jpg\n{FACE}\n-10 -5 30 30\n50 50 40 40\n20 20 0 10\n"
            "# empty.jpg\n# gone.jpg\n10 10 5 5\n")
    write_tree(tmp_path / "train", text, {"a.jpg": (64, 64), "empty.jpg": (64, 48)})
    samples = load_samples(tmp_path / "train" / "label.txt")
    report = load_samples.last_report
    err = capsys.readouterr().err
    assert "gone.jpg" in err and "missing" in err  # the missing file is named
    assert report["boxes_clipped"] == 2 and report["boxes_dropped_zero_area"] == 1
    assert "2 box(es) clipped" in err
    assert [s.path.name for s in samples] == ["a.jpg", "empty.jpg"]
    assert len(samples[0].faces.boxes) == 3
    assert samples[0].faces.boxes.min() >= 0 and samples[0].faces.boxes.max() <= 64
    assert len(samples[1].faces.boxes) == 0  # a negative image
    image, target = DetectionDataset(samples, 64)[(1, 0)]
    assert image.shape == (3, 64, 64) and target.shape == (0, 15)
    # Negatives train too: a run over a tree with a faceless image finishes.
    metrics = train_detection(from_dict(DetectionTrainConfig, TINY | {"max_steps": 1}), tmp_path, tmp_path / "o")
    assert metrics["train.steps"] == 1


def test_no_usable_images_is_an_error(tmp_path):
    write_tree(tmp_path / "train", "# gone.jpg\n10 10 5 5\n", {})
    with pytest.raises(DataError, match="no usable images"):
        load_samples(tmp_path / "train" / "label.txt")
    with pytest.raises(DataError, match="no label.txt"):
        train_detection(from_dict(DetectionTrainConfig, TINY), tmp_path / "nowhere", tmp_path / "out")


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="backbone.*mobilenet0.25"):
        load_config(DetectionTrainConfig, sets=["backbone=resnet18"])
    with pytest.raises(ConfigError, match="min_sizes"):
        load_config(DetectionTrainConfig, sets=["min_sizes=[[16,32],[64,128]]"])
    with pytest.raises(ConfigError, match="image_size"):
        load_config(DetectionTrainConfig, sets=["image_size=100"])
    cfg = load_config(DetectionTrainConfig, sets=["min_sizes=[[8,16],[32,64],[128,256]]", "schedule=cosine"])
    assert cfg.min_sizes[0] == [8, 16] and cfg.schedule == "cosine"


def test_wrong_model_files_are_refused(tmp_path, capsys):
    torch.save({"kind": "recognizer", "state_dict": {}}, tmp_path / "rec.pt")
    with pytest.raises(DataError, match="expected a detector"):
        Detector.load(tmp_path / "rec.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(DataError, match="not a facepipe detector model.pt"):
        Detector.load(tmp_path / "junk.pt")
    write_tree(tmp_path / "imgs", "", {"x.jpg": (32, 32)})
    assert main(["detect", "--model", str(tmp_path / "missing.pt"), str(tmp_path / "imgs" / "images"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "missing.pt" in capsys.readouterr().err
    assert main(["detect", "--model", str(tmp_path / "rec.pt"), str(tmp_path / "empty"), "--out", "o"]) == 2
    assert "empty: no such file or folder" in capsys.readouterr().err


def test_finding_8_a_detection_set_with_zero_faces_is_refused(tmp_path):
    write_tree(tmp_path / "train", "# a.jpg\n# b.jpg\n20 20 0 10\n", {"a.jpg": (64, 64), "b.jpg": (64, 64)})
    with pytest.raises(DataError, match=r"train/label\.txt: no faces: 2 usable image\(s\), none with a usable box"):
        train_detection(from_dict(DetectionTrainConfig, TINY), tmp_path, tmp_path / "out")


def test_finding_8_labels_names_the_line_of_each_dropped_box_and_refuses_an_empty_file(tmp_path, capsys):
    import json

    write_tree(tmp_path / "train", f"# a.jpg\n{FACE}\n20 20 0 10\n90 90 5 5\n", {"a.jpg": (64, 64)})
    assert main(["labels", str(tmp_path / "train")]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["boxes_dropped"] == [{"line": 3, "image": "a.jpg", "reason": "zero_area"},
                                       {"line": 4, "image": "a.jpg", "reason": "outside"}]
    load_samples(tmp_path / "train" / "label.txt")
    assert "dropped (lines 3, 4)" in capsys.readouterr().err
    (tmp_path / "train" / "label.txt").write_text("\n")
    assert main(["labels", str(tmp_path / "train")]) == 2
    assert "label.txt: lists no images" in capsys.readouterr().err
