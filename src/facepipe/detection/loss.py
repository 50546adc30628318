"""Multibox loss: IoU matching of faces to priors, hard-negative mining, SmoothL1 boxes and landmarks, CE scores."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from facepipe.detection.box_coding import encode_boxes, encode_landmarks, iou, point_form

# A face whose best prior overlaps it less than this is too small/odd for the anchor set: it gets no
# positive prior (forcing one would regress a wildly wrong-sized prior and destabilise training).
MIN_BEST_PRIOR_IOU = 0.2


def match(faces: torch.Tensor, priors: torch.Tensor, iou_threshold: float, variances):
    """Targets for one image.

    faces: (K, 15) rows `x1 y1 x2 y2 (normalised), 10 landmark coords, has_landmarks`.
    Returns (box targets (N,4), labels (N,) 1=face 0=background, landmark targets (N,10),
    landmark mask (N,) bool).
    """
    n = priors.shape[0]
    if faces.shape[0] == 0:
        return (torch.zeros(n, 4), torch.zeros(n, dtype=torch.long), torch.zeros(n, 10),
                torch.zeros(n, dtype=torch.bool))
    overlaps = iou(faces[:, :4], point_form(priors))            # (K, N)
    best_prior_iou, best_prior = overlaps.max(dim=1)             # per face
    best_face_iou, best_face = overlaps.max(dim=0)               # per prior
    valid = best_prior_iou >= MIN_BEST_PRIOR_IOU
    # Every matchable face keeps its best prior, even below the threshold.
    for k in torch.nonzero(valid).flatten().tolist():
        best_face[best_prior[k]] = k
        best_face_iou[best_prior[k]] = 2.0
    matched = faces[best_face]
    labels = (best_face_iou >= iou_threshold).long()
    box_t = encode_boxes(matched[:, :4], priors, variances)
    lm_t = encode_landmarks(matched[:, 4:14], priors, variances)
    lm_mask = (labels > 0) & (matched[:, 14] > 0)
    return box_t, labels, lm_t, lm_mask


class MultiBoxLoss(nn.Module):
    def __init__(self, iou_threshold: float = 0.35, neg_pos_ratio: int = 7, variances=(0.1, 0.2),
                 loc_weight: float = 2.0, landmark_weight: float = 1.0):
        super().__init__()
        self.iou_threshold, self.neg_pos_ratio = iou_threshold, neg_pos_ratio
        self.variances, self.loc_weight, self.landmark_weight = list(variances), loc_weight, landmark_weight

    def targets(self, targets: list[torch.Tensor], priors: torch.Tensor):
        parts = [match(t.float().cpu(), priors.cpu(), self.iou_threshold, self.variances) for t in targets]
        return [torch.stack(p).to(priors.device) for p in zip(*parts)]

    def forward(self, predictions, priors: torch.Tensor, targets: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        box_p, logit_p, lm_p = (p.float() for p in predictions)
        box_t, labels, lm_t, lm_mask = self.targets(targets, priors)
        pos = labels > 0
        num_pos = pos.sum().clamp(min=1).float()

        loss_box = F.smooth_l1_loss(box_p[pos], box_t[pos], reduction="sum") / num_pos
        num_lm = lm_mask.sum().clamp(min=1).float()
        loss_lm = F.smooth_l1_loss(lm_p[lm_mask], lm_t[lm_mask], reduction="sum") / num_lm

        # Hard negatives: the background priors the model scores most confidently as faces.
        ce = F.cross_entropy(logit_p.reshape(-1, 2), labels.reshape(-1), reduction="none").reshape(labels.shape)
        mining = ce.detach().clone()
        mining[pos] = 0.0
        order = mining.argsort(dim=1, descending=True)
        rank = order.argsort(dim=1)
        num_neg = (self.neg_pos_ratio * pos.sum(dim=1, keepdim=True)).clamp(max=labels.shape[1] - 1)
        # An image without faces still contributes negatives (as many as one face would give).
        num_neg = torch.where(num_neg == 0, torch.full_like(num_neg, self.neg_pos_ratio), num_neg)
        neg = rank < num_neg
        loss_cls = ce[pos | neg].sum() / num_pos

        total = self.loc_weight * loss_box + loss_cls + self.landmark_weight * loss_lm
        return {"loss": total, "loss_box": loss_box.detach(), "loss_cls": loss_cls.detach(),
                "loss_landmark": loss_lm.detach(), "positives": num_pos.detach()}
