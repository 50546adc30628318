"""What recognition adds to the training engine: its loss (`Criterion`) and its verification pass."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from facepipe.recognition.backbones import faces_to_tensor
from facepipe.recognition.losses import contrastive_loss, triplet_loss
from facepipe.training.context import autocast


@dataclass
class Criterion:
    """The configured loss: a MarginHead (+ optional center loss) or a metric-learning loss."""

    cfg: object
    head: torch.nn.Module | None = None
    center: torch.nn.Module | None = None

    def __call__(self, embeddings, labels):
        cfg = self.cfg
        if self.head is not None:
            loss, correct = self.head(embeddings, labels)
            if self.center is not None:
                loss = loss + cfg.center_loss_weight * self.center(embeddings, labels)
            return loss, correct
        margin = cfg.metric_margin
        if cfg.loss == "triplet":
            return triplet_loss(embeddings, labels, margin, cfg.mining), None
        return contrastive_loss(embeddings, labels, margin), None


@torch.no_grad()
def embed_faces(model, faces_bgr: np.ndarray, device, batch_size: int = 64, flip: bool = True,
                amp: bool = False, norms: bool = False):
    """L2-normalised embeddings of uint8 BGR faces; with flip, image + mirror image summed first.

    With `norms`, also each face's embedding norm before normalising (per view: the flip sum is
    halved), a quality signal for weighting gallery templates: `(embeddings, norms)`.
    """
    was_training = model.training
    model.eval()
    out, lengths = [], []
    for i in range(0, len(faces_bgr), batch_size):
        x = faces_to_tensor(faces_bgr[i:i + batch_size]).to(device)
        with autocast(device, amp):
            e = model(x).float()
            if flip:
                e = e + model(torch.flip(x, dims=[3])).float()
        lengths.append((e.norm(dim=1) / (2.0 if flip else 1.0)).cpu())
        out.append(torch.nn.functional.normalize(e).cpu())
    model.train(was_training)
    if not out:
        empty = np.zeros((0, 0), np.float32)
        return (empty, np.zeros(0, np.float32)) if norms else empty
    emb = torch.cat(out).numpy().astype(np.float32)
    return (emb, torch.cat(lengths).numpy().astype(np.float32)) if norms else emb


def evaluate(model, targets: dict, device, amp: bool = False) -> dict:
    """LFW-protocol verification on each loaded target {name: VerificationSet}; metrics by name."""
    from facepipe.evaluation.verification import verification_metrics

    metrics = {}
    for name, target in targets.items():
        emb = embed_faces(model, target.faces, device, amp=amp)
        scores = np.sum(emb[target.left] * emb[target.right], axis=1)
        for key, value in verification_metrics(scores, target.same, target.folds).items():
            if not (isinstance(value, float) and math.isnan(value)):
                metrics[f"{name}.{key}"] = value
    return metrics
