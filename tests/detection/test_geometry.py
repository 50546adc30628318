"""Priors, box/landmark coding and the model's output layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from facepipe.config import from_dict
from facepipe.detection.anchors import prior_boxes
from facepipe.detection.box_coding import (decode_boxes, decode_landmarks, encode_boxes, encode_landmarks,
                                           point_form)
from facepipe.detection.config import DetectionTrainConfig
from facepipe.detection.model import build_model

REF = dict(min_sizes=[[16, 32], [64, 128], [256, 512]], steps=[8, 16, 32])


def test_640_input_has_16800_priors():
    priors = prior_boxes(640, 640, **REF)
    assert priors.shape == (16800, 4)
    # First prior: centre of the first stride-8 cell, 16 px; last: last stride-32 cell, 512 px.
    assert torch.allclose(priors[0], torch.tensor([4 / 640, 4 / 640, 16 / 640, 16 / 640]))
    assert torch.allclose(priors[-1], torch.tensor([624 / 640, 624 / 640, 512 / 640, 512 / 640]))


def test_non_square_priors_follow_the_grid():
    priors = prior_boxes(480, 640, **REF)
    assert priors.shape[0] == 2 * (60 * 80 + 30 * 40 + 15 * 20)
    assert torch.allclose(priors[1, 2:], torch.tensor([32 / 640, 32 / 480]))


@pytest.mark.parametrize("backbone", ["mobilenet0.25", "resnet50"])
def test_model_predicts_one_row_per_prior(backbone):
    cfg = from_dict(DetectionTrainConfig, {"backbone": backbone})
    model = build_model(cfg).eval()
    with torch.no_grad():
        boxes, logits, landmarks = model(torch.zeros(1, 3, 96, 128))
    n = prior_boxes(96, 128, cfg.min_sizes, cfg.steps).shape[0]
    assert boxes.shape == (1, n, 4) and logits.shape == (1, n, 2) and landmarks.shape == (1, n, 10)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 0.9), st.floats(0.0, 0.9), st.floats(0.01, 0.5), st.floats(0.01, 0.5)),
                min_size=1, max_size=8),
       st.integers(0, 16799))
def test_box_and_landmark_coding_round_trip(boxes, prior_index):
    priors = prior_boxes(640, 640, **REF)
    xywh = torch.tensor(boxes, dtype=torch.float64)
    xyxy = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
    p = priors[prior_index:prior_index + 1].double().expand(len(boxes), 4)
    variances = [0.1, 0.2]
    assert torch.allclose(decode_boxes(encode_boxes(xyxy, p, variances), p, variances), xyxy, atol=1e-9)
    landmarks = torch.rand(len(boxes), 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(decode_landmarks(encode_landmarks(landmarks, p, variances), p, variances), landmarks,
                          atol=1e-9)


def test_a_box_equal_to_its_prior_encodes_to_zero():
    priors = prior_boxes(160, 160, **REF)
    offsets = encode_boxes(point_form(priors), priors, [0.1, 0.2])
    assert float(offsets.abs().max()) < 1e-5
    centres = priors[:, :2].repeat(1, 5)
    assert float(encode_landmarks(centres, priors, [0.1, 0.2]).abs().max()) < 1e-6
    assert np.isclose(float(decode_boxes(torch.zeros(1, 4), priors[:1], [0.1, 0.2])[0, 2]),
                      float(priors[0, 0] + priors[0, 2] / 2))
