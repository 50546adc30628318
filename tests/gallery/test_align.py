"""Alignment: landmarks land on the ArcFace template; no landmarks -> flagged center crop; main face choice."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from facepipe.data.crop import center_crop_resize
from facepipe.gallery.align import (ARCFACE_TEMPLATE_112, FaceAligner, align_face,
                                    similarity_transform, template)


def _rotation(deg: float, scale: float, shift) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[scale * np.cos(a), -scale * np.sin(a), shift[0]],
                     [scale * np.sin(a), scale * np.cos(a), shift[1]]])


def test_similarity_transform_recovers_a_known_transform():
    truth = _rotation(23.0, 1.7, (12.5, -4.0))
    src = np.random.default_rng(0).uniform(0, 200, (5, 2))
    dst = src @ truth[:, :2].T + truth[:, 2]
    np.testing.assert_allclose(similarity_transform(src, dst), truth, atol=1e-9)


def test_similarity_transform_never_mirrors():
    src = ARCFACE_TEMPLATE_112.copy()
    mirrored = src.copy()
    mirrored[:, 0] = 112 - mirrored[:, 0]
    m = similarity_transform(src, mirrored)
    assert np.linalg.det(m[:, :2]) > 0


def _photo_with_dots(points: np.ndarray, shape=(300, 400)) -> np.ndarray:
    image = np.zeros((*shape, 3), np.uint8)
    for x, y in points:
        cv2.circle(image, (int(round(x * 16)), int(round(y * 16))), 3 * 16, (255, 255, 255), -1, cv2.LINE_AA, 4)
    return image


def _dot_centres(image: np.ndarray) -> np.ndarray:
    gray = image[:, :, 0].astype(np.float64)
    n, labels = cv2.connectedComponents((gray > 40).astype(np.uint8))
    centres = []
    for k in range(1, n):
        ys, xs = np.nonzero(labels == k)
        w = gray[ys, xs]
        centres.append([np.sum(xs * w) / w.sum(), np.sum(ys * w) / w.sum()])
    return np.array(centres)


@pytest.mark.parametrize("size", [112, 64])
def test_landmarks_land_on_the_template(size):
    # A "face" rotated 30 degrees, twice the template's scale, somewhere in a larger photo.
    placement = _rotation(30.0, 2.0, (150.0, 20.0))
    points = ARCFACE_TEMPLATE_112 @ placement[:, :2].T + placement[:, 2]
    aligned, used = align_face(_photo_with_dots(points), points, size=size)
    assert used and aligned.shape == (size, size, 3)
    found = _dot_centres(aligned)
    assert len(found) == 5
    expected = template(size)
    # Each template point has a dot within a pixel.
    dist = np.linalg.norm(found[None, :, :] - expected[:, None, :], axis=2).min(axis=1)
    assert dist.max() < 1.0, dist


def test_without_landmarks_the_center_crop_is_flagged():
    image = np.random.default_rng(1).integers(0, 255, (250, 250, 3), dtype=np.uint8)
    for landmarks in (None, np.full((5, 2), np.nan), np.zeros((5, 2))):
        aligned, used = align_face(image, landmarks, size=112)
        assert not used and aligned.shape == (112, 112, 3)
    np.testing.assert_array_equal(center_crop_resize(image, 125, 0.5), image[62:187, 62:187])


class FixedDetections:
    """A detector answering with given rows (the real one's output format); for choice logic only."""

    digest = "fixed"

    def __init__(self, rows):
        self.rows = np.asarray(rows, np.float32).reshape(-1, 15)

    def detect(self, image, score_threshold=0.5, nms_threshold=0.4):
        return self.rows

    def detect_batch(self, images, score_threshold=0.5, nms_threshold=0.4):
        return [self.rows for _ in images]


def _row(x1, y1, side, score):
    pts = ARCFACE_TEMPLATE_112 * (side / 112.0) + [x1, y1]
    return [x1, y1, x1 + side, y1 + side, score, *pts.ravel()]


def test_main_face_is_the_large_confident_one_and_extra_faces_are_reported():
    image = np.zeros((400, 400, 3), np.uint8)
    small_sure, big_sure, big_unsure = _row(10, 10, 60, 0.99), _row(150, 150, 200, 0.95), _row(0, 200, 210, 0.2)
    aligned, info = FaceAligner(FixedDetections([small_sure, big_sure, big_unsure])).align(image, 112)
    assert info["status"] == "several_faces" and info["faces"] == 3
    assert info["box"] == [150, 150, 350, 350] and info["used_landmarks"]
    faces = FaceAligner(FixedDetections([small_sure, big_sure])).align_all_batch([image], 112)[0]
    assert [f[1]["box"][0] for f in faces] == [150, 10]  # main face first


def test_no_face_and_no_detector_are_told_apart():
    image = np.zeros((120, 100, 3), np.uint8)
    aligned, info = FaceAligner(FixedDetections([])).align(image, 64)
    assert info["status"] == "no_face" and not info["used_landmarks"] and aligned.shape == (64, 64, 3)
    assert FaceAligner(FixedDetections([])).align_all_batch([image], 64) == [[]]
    _, info = FaceAligner(None).align(image, 64)
    assert info["status"] == "no_detector"


def test_implausible_landmarks_fall_back_to_the_center_crop():
    from facepipe.gallery.align import landmark_problem

    face = ARCFACE_TEMPLATE_112 * 1.5 + [40, 30]  # a 168 px face at (40, 30)
    box = [40, 30, 40 + 168, 30 + 168]
    assert landmark_problem(face, box)[0] is None
    mirrored = face.copy()
    mirrored[:, 1] = 2 * face[:, 1].mean() - mirrored[:, 1]  # upside down: mouth above the eyes
    assert landmark_problem(mirrored, box)[0] == "not_a_face"
    assert landmark_problem(face[[2, 1, 0, 3, 4]], box)[0] == "not_a_face"  # eye and nose swapped
    assert landmark_problem(face + [300, 0], [340, 30, 508, 198])[0] is None
    assert landmark_problem(face + [300, 0], box)[0] == "outside_box"
    tiny = (face - face.mean(0)) * 0.1 + face.mean(0)  # a face-shaped speck inside a big box
    assert landmark_problem(tiny, box)[0] == "scale_mismatch"
    assert landmark_problem(np.full((5, 2), 50.0), None)[0] == "degenerate"
    # a strong yaw (nose 30 template px off centre) is still a face
    yaw = ARCFACE_TEMPLATE_112.copy()
    yaw[2, 0] += 20
    assert landmark_problem(yaw, [0, 0, 112, 112])[0] is None
    image = np.random.default_rng(2).integers(0, 255, (250, 250, 3), dtype=np.uint8)
    aligned, used = align_face(image, mirrored, 112, center_crop=0.5, box=box)
    assert not used
    np.testing.assert_array_equal(aligned, center_crop_resize(image, 112, 0.5))


def test_every_fallback_is_counted_with_its_reason():
    from facepipe.gallery.align import alignment_summary

    image = np.zeros((300, 300, 3), np.uint8)
    good = _row(50, 50, 150, 0.9)
    bad = list(good)
    bad[5:15] = list(np.array(good[5:15]).reshape(5, 2)[[3, 4, 2, 0, 1]].ravel())  # mouth above eyes
    aligner = FaceAligner(FixedDetections([good]))
    assert aligner.align(image, 64)[1]["fallback"] is None
    aligner.detector = FixedDetections([bad])
    _, info = aligner.align(image, 64)
    assert info["status"] == "ok" and not info["used_landmarks"] and info["fallback"] == "implausible_landmarks"
    aligner.detector = FixedDetections([])
    aligner.align(image, 64)
    assert aligner.counts == {"": 1, "implausible_landmarks": 1, "no_face": 1}
    assert aligner.summary("gallery.") == {
        "gallery.alignment.aligned": 1, "gallery.alignment.fallback": 2, "gallery.alignment.fallback_rate": 0.6667,
        "gallery.alignment.fallback_implausible_landmarks": 1, "gallery.alignment.fallback_no_face": 1}
    aligner.reset()
    assert aligner.summary()["alignment.fallback_rate"] is None
    assert alignment_summary(["no_detector"] * 3)["alignment.fallback_no_detector"] == 3
