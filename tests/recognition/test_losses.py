"""Losses: margin logits match their formulas, Partial FC keeps positives, mining picks the right
triplets, and every configured loss falls when training a tiny backbone on synthetic faces."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facepipe.recognition.losses import (CenterLoss, MarginHead, combined_margin_target,
                                         contrastive_loss, triplet_loss)


@pytest.mark.parametrize("loss,margins,target_fn", [
    ("arcface", (1.0, 0.5, 0.0), lambda th: math.cos(th + 0.5)),
    ("cosface", (1.0, 0.0, 0.35), lambda th: math.cos(th) - 0.35),
    ("sphereface", (1.7, 0.0, 0.0), lambda th: math.cos(1.7 * th)),
    ("combined", (1.0, 0.3, 0.2), lambda th: math.cos(th + 0.3) - 0.2),
    ("normface", (1.0, 0.0, 0.0), lambda th: math.cos(th)),
])
def test_margin_loss_equals_cross_entropy_over_formula_logits(loss, margins, target_fn):
    torch.manual_seed(0)
    head = MarginHead(5, 8, loss, margins, scale=30.0)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    # embeddings near their centers, so m1 * theta + m2 stays below pi (the formula's range)
    emb = F.normalize(head.weight.detach()[labels]) + 0.3 * torch.randn(6, 8)
    got, _ = head(emb, labels)
    cos = (F.normalize(emb) @ F.normalize(head.weight).t()).detach()
    logits = cos.clone()
    for i, y in enumerate(labels.tolist()):
        theta = math.acos(float(cos[i, y]))
        assert theta * margins[0] + margins[1] < math.pi  # inside the formula's range for this check
        logits[i, y] = target_fn(theta)
    expected = F.cross_entropy(30.0 * logits, labels)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_softmax_is_the_plain_linear_classifier():
    torch.manual_seed(0)
    head = MarginHead(4, 8, "softmax")
    emb, labels = torch.randn(5, 8), torch.tensor([0, 1, 2, 3, 1])
    got, correct = head(emb, labels)
    logits = emb @ head.weight.t()
    assert got.item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)
    assert correct.item() == (logits.argmax(1) == labels).sum().item()


@pytest.mark.parametrize("m1,m2,m3", [(1.0, 0.5, 0.0), (4.0, 0.0, 0.0), (1.35, 0.3, 0.2), (2.0, 1.2, 0.1)])
def test_target_logit_keeps_falling_past_pi(m1, m2, m3):
    theta = torch.linspace(0.0, math.pi, 2001, dtype=torch.float64)
    target = combined_margin_target(torch.cos(theta), m1, m2, m3)
    assert torch.all(torch.diff(target) <= 1e-12), "target logit must not rise as the angle grows"
    # (below 0.01 rad the cosine is clamped away from 1 to keep acos differentiable)
    inside = (theta * m1 + m2 <= math.pi - 1e-3) & (theta > 0.01)
    expected = torch.cos(m1 * theta[inside] + m2) - m3
    assert torch.allclose(target[inside], expected, atol=1e-6)
    jumps = torch.diff(target).abs().max()
    assert jumps < 0.02  # continuous where the two pieces meet


def test_partial_fc_samples_negatives_but_always_keeps_positives():
    torch.manual_seed(0)
    head = MarginHead(100, 8, "arcface", (1.0, 0.5, 0.0), sample_rate=0.1)
    emb = torch.randn(12, 8, requires_grad=True)
    labels = torch.arange(0, 96, 8)
    loss, _ = head(emb, labels)
    loss.backward()
    touched = (head.weight.grad.abs().sum(1) > 0).nonzero().squeeze(1)
    assert set(labels.tolist()) <= set(touched.tolist())
    assert len(touched) == 12  # 10% of 100 centers, raised to the 12 positives
    head.eval()  # evaluation uses every center
    full, _ = head(emb, labels)
    assert torch.isfinite(full)


def test_triplet_batch_hard_picks_farthest_positive_and_nearest_negative():
    emb = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1])
    d = torch.cdist(F.normalize(emb), F.normalize(emb))
    expected = []
    for a in range(4):
        pos = [p for p in range(4) if p != a and labels[p] == labels[a]]
        neg = [n for n in range(4) if labels[n] != labels[a]]
        expected.append(max(0.0, max(d[a, p] for p in pos) - min(d[a, n] for n in neg) + 0.5))
    got = triplet_loss(emb, labels, 0.5, "batch_hard")
    assert got.item() == pytest.approx(float(np.mean(expected)), abs=1e-5)


def test_triplet_semi_hard_matches_facenet_selection():
    # per anchor-positive pair: the nearest negative farther than the positive, else the farthest negative
    angles = torch.tensor([0.0, 0.2, 0.1, 0.4, 0.6, 3.0])
    emb = torch.stack([torch.cos(angles), torch.sin(angles)], 1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    d = torch.cdist(emb, emb)
    terms = []
    for a in range(6):
        for p in range(6):
            if p == a or labels[p] != labels[a]:
                continue
            negs = [n for n in range(6) if labels[n] != labels[a]]
            farther = [d[a, n] for n in negs if d[a, n] > d[a, p]]
            chosen = min(farther) if farther else max(d[a, n] for n in negs)
            terms.append(max(0.0, float(d[a, p] - chosen + 0.3)))
    got = triplet_loss(emb, labels, 0.3, "semi_hard")
    assert got.item() == pytest.approx(float(np.mean(terms)), abs=1e-5)
    hard = triplet_loss(emb, labels, 0.3, "batch_hard")
    assert hard.item() > got.item()  # batch-hard takes the harder (too-close) negative at 0.1


def test_contrastive_pulls_positives_and_pushes_negatives_within_margin():
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    # positives coincide (0), negatives at sqrt(2) > margin 1: nothing to learn
    assert contrastive_loss(emb, labels, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    assert contrastive_loss(emb, labels, 2.0).item() == pytest.approx((2.0 - math.sqrt(2)) ** 2, abs=1e-5)


# ------------------------------------------------------------------ every loss falls

@pytest.fixture(scope="module")
def face_batch(face_rec):
    """64 decoded synthetic faces (16 identities x 4) as one tensor, at 32 px for speed."""
    import cv2

    from facepipe.data.insightface import FaceRecordSet
    from facepipe.recognition.backbones import faces_to_tensor

    records = FaceRecordSet(face_rec)
    picks = [i for c in range(16) for i in np.nonzero(records.labels == c)[0][:4]]
    faces = np.stack([cv2.resize(records.decode(int(i))[0], (32, 32), interpolation=cv2.INTER_AREA)
                      for i in picks])
    return faces_to_tensor(faces), torch.as_tensor(records.labels[picks])


CASES = {
    "softmax": {}, "normface": {}, "sphereface": {}, "cosface": {}, "arcface": {}, "combined": {},
    "arcface+center": {"loss": "arcface", "center_loss_weight": 0.5},
    "arcface+partial_fc": {"loss": "arcface", "partial_fc_sample_rate": 0.5},
    "contrastive": {"metric_margin": 1.0}, "triplet_batch_hard": {"loss": "triplet"},
    "triplet_semi_hard": {"loss": "triplet", "mining": "semi_hard"},
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_loss_decreases_on_synthetic_faces(case, face_batch):
    from facepipe.config import from_dict
    from facepipe.recognition.backbones import build_backbone
    from facepipe.recognition.config import RecognitionTrainConfig
    from facepipe.recognition.engine import Criterion

    values = {"loss": case, "batch_size": 16, "scale": 16.0, **CASES[case]}
    cfg = from_dict(RecognitionTrainConfig, values)
    torch.manual_seed(0)
    model = build_backbone("mobilefacenet", 32, 32, width=0.25)
    criterion = Criterion(cfg)
    if not cfg.is_metric:
        criterion.head = MarginHead(16, 32, cfg.loss, cfg.margins(), cfg.scale, cfg.partial_fc_sample_rate)
        if cfg.center_loss_weight:
            criterion.center = CenterLoss(16, 32)
    params = [p for m in (model, criterion.head, criterion.center) if m is not None for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=1e-2)
    images, labels = face_batch
    losses = []
    for step in range(16):
        batch = torch.arange(16) + 16 * (step % 4)  # P=4 identities x K=4 images per batch
        loss, _ = criterion(model(images[batch]), labels[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = np.mean(losses[:4]), np.mean(losses[-4:])
    assert np.isfinite(losses).all()
    print(f"{case}: {first:.3f} -> {last:.3f}")
    assert last < 0.85 * first, f"{case}: loss {first:.3f} -> {last:.3f}"
