"""label.txt: round trips, the RetinaFace/WIDER variants it must read, and every malformed-input case."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facepipe.data.labels import (FaceLabel, LabelledImage, image_size, load_split, read_labels, read_wider_gt,
                                  validate_labels, write_labels)
from facepipe.errors import DataError

RETINAFACE_SAMPLE = """\
# 0--Parade/0_Parade_marchingband_1_849.jpg
449 330 122 149 488.906 373.643 0.0 542.089 376.442 0.0 515.031 412.83 0.0 485.174 425.893 0.0 538.357 431.491 0.0 0.82
# 0--Parade/0_Parade_Parade_0_904.jpg 1024 768
361 98 263 339 424.143 251.656 0.0 547.134 232.571 0.0 494.121 325.875 0.0 453.83 368.286 0.0 561.978 342.839 0.0 0.89
12 20 6 8 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0
# 0--Parade/0_Parade_marchingband_1_765.jpg
78 221 7 8
# negatives/empty_street.jpg
"""


def _write(tmp_path, text, name="label.txt"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_reads_retinaface_lines_box_only_lines_sizes_after_path_and_negatives(tmp_path):
    images = read_labels(_write(tmp_path, RETINAFACE_SAMPLE))
    assert [i.path for i in images] == ["0--Parade/0_Parade_marchingband_1_849.jpg",
                                        "0--Parade/0_Parade_Parade_0_904.jpg",
                                        "0--Parade/0_Parade_marchingband_1_765.jpg",
                                        "negatives/empty_street.jpg"]
    first = images[0].faces[0]
    assert first.box.tolist() == [449, 330, 122, 149]
    assert first.landmarks[0].tolist() == [488.906, 373.643]
    assert first.landmark_flags.tolist() == [0.0] * 5 and first.blur == pytest.approx(0.82)
    no_landmarks = images[1].faces[1]
    assert no_landmarks.landmarks is None and (no_landmarks.landmark_flags == -1).all()
    box_only = images[2].faces[0]
    assert box_only.box.tolist() == [78, 221, 7, 8] and box_only.landmarks is None
    assert images[3].faces == []


def test_write_then_read_gives_the_same_labels_and_rewriting_the_same_bytes(tmp_path):
    faces = [FaceLabel([10, 20, 30.5, 40.25], [[15, 30], [30, 30], [25, 40], [18, 50], [32, 50.5]],
                       [0, 1, 0, 0, 0], blur=0.3),
             FaceLabel([1, 2, 3, 4]),
             FaceLabel([5, 5, 20, 20], [[8, 9], [-1, -1], [12, 13], [9, 16], [16, 16]], [0, -1, 0, 1, 0])]
    images = [LabelledImage("a/one.jpg", faces), LabelledImage("two.jpg", [])]
    path = write_labels(tmp_path / "label.txt", images)
    back = read_labels(path)
    assert [i.path for i in back] == ["a/one.jpg", "two.jpg"]
    assert back[0].faces == faces and back[1].faces == []
    text = path.read_bytes()
    write_labels(tmp_path / "again.txt", back)
    assert (tmp_path / "again.txt").read_bytes() == text


coordinate = st.floats(0, 4000, allow_nan=False).map(lambda v: round(v, 3))


@st.composite
def face_labels(draw):
    box = [draw(coordinate) for _ in range(4)]
    if draw(st.booleans()):
        return FaceLabel(box)
    points = [[draw(coordinate), draw(coordinate)] for _ in range(5)]
    flags = [draw(st.sampled_from([0.0, 1.0])) for _ in range(5)]
    return FaceLabel(box, points, flags, blur=draw(st.floats(0, 1).map(lambda v: round(v, 3))))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(face_labels(), max_size=4), max_size=5))
def test_round_trip_property(tmp_path_factory, faces_per_image):
    images = [LabelledImage(f"img_{i}.jpg", faces) for i, faces in enumerate(faces_per_image)]
    path = write_labels(tmp_path_factory.mktemp("rt") / "label.txt", images)
    back = read_labels(path)
    assert [(i.path, i.faces) for i in back] == [(i.path, i.faces) for i in images]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet="# 0123456789.-eanif\t/x", max_size=40), max_size=8))
def test_random_text_gives_labels_or_a_data_error_never_a_crash(tmp_path_factory, lines):
    path = tmp_path_factory.mktemp("fz") / "label.txt"
    path.write_text("\n".join(lines))
    try:
        read_labels(path)
    except DataError as exc:
        assert str(path) in str(exc)


@pytest.mark.parametrize("body, line, expected", [
    ("# a.jpg\n1 2 3\n", 2, "3 numbers; expected 4 numbers"),
    ("# a.jpg\n1 2 3 4 5 6 7 8\n", 2, "8 numbers; expected 4 numbers"),
    ("# a.jpg\n1 2 3 4\n1 2 x 4\n", 3, "field 3 is 'x', not a number"),
    ("1 2 3 4\n# a.jpg\n", 1, "face line before any '# path' line"),
    ("# a.jpg\n\n#   \n", 3, "'#' without an image path"),
    ("# a.jpg\n# b.jpg\n# a.jpg\n", 3, "listed twice (first at line 1)"),
    ("# a.jpg\n1 2 -3 4\n", 2, "negative"),
    ("# a.jpg\n1 2 3 4 5 6 0.5 5 6 0 5 6 0 5 6 0 5 6 0 0.1\n", 2, "landmark flag 0.5"),
    ("# a.jpg\n1 2 nan 4\n", 2, "must be finite"),
])
def test_malformed_line_names_file_line_and_what_was_expected(tmp_path, body, line, expected):
    path = _write(tmp_path, body)
    with pytest.raises(DataError) as info:
        read_labels(path)
    assert info.value.path == path and info.value.line == line
    assert f"{path}, line {line}" in str(info.value) and expected in str(info.value)


def test_not_utf8_and_missing_file_are_data_errors(tmp_path):
    path = tmp_path / "label.txt"
    path.write_bytes(b"# a.jpg\n1 2 3 4\n\xff\xfe 1 2\n")
    with pytest.raises(DataError, match="line 3: not UTF-8"):
        read_labels(path)
    with pytest.raises(DataError, match="label file not found"):
        read_labels(tmp_path / "nope.txt")


def _image(path, width, height, ext=".jpg"):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path.with_suffix(ext)), np.full((height, width, 3), 128, np.uint8))


def test_validation_against_images_names_missing_clips_and_drops(tmp_path):
    images_dir = tmp_path / "images"
    _image(images_dir / "a", 100, 80)
    _image(images_dir / "neg", 50, 50, ".png")
    (images_dir / "notes.jpg").write_text("not an image")
    labels = [
        LabelledImage("a.jpg", [
            FaceLabel([10, 10, 20, 20]),           # fine
            FaceLabel([90, 70, 20, 20]),           # reaches outside: clipped to 10 x 10
            FaceLabel([-5, 5, 10, 10]),            # reaches outside on the left: clipped
            FaceLabel([30, 30, 0, 12]),            # zero area: dropped
            FaceLabel([150, 10, 10, 10]),          # entirely outside: dropped
        ]),
        LabelledImage("neg.png", []),
        LabelledImage("gone.jpg", [FaceLabel([1, 1, 5, 5])]),
        LabelledImage("notes.jpg", [FaceLabel([1, 1, 5, 5])]),
    ]
    kept, report = validate_labels(labels, images_dir)
    assert [i.path for i in kept] == ["a.jpg", "neg.png"]
    assert report["images_missing"] == ["gone.jpg"] and report["images_unreadable"] == ["notes.jpg"]
    assert report["boxes_clipped"] == 2 and report["boxes_dropped_zero_area"] == 1
    assert report["boxes_dropped_outside"] == 1 and report["negative_images"] == 1
    assert report["faces"] == 7 and report["faces_kept"] == 3
    boxes = [f.box.tolist() for f in kept[0].faces]
    assert boxes == [[10, 10, 20, 20], [90, 70, 10, 10], [0, 5, 5, 10]]
    with pytest.raises(DataError, match="gone.jpg: image listed in the labels is missing"):
        validate_labels(labels, images_dir, strict=True)


def test_image_size_reads_jpeg_and_png_headers(tmp_path):
    for ext, params in ((".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]), (".jpg", []), (".png", [])):
        path = tmp_path / f"x{len(params)}{ext}"
        cv2.imwrite(str(path), np.zeros((37, 53, 3), np.uint8), params)
        assert image_size(path) == (53, 37)
    (tmp_path / "t.jpg").write_bytes(b"\xff\xd8\xff")  # truncated JPEG header
    assert image_size(tmp_path / "t.jpg") is None


def test_load_split_reads_and_validates_a_split_folder(tmp_path):
    _image(tmp_path / "images" / "s", 64, 64)
    write_labels(tmp_path / "label.txt", [LabelledImage("s.jpg", [FaceLabel([60, 60, 10, 10])])])
    kept, report = load_split(tmp_path)
    assert kept[0].faces[0].box.tolist() == [60, 60, 4, 4] and report["boxes_clipped"] == 1


def test_cli_labels_checks_splits_and_writes_a_clean_copy(tmp_path, capsys, synth_small):
    from facepipe.cli import main

    assert main(["labels", str(synth_small / "detection")]) == 0
    reports = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(r["label_file"]).parent.name for r in reports] == ["test", "train", "val"]

    split = tmp_path / "split"
    _image(split / "images" / "a", 40, 40)
    (split / "label.txt").write_text("# a.jpg\n30 30 20 20\n0 0 0 5\n# gone.jpg\n1 1 4 4\n")
    clean = tmp_path / "clean.txt"
    assert main(["labels", str(split), "--write-clean", str(clean)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["images_missing"] == ["gone.jpg"] and report["boxes_clipped"] == 1
    assert report["boxes_dropped_zero_area"] == 1
    assert main(["labels", str(clean), "--images", str(split / "images")]) == 0
    assert [f.box.tolist() for f in read_labels(clean)[0].faces] == [[30, 30, 10, 10]]

    (split / "label.txt").write_text("# a.jpg\n30 30 20\n")
    assert main(["labels", str(split)]) == 2
    assert f"{split / 'label.txt'}, line 2: 3 numbers" in capsys.readouterr().err


def test_byte_order_mark_and_crlf_are_tolerated(tmp_path):
    path = tmp_path / "label.txt"
    path.write_bytes(b"\xef\xbb\xbf# a.jpg\r\n1 2 3 4\r\n")
    assert read_labels(path)[0].faces[0].box.tolist() == [1, 2, 3, 4]


WIDER_GT = """\
0--Parade/a.jpg
2
10 10 20 24 2 0 0 0 0 0 
30 5 8 8 0 0 0 1 0 0 
0--Parade/b.jpg
0
0 0 0 0 0 0 0 0 0 0 
"""


def test_wider_gt_converts_to_label_txt(tmp_path, capsys):
    from facepipe.cli import main

    gt = _write(tmp_path, WIDER_GT, "wider_face_train_bbx_gt.txt")
    images = read_wider_gt(gt)
    assert [i.path for i in images] == ["0--Parade/a.jpg", "0--Parade/b.jpg"]
    assert images[0].faces[0].box.tolist() == [10, 10, 20, 24] and images[0].faces[0].blur == 1.0
    assert images[1].faces == []
    _image(tmp_path / "images" / "0--Parade" / "a", 64, 64)
    _image(tmp_path / "images" / "0--Parade" / "b", 64, 64)
    out = tmp_path / "label.txt"
    assert main(["labels", str(gt), "--format", "wider-gt", "--images", str(tmp_path / "images"),
                 "--write-clean", str(out)]) == 1  # the invalid face is dropped and counted
    assert json.loads(capsys.readouterr().out)["boxes_dropped_zero_area"] == 1
    back = read_labels(out)
    assert [len(i.faces) for i in back] == [1, 0] and back[0].faces[0].landmarks is None


@pytest.mark.parametrize("body, line, expected", [
    ("a.jpg\nx\n", 2, "expected the number of faces"),
    ("a.jpg\n2\n1 2 3 4 0 0 0 0 0 0\n", 4, "file ends inside a.jpg"),
    ("a.jpg\n1\n1 2 3 4\n", 3, "4 numbers; expected 10"),
    ("1 2 3\n", 1, "expected an image path"),
])
def test_malformed_wider_gt_names_file_and_line(tmp_path, body, line, expected):
    path = _write(tmp_path, body, "gt.txt")
    with pytest.raises(DataError) as info:
        read_wider_gt(path)
    assert info.value.line == line and expected in str(info.value)
