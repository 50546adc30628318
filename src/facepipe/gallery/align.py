"""Face alignment: 5-point similarity transform onto the ArcFace template, center-crop fallback.

The recognizer is trained on faces warped so that the eyes, nose and mouth corners land on fixed
points (InsightFace's 112x112 `arcface_dst`); every face it embeds must be warped the same way.
When a face has no usable landmarks (no detector, the detector found nothing, or its landmarks
are implausible: `landmark_problem`) the image is center-cropped instead, and the caller is told
(`used_landmarks=False`, `fallback` reason) so every step can count and report it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from facepipe.data.crop import center_crop_resize
from facepipe.errors import DataError

# InsightFace's ArcFace template for 112x112 faces: left eye, right eye, nose tip, left and right
# mouth corners ("left" = image left), in pixels.
ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
     [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)


def template(size: int = 112) -> np.ndarray:
    """The 5-point template for a square `size` x `size` crop (the 112 template scaled)."""
    if size < 8:
        raise ValueError(f"alignment size must be >= 8 pixels, got {size}")
    return ARCFACE_TEMPLATE_112 * (size / 112.0)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src onto dst.

    Umeyama (1991): closed form from the SVD of the cross-covariance; returns a 2x3 matrix for
    cv2.warpAffine. Reflections are excluded so a mirrored landmark order cannot flip the face.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"expected two (N,2) point sets with N >= 2, got {src.shape} and {dst.shape}")
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_var = (src_c ** 2).sum() / len(src)
    if src_var < 1e-12:
        raise ValueError("landmarks are all at one point")
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0
    rotation = u @ np.diag(d) @ vt
    scale = (s * d).sum() / src_var
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


# A 5-point set is a face when a similarity maps it onto the template with an RMS residual under
# this share of the crop side. Measured: ground-truth landmarks of the synthetic scenes 0.022
# median, 0.048 max; a strong yaw (nose 30 px off at 112) 0.095; a mirrored or upside-down set
# 0.20, eyes swapped with the nose 0.14, uniformly random points 0.10 at the 1st percentile.
MAX_TEMPLATE_RESIDUAL = 0.10
# Landmarks may stick out of the detector's box by this share of its side (chins, wide mouths).
BOX_MARGIN = 0.10
# The landmarks' implied face size against the box's longer side: outside this range the
# landmarks belong to another (or no) face.
FACE_TO_BOX = (1 / 3, 3.0)


def landmark_problem(points: np.ndarray, box=None, size: int = 112) -> tuple[str | None, np.ndarray | None]:
    """Why these landmarks cannot be aligned on (None if they can), and the transform if they can.

    `points` (5,2) image pixels; `box` (x1, y1, x2, y2) the detector's face box or None. Reasons:
    `not_finite`, `degenerate`, `not_a_face` (the five points are not arranged like eyes, nose
    and mouth corners), `outside_box`, `scale_mismatch` (their spread does not fit the box).
    """
    if points.shape != (5, 2) or not np.isfinite(points).all() or not (points >= 0).any():
        return "not_finite", None
    target = template(size)
    try:
        matrix = similarity_transform(points, target)
    except ValueError:
        return "degenerate", None
    mapped = points @ matrix[:, :2].T + matrix[:, 2]
    if np.sqrt(((mapped - target) ** 2).sum(1).mean()) > MAX_TEMPLATE_RESIDUAL * size:
        return "not_a_face", None
    if box is not None:
        x1, y1, x2, y2 = (float(v) for v in np.asarray(box, np.float64).reshape(-1)[:4])
        w, h = max(x2 - x1, 1e-6), max(y2 - y1, 1e-6)
        mx, my = BOX_MARGIN * w, BOX_MARGIN * h
        if ((points[:, 0] < x1 - mx) | (points[:, 0] > x2 + mx) | (points[:, 1] < y1 - my)
                | (points[:, 1] > y2 + my)).any():
            return "outside_box", None
        # |det| of the 2x2 part is scale^2: the face spans size / scale image pixels.
        face_side = size / np.sqrt(abs(np.linalg.det(matrix[:, :2])))
        ratio = face_side / max(w, h)
        if not FACE_TO_BOX[0] <= ratio <= FACE_TO_BOX[1]:
            return "scale_mismatch", None
    return None, matrix


def align_face(image_bgr: np.ndarray, landmarks5: np.ndarray | None, size: int = 112,
               center_crop: float = 1.0, box=None) -> tuple[np.ndarray, bool]:
    """Warp one face onto the ArcFace template: `(aligned_bgr size x size, used_landmarks)`.

    `landmarks5` is (5,2) in image pixels (or the 10 values of a detector row), or None for the
    center-crop fallback. Landmarks that fail `landmark_problem` (non-finite, not arranged like a
    face, outside the detector's `box` when one is given) also fall back: this is the only
    alignment in facepipe (pack, gallery, evaluation, recognize, serve all come here).
    """
    if image_bgr is None or image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
        raise ValueError(f"expected an (H,W,3) BGR image, got shape {getattr(image_bgr, 'shape', None)}")
    if landmarks5 is not None:
        points = np.asarray(landmarks5, dtype=np.float64).reshape(-1, 2)
        problem, matrix = landmark_problem(points, box, size)
        if problem is None:
            aligned = cv2.warpAffine(image_bgr, matrix, (size, size), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            return aligned, True
    return center_crop_resize(image_bgr, size, center_crop), False


def read_image(path: str | Path) -> np.ndarray:
    """A BGR uint8 image, or a DataError naming the file (OpenCV returns None silently)."""
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise DataError("not a readable image (empty, truncated or not JPEG/PNG/BMP)", path=path)
    return image


@dataclass
class FaceInfo:
    """What the aligner found in one image; `status` is ok | no_face | several_faces | no_detector.

    `fallback` says why a face was center-cropped instead of aligned (None when it was aligned):
    no_detector, no_face, or implausible_landmarks (a face was found but its landmarks failed
    `landmark_problem`).
    """

    status: str
    faces: int
    used_landmarks: bool
    box: list[float] | None = None
    score: float | None = None
    landmarks: list[list[float]] | None = None
    others: list[list[float]] = field(default_factory=list)

    @property
    def fallback(self) -> str | None:
        if self.used_landmarks:
            return None
        return self.status if self.status in ("no_detector", "no_face") else "implausible_landmarks"

    def to_dict(self) -> dict:
        return {"status": self.status, "faces": self.faces, "used_landmarks": self.used_landmarks,
                "fallback": self.fallback, "box": self.box, "score": self.score, "landmarks": self.landmarks}


def alignment_summary(fallbacks, prefix: str = "") -> dict:
    """Counts of aligned faces and of center-crop fallbacks by reason, as step metrics.

    `fallbacks`: one entry per face, None when it was aligned on landmarks, else the reason.
    Keys: `<prefix>alignment.aligned`, `.fallback`, `.fallback_rate`, `.fallback_<reason>`.
    """
    counts: dict[str, int] = {}
    for reason in fallbacks:
        counts[reason or ""] = counts.get(reason or "", 0) + 1
    return _summary(counts, prefix)


def _summary(counts: dict[str, int], prefix: str) -> dict:
    """`counts`: faces by fallback reason, "" for aligned ones."""
    total = sum(counts.values())
    fallback = total - counts.get("", 0)
    out = {f"{prefix}alignment.aligned": counts.get("", 0), f"{prefix}alignment.fallback": fallback,
           f"{prefix}alignment.fallback_rate": round(fallback / total, 4) if total else None}
    out.update({f"{prefix}alignment.fallback_{reason}": n for reason, n in sorted(counts.items()) if reason})
    return out


def main_face_index(detections: np.ndarray) -> int:
    """The subject of a photo: the largest face, weighted by detector confidence."""
    boxes = detections[:, :4]
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    return int(np.argmax(area * detections[:, 4]))


def _rounded(values) -> list:
    return [round(float(v), 2) for v in values]


class FaceAligner:
    """Detect, pick the main face, align it; without a detector every image is center-cropped.

    `FaceAligner(detector)` takes a detector model path, a loaded `Detector`, or None.
    `.align(image_bgr, size)` returns `(aligned_bgr, info)` for the main face, with `info` a dict
    (`status`, `faces`, `used_landmarks`, `fallback`, `box`, `score`, `landmarks`);
    `.align_all_batch` returns every face of each image. `no_face` images are center-cropped too;
    callers decide whether to keep them. `.counts` holds the faces by fallback reason ("":
    aligned) since `reset()`; `.summary(prefix)` gives them as `alignment_summary` metrics (a
    count, not a list: a long-running service aligns without growing).
    """

    def __init__(self, detector=None, score_threshold: float = 0.5, nms_threshold: float = 0.4,
                 center_crop: float = 1.0, device: str = "cpu"):
        if isinstance(detector, (str, Path)):
            from facepipe.detection.infer import load_detector

            detector = load_detector(detector, device=device)
        self.detector = detector
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.center_crop = center_crop
        self.counts: dict[str, int] = {}

    @property
    def digest(self) -> str | None:
        return getattr(self.detector, "digest", None)

    def reset(self) -> None:
        self.counts = {}

    def summary(self, prefix: str = "") -> dict:
        return _summary(self.counts, prefix)

    def _count(self, fallback: str | None) -> None:
        self.counts[fallback or ""] = self.counts.get(fallback or "", 0) + 1

    def detect(self, image_bgr: np.ndarray) -> np.ndarray:
        if self.detector is None:
            return np.zeros((0, 15), np.float32)
        dets = np.asarray(self.detector.detect(image_bgr, score_threshold=self.score_threshold,
                                               nms_threshold=self.nms_threshold), dtype=np.float32)
        return dets.reshape(-1, 15)

    def _face(self, image: np.ndarray, row: np.ndarray, faces: int, status: str, size: int):
        aligned, used = align_face(image, row[5:15], size, self.center_crop, box=row[:4])
        info = FaceInfo(status, faces, used, _rounded(row[:4]), round(float(row[4]), 4),
                        [_rounded(p) for p in row[5:15].reshape(5, 2)])
        self._count(info.fallback)
        return aligned, info.to_dict()

    def _crop(self, image: np.ndarray, status: str, size: int):
        aligned, _ = align_face(image, None, size, self.center_crop)
        self._count(status)
        return aligned, FaceInfo(status, 0, False).to_dict()

    def align(self, image_bgr: np.ndarray, size: int = 112) -> tuple[np.ndarray, dict]:
        if self.detector is None:
            return self._crop(image_bgr, "no_detector", size)
        dets = self.detect(image_bgr)
        if len(dets) == 0:
            return self._crop(image_bgr, "no_face", size)
        status = "several_faces" if len(dets) > 1 else "ok"
        return self._face(image_bgr, dets[main_face_index(dets)], len(dets), status, size)

    def align_all_batch(self, images: list[np.ndarray], size: int = 112) -> list[list[tuple[np.ndarray, dict]]]:
        """Every detected face of each image (main face first), detected in one batch; one
        center crop per image when there is no detector."""
        if self.detector is None:
            return [[self.align(image, size)] for image in images]
        batch = self.detector.detect_batch(images, score_threshold=self.score_threshold,
                                           nms_threshold=self.nms_threshold)
        found = []
        for image, dets in zip(images, batch):
            dets = np.asarray(dets, np.float32).reshape(-1, 15)
            order = [main_face_index(dets)] if len(dets) else []
            order += [j for j in range(len(dets)) if j not in order]
            found.append([self._face(image, dets[j], len(dets), "ok", size) for j in order])
        return found
