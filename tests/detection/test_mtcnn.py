"""The MTCNN teacher: faces and landmarks on real photos, as a detector facepipe aligns and labels with."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from facepipe.cli import main
from facepipe.detection.infer import load_detector, nms
from facepipe.errors import ConfigError
from facepipe.gallery.align import FaceAligner, landmark_problem


@pytest.fixture(scope="module")
def mtcnn():
    return load_detector("mtcnn")


def photos(lfw_dev, letter: str, count: int):
    people = sorted((lfw_dev / "images").glob(f"{letter}*"))
    return [sorted(p.glob("*.jpg"))[0] for p in people[:count]]


def test_finds_the_centred_face_and_its_landmarks_on_lfw_photos(mtcnn, lfw_dev):
    for path in photos(lfw_dev, "K", 12):
        rows = mtcnn.detect(cv2.imread(str(path)))
        assert rows.shape[1] == 15 and (np.diff(rows[:, 4]) <= 0).all(), path
        main = rows[np.argmin([np.hypot((r[0] + r[2]) / 2 - 125, (r[1] + r[3]) / 2 - 125) for r in rows])]
        # LFW photos are cut around a face at the centre.
        assert abs((main[0] + main[2]) / 2 - 125) < 25 and abs((main[1] + main[3]) / 2 - 125) < 30, path
        assert main[4] > 0.9
        eyes_l, eyes_r, nose, mouth_l, mouth_r = main[5:].reshape(5, 2)
        assert eyes_l[0] < eyes_r[0] and mouth_l[0] < mouth_r[0], path
        assert max(eyes_l[1], eyes_r[1]) < nose[1] < min(mouth_l[1], mouth_r[1]), path
        problem, _ = landmark_problem(main[5:].reshape(5, 2), main[:4])
        assert problem is None, (path, problem)


def test_a_face_free_image_gives_no_rows(mtcnn):
    rng = np.random.default_rng(0)
    noise = cv2.GaussianBlur(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8), (9, 9), 3)
    assert mtcnn.detect(noise).shape == (0, 15)
    assert mtcnn.detect(np.full((100, 100, 3), 128, np.uint8)).shape == (0, 15)


def test_aligner_takes_mtcnn_by_name(lfw_dev):
    aligner = FaceAligner("mtcnn")
    image = cv2.imread(str(photos(lfw_dev, "J", 1)[0]))
    aligned, info = aligner.align(image, 112)
    assert aligned.shape == (112, 112, 3) and info["used_landmarks"] and info["status"] in ("ok", "several_faces")
    assert aligner.digest and aligner.summary()["alignment.aligned"] == 1


def test_nms_by_min_drops_a_box_inside_a_larger_one():
    boxes = np.array([[0, 0, 100, 100], [10, 10, 50, 50]], np.float32)
    scores = np.array([0.9, 0.8], np.float32)
    assert list(nms(boxes, scores, 0.7)) == [0, 1]  # IoU 0.16
    assert list(nms(boxes, scores, 0.7, by_min=True)) == [0]  # the small box lies wholly inside


def test_missing_weights_package_says_how_to_install(monkeypatch):
    from importlib import metadata

    from facepipe.detection import mtcnn

    def absent(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", absent)
    with pytest.raises(ConfigError, match="pip install --no-deps facenet-pytorch"):
        mtcnn.weights_dir()


def test_label_faces_with_mtcnn_writes_landmarks_train_detection_reads(lfw_dev, tmp_path, capsys):
    import shutil

    from facepipe.data.labels import read_labels

    src = tmp_path / "mine"
    src.mkdir()
    for path in photos(lfw_dev, "I", 4):
        shutil.copy(path, src / path.name)
    cv2.imwrite(str(src / "wall.png"), np.full((200, 300, 3), 90, np.uint8))
    out = tmp_path / "labelled"
    assert main(["label-faces", str(src), str(out), "--teacher", "mtcnn"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["images"] == 5 and report["teacher"].startswith("mtcnn")
    labels = {x.path: x for x in read_labels(out / "label.txt")}
    assert not labels["wall.png"].faces
    for name, image in labels.items():
        if name == "wall.png":
            continue
        main_face = min(image.faces, key=lambda f: abs(f.xyxy[[0, 2]].mean() - 125))
        assert main_face.has_landmarks and (main_face.landmark_flags == 0).all(), name
        assert abs(main_face.xyxy[[0, 2]].mean() - 125) < 25
    assert report["landmarked_faces"] >= 4
    assert main(["labels", str(out)]) == 0


def test_pack_aligns_on_mtcnn(lfw_dev, tmp_path):
    from facepipe.data.pack import PackConfig, pack

    src = tmp_path / "people"
    for person in sorted((lfw_dev / "images").glob("K*"))[:3]:
        (src / person.name).mkdir(parents=True)
        for f in sorted(person.glob("*.jpg"))[:2]:
            (src / person.name / f.name).symlink_to(f)
    report = pack(PackConfig(size=56, workers=1, detector="mtcnn"), src, tmp_path / "rec", progress=False)
    assert report["alignment.aligned"] == report["images_packed"] > 0
    with pytest.raises(ConfigError, match="mtcnn for the MTCNN teacher"):
        PackConfig(detector=str(tmp_path / "none.pt")).validate()


def test_place_mirrors_landmarks_and_swaps_left_and_right():
    from facepipe.data.composite import _place

    frame = (0, 0, 200, 200)
    row = np.array([[50, 50, 110, 120, 60, 70, 100, 70, 80, 90, 65, 105, 95, 105]], np.float32)
    kept, _ = _place(row, 1.0, frame, (0, 0), True, np.array([0, 0, 1000, 1000.0]))
    points = kept[0, 4:].reshape(5, 2)
    # x -> 200 - x, then the eyes and the mouth corners swap: the image-left eye stays first.
    assert points.tolist() == [[100, 70], [140, 70], [120, 90], [105, 105], [135, 105]]
    assert kept[0, :4].tolist() == [90, 50, 150, 120]
    # A landmark outside the visible region makes the face's landmarks unknown; -1 stays -1.
    kept, _ = _place(row, 1.0, frame, (0, 0), False, np.array([0, 0, 98, 1000.0]))
    assert (kept[0, 4:] == -1).all()
    unknown = np.concatenate([row[:, :4], np.full((1, 10), -1, np.float32)], 1)
    kept, _ = _place(unknown, 2.0, frame, (3, 3), False, np.array([0, 0, 1000, 1000.0]))
    assert (kept[0, 4:] == -1).all()


def test_mosaics_with_the_mtcnn_teacher_carry_landmarks_inside_their_faces(lfw_dev, tmp_path):
    from facepipe.data.composite import CompositeConfig, build_composites
    from facepipe.data.labels import read_labels

    cfg = CompositeConfig(scenes=3, width=320, height=240, photos_min=2, photos_max=3, photos=8, whole_photos=True,
                          first_letters="ABC", negative_fraction=0.0, teacher="mtcnn", seed=3)
    report = build_composites(cfg, lfw_dev, tmp_path)
    assert report["landmarked_faces"] >= 8 and "mtcnn" in report["labels"]
    labels = read_labels(tmp_path / "label.txt")
    whole = [x for x in labels if x.path.startswith("photos/")]
    assert sum(x.faces[0].has_landmarks for x in whole) >= 7
    landmarked = [f for x in labels if not x.path.startswith("photos/") for f in x.faces if f.has_landmarks]
    assert landmarked
    for face in landmarked:
        x1, y1, x2, y2 = face.xyxy
        side = x2 - x1
        lm = face.landmarks
        assert (lm[:, 0] > x1 - 0.1 * side).all() and (lm[:, 0] < x2 + 0.1 * side).all()
        assert (lm[:, 1] > y1 - 0.1 * side).all() and (lm[:, 1] < y2 + 0.1 * side).all()
        assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]  # image-left eye and mouth corner first
