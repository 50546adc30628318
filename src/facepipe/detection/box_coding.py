"""Box and landmark coding relative to priors (SSD/RetinaFace style, with variances), IoU and NMS."""

from __future__ import annotations

import numpy as np
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


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, by_min: bool = False) -> np.ndarray:
    """Greedy non-maximum suppression; indices of kept boxes, highest score first. Overlap is IoU,
    or intersection over the smaller box with `by_min` (MTCNN's last stage)."""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        base = np.minimum(areas[i], areas[rest]) if by_min else areas[i] + areas[rest] - inter
        overlap = inter / np.maximum(base, 1e-12)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)
