"""`center_crop_resize`: the one centre crop used wherever a face is cut without landmarks (pack, training, evaluation)."""

from __future__ import annotations

import numpy as np


def center_crop_resize(image_bgr: np.ndarray, size: int, crop: float = 1.0) -> np.ndarray:
    """The central square holding `crop` of the shorter side, resized to `size` x `size`."""
    import cv2

    h, w = image_bgr.shape[:2]
    side = max(1, int(round(min(h, w) * crop)))
    top, left = (h - side) // 2, (w - side) // 2
    square = image_bgr[top:top + side, left:left + side]
    if side == size:
        return np.ascontiguousarray(square)
    # INTER_AREA only where it matters (>= 2x): for smaller ratios it costs 4x LINEAR here.
    interp = cv2.INTER_AREA if side >= 2 * size else cv2.INTER_LINEAR if side > size else cv2.INTER_CUBIC
    return cv2.resize(square, (size, size), interpolation=interp)
