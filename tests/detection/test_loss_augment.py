"""Matching and hard-negative mining, and augmentation that keeps boxes and landmarks true."""

from __future__ import annotations

import numpy as np
import torch

from facepipe.detection.anchors import prior_boxes
from facepipe.detection.augment import Faces, augment, hflip, random_square_crop
from facepipe.detection.box_coding import point_form
from facepipe.detection.loss import MultiBoxLoss, match

REF = dict(min_sizes=[[16, 32], [64, 128], [256, 512]], steps=[8, 16, 32])


def _face(box, landmarks=True):
    lm = np.linspace(box[0], box[2], 10) if landmarks else np.zeros(10)
    return np.concatenate([box, lm, [1.0 if landmarks else 0.0]]).astype(np.float32)


def test_a_face_on_a_prior_matches_it_and_landmarks_only_where_labelled():
    priors = prior_boxes(160, 160, **REF)
    on_prior = point_form(priors[100:101])[0].numpy()
    faces = torch.from_numpy(np.stack([_face(on_prior), _face(np.array([0.5, 0.5, 0.9, 0.9]), landmarks=False)]))
    box_t, labels, lm_t, lm_mask = match(faces, priors, 0.35, [0.1, 0.2])
    assert labels[100] == 1
    assert torch.allclose(box_t[100], torch.zeros(4), atol=1e-5)
    assert lm_mask[100] and lm_mask.sum() == (lm_mask & (labels > 0)).sum()
    # Priors matched to the face without landmarks are positives without landmark targets.
    second = np.array([0.5, 0.5, 0.9, 0.9], np.float32)
    p = point_form(priors).numpy()
    inside = (p[:, 0] >= second[0] - 0.05) & (p[:, 2] <= second[2] + 0.05) & \
             (p[:, 1] >= second[1] - 0.05) & (p[:, 3] <= second[3] + 0.05)
    assert labels[torch.from_numpy(inside)].sum() > 0
    assert not lm_mask[torch.from_numpy(inside)].any()


def test_hard_negatives_are_neg_pos_ratio_times_positives():
    priors = prior_boxes(160, 160, **REF)
    n = priors.shape[0]
    torch.manual_seed(0)
    predictions = (torch.zeros(1, n, 4), torch.randn(1, n, 2), torch.zeros(1, n, 10))
    face = torch.from_numpy(_face(point_form(priors[500:501])[0].numpy())[None])
    loss = MultiBoxLoss(neg_pos_ratio=7)
    out = loss(predictions, priors, [face])
    _, labels, _, _ = match(face, priors, 0.35, [0.1, 0.2])
    pos = int(labels.sum())
    # The classification loss covers exactly the positives and the 7*pos most confident negatives.
    ce = torch.nn.functional.cross_entropy(predictions[1][0], labels, reduction="none")
    neg_ce = ce[labels == 0].sort(descending=True).values[:7 * pos]
    expected = (ce[labels == 1].sum() + neg_ce.sum()) / pos
    assert torch.isclose(out["loss_cls"], expected, rtol=1e-5)
    # No face has landmarks -> no landmark loss; an empty image still gives a finite loss.
    no_lm = face.clone()
    no_lm[0, 14] = 0
    assert float(loss(predictions, priors, [no_lm])["loss_landmark"]) == 0.0
    empty = loss(predictions, priors, [torch.zeros(0, 15)])
    assert torch.isfinite(empty["loss"]) and float(empty["loss_cls"]) > 0


def test_flip_mirrors_boxes_and_swaps_left_right_landmarks():
    image = np.zeros((50, 100, 3), np.uint8)
    image[:, :10] = 255  # a marker on the image-left edge
    # left eye x=40, right eye x=60, nose 50, left mouth 42, right mouth 58
    lm = np.array([[[40, 20], [60, 20], [50, 28], [42, 36], [58, 36]]], np.float32)
    faces = Faces(np.array([[30, 10, 70, 45]], np.float32), lm, np.array([True]))
    flipped_image, flipped = hflip(image, faces)
    assert flipped_image[:, -10:].min() == 255
    np.testing.assert_allclose(flipped.boxes, [[30, 10, 70, 45]])
    # The new image-left eye is the old right eye, mirrored: x = 100 - 60 = 40.
    np.testing.assert_allclose(flipped.landmarks[0], [[40, 20], [60, 20], [50, 28], [42, 36], [58, 36]])
    off_centre = Faces(np.array([[5, 5, 25, 25]], np.float32),
                       np.array([[[10, 10], [20, 10], [15, 15], [11, 20], [19, 20]]], np.float32), np.array([True]))
    _, moved = hflip(image, off_centre)
    np.testing.assert_allclose(moved.boxes, [[75, 5, 95, 25]])
    np.testing.assert_allclose(moved.landmarks[0], [[80, 10], [90, 10], [85, 15], [81, 20], [89, 20]])
    assert moved.landmarks[0, 0, 0] < moved.landmarks[0, 1, 0]  # left eye still left of right eye
    _, back = hflip(image, moved)
    np.testing.assert_allclose(back.landmarks, off_centre.landmarks)


def test_crops_keep_face_centres_and_drop_small_faces():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (200, 300, 3), dtype=np.uint8)
    boxes = np.array([[10, 10, 60, 70], [200, 100, 290, 190], [150, 20, 154, 24]], np.float32)
    lm = np.repeat(((boxes[:, None, :2] + boxes[:, None, 2:]) / 2), 5, axis=1)
    faces = Faces(boxes, lm, np.array([True, True, False]))
    for seed in range(30):
        r = np.random.default_rng(seed)
        crop, kept = random_square_crop(image, faces, [0.3, 0.6, 1.0], r)
        assert crop.shape[0] == crop.shape[1] or crop.shape == image.shape
        assert len(kept.boxes) >= 1
        assert (kept.boxes >= 0).all() and (kept.boxes <= crop.shape[0]).all()
        out, final = augment(image, faces, 64, np.random.default_rng(seed), [0.3, 0.6, 1.0], min_face_size=6)
        assert out.shape == (64, 64, 3)
        sides = np.minimum(final.boxes[:, 2] - final.boxes[:, 0], final.boxes[:, 3] - final.boxes[:, 1])
        assert (sides >= 6).all()  # the 4 px face never survives resizing to 64 px
        assert final.has_landmarks.all()  # (the only face without landmarks is the dropped one)
    # Same seed, same sample: augmentation is reproducible (what exact resume relies on).
    a, fa = augment(image, faces, 64, np.random.default_rng(5), [0.3, 1.0])
    b, fb = augment(image, faces, 64, np.random.default_rng(5), [0.3, 1.0])
    assert np.array_equal(a, b) and np.array_equal(fa.boxes, fb.boxes)


def test_crops_can_refuse_to_cut_large_faces_into_parts():
    # A 250x250 photo with one 110 px face, as LFW's: a 0.3 crop (75 px) can only hold part of it.
    image = np.random.default_rng(1).integers(0, 255, (250, 250, 3), dtype=np.uint8)
    faces = Faces(np.array([[70, 70, 180, 180]], np.float32), np.zeros((1, 5, 2), np.float32), np.array([False]))
    cut = shown = 0
    for seed in range(40):
        _crop, loose = random_square_crop(image, faces, [0.3, 1.0], np.random.default_rng(seed))
        cut += float(np.prod(loose.boxes[0, 2:] - loose.boxes[0, :2])) < 0.7 * 110 * 110
        crop, kept = random_square_crop(image, faces, [0.3, 1.0], np.random.default_rng(seed), min_visible=0.7)
        visible = float(np.prod(kept.boxes[0, 2:] - kept.boxes[0, :2]))
        assert visible >= 0.7 * 110 * 110 and crop.shape[0] == 250  # only the whole-photo scale holds it
        shown += 1
    assert cut > 5 and shown == 40  # the reference's crop does cut it (what the option is for)
