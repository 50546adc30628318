"""Box and landmark coding relative to priors (SSD/RetinaFace style, with variances), and IoU."""

from __future__ import annotations

import torch


def point_form(priors: torch.Tensor) -> torch.Tensor:
    """(cx, cy, w, h) -> (x1, y1, x2, y2)."""
    return torch.cat([priors[:, :2] - priors[:, 2:] / 2, priors[:, :2] + priors[:, 2:] / 2], dim=1)


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of xyxy boxes: (A, 4) x (B, 4) -> (A, B)."""
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(dim=1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(dim=1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-12)


def encode_boxes(boxes: torch.Tensor, priors: torch.Tensor, variances) -> torch.Tensor:
    """xyxy boxes matched to priors -> regression targets (dcx, dcy, dw, dh)."""
    centre = ((boxes[:, :2] + boxes[:, 2:]) / 2 - priors[:, :2]) / (variances[0] * priors[:, 2:])
    size = torch.log(((boxes[:, 2:] - boxes[:, :2]) / priors[:, 2:]).clamp(min=1e-6)) / variances[1]
    return torch.cat([centre, size], dim=1)


def decode_boxes(offsets: torch.Tensor, priors: torch.Tensor, variances) -> torch.Tensor:
    """Regression outputs (..., N, 4) -> xyxy boxes in the priors' normalised frame."""
    centre = priors[..., :2] + offsets[..., :2] * variances[0] * priors[..., 2:]
    size = priors[..., 2:] * torch.exp(offsets[..., 2:] * variances[1])
    return torch.cat([centre - size / 2, centre + size / 2], dim=-1)


def encode_landmarks(landmarks: torch.Tensor, priors: torch.Tensor, variances) -> torch.Tensor:
    """(N, 10) landmark coordinates -> offsets from the prior centre in prior-size units."""
    pts = landmarks.reshape(-1, 5, 2)
    out = (pts - priors[:, None, :2]) / (variances[0] * priors[:, None, 2:])
    return out.reshape(-1, 10)


def decode_landmarks(offsets: torch.Tensor, priors: torch.Tensor, variances) -> torch.Tensor:
    shape = offsets.shape
    pts = offsets.reshape(*shape[:-1], 5, 2)
    out = priors[..., None, :2] + pts * variances[0] * priors[..., None, 2:]
    return out.reshape(shape)
