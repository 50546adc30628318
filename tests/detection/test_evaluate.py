"""AP@0.5 with all-point interpolation, difficulty subsets and recall at FPPI on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest

from facepipe.detection.evaluate import all_point_ap, landmark_errors, plot_pr_curves, pr_curve, score_detections
from facepipe.detection.infer import nms


def test_perfect_detections_score_one():
    gts = [np.array([[0, 0, 50, 50], [100, 100, 130, 130]], float)]
    dets = [np.array([[0, 0, 50, 50, 0.9], [100, 100, 130, 130, 0.8]], float)]
    metrics, _ = score_detections(dets, gts)
    assert metrics["detection.ap50"] == pytest.approx(1.0)
    assert metrics["detection.recall_at_0.1fppi"] == pytest.approx(1.0)


def test_all_point_interpolation_by_hand():
    # Ranked: TP, FP, TP over 2 faces -> recall 0.5 @ P 1, recall 1 @ P 2/3; AP = 0.5*1 + 0.5*2/3.
    gts = [np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float)]
    dets = [np.array([[0, 0, 10, 10, 0.9], [50, 50, 60, 60, 0.8], [20, 20, 30, 30, 0.7]], float)]
    curve = pr_curve(dets, gts)
    assert all_point_ap(curve["recall"], curve["precision"]) == pytest.approx(0.5 + 0.5 * 2 / 3)
    # A duplicate detection of a found face is a false positive; IoU below 0.5 is a miss.
    dup = [np.array([[0, 0, 10, 10, 0.9], [0, 0, 10, 9, 0.85], [20, 20, 26, 26, 0.7]], float)]
    c = pr_curve(dup, gts)
    assert c["recall"][-1] == pytest.approx(0.5) and c["precision"][-1] == pytest.approx(1 / 3)


def test_difficulty_ignores_faces_outside_the_subset_and_fppi():
    gts = [np.array([[0, 0, 100, 100], [200, 200, 210, 210]], float), np.zeros((0, 4))]
    dets = [np.array([[0, 0, 100, 100, 0.9], [200, 200, 210, 210, 0.8]], float),
            np.array([[5, 5, 50, 50, 0.95]], float)]
    metrics, curves = score_detections(dets, gts)
    assert metrics["detection.faces_easy"] == 1 and metrics["detection.faces_hard"] == 2
    # Easy: the 10 px face is ignored, its detection counts neither way.
    assert curves["easy"]["num_gt"] == 1 and len(curves["easy"]["scores"]) == 2
    # One FP (the top score) over 2 images = 0.5 FPPI before any TP: recall at 0.1 FPPI is 0.
    assert metrics["detection.recall_at_0.1fppi"] == 0.0
    assert metrics["detection.recall_at_1fppi"] == pytest.approx(1.0)
    assert metrics["detection.ap50_hard"] == pytest.approx(2 / 3 * 0.5 + 0.5 * (2 / 3), abs=0.2)


def test_no_detections_and_no_faces(tmp_path):
    metrics, curves = score_detections([np.zeros((0, 15))], [np.array([[0, 0, 10, 10]], float)])
    assert metrics["detection.ap50"] == 0.0
    metrics, _ = score_detections([np.array([[0, 0, 5, 5, 0.5]])], [np.zeros((0, 4))])
    assert metrics["detection.ap50"] == 0.0
    png = plot_pr_curves({"hard": curves["hard"]}, tmp_path / "pr.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10.5]], float)
    scores = np.array([0.5, 0.9, 0.8, 0.7])
    assert nms(boxes, scores, 0.4).tolist() == [1, 2]
    assert nms(boxes, scores, 0.99).tolist() == [1, 2, 3, 0]


def test_ignored_faces_count_neither_way():
    gts = [np.array([[0, 0, 50, 50]], float)]
    dets = [np.array([[0, 0, 50, 50, 0.9], [100, 100, 130, 130, 0.95], [300, 300, 320, 320, 0.8]], float)]
    without = pr_curve(dets, gts)
    assert without["precision"][-1] == pytest.approx(1 / 3)
    # The top-scoring detection sits on a known, unscored face: neither TP nor FP.
    with_ignore = pr_curve(dets, gts, ignore=[np.array([[100, 100, 130, 130]], float)])
    assert with_ignore["num_gt"] == 1 and len(with_ignore["scores"]) == 2
    assert with_ignore["precision"].tolist() == [1.0, 0.5]


def test_landmark_error_is_mean_point_distance_over_face_size():
    from facepipe.detection.augment import Faces
    from facepipe.detection.data import Sample

    truth = np.arange(10, dtype=np.float32).reshape(1, 5, 2) + 20
    faces = Faces(np.array([[10, 10, 50, 50]], np.float32), truth, np.array([True]))
    det = np.zeros((2, 15))
    det[0, :5] = [10, 10, 50, 50, 0.9]
    det[0, 5:] = (truth + [3, 4]).reshape(10)          # every point 5 px off
    det[1, :5] = [10, 10, 50, 50, 0.5]                 # a lower-scoring duplicate is not the one taken
    errors = landmark_errors([det], [Sample(None, faces)])
    assert errors.tolist() == pytest.approx([5 / 40])
    # No landmarks labelled, or no match: nothing to measure.
    unlabelled = Faces(faces.boxes, truth, np.array([False]))
    assert len(landmark_errors([det], [Sample(None, unlabelled)])) == 0
    far = det + np.array([200.0] * 4 + [0.0] * 11)
    assert len(landmark_errors([far], [Sample(None, faces)])) == 0
