"""Face alignment: 5-point similarity transform onto the ArcFace template, center-crop fallback.

The recognizer is trained on faces warped so that the eyes, nose and mouth corners land on fixed
points (InsightFace's 112x112 `arcface_dst`); every face it embeds must be warped the same way.
When a face has no landmarks (no detector, or the detector found nothing) the image is
center-cropped instead, and the caller is told (`used_landmarks=False`) so it can flag the result.
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


def align_face(image_bgr: np.ndarray, landmarks5: np.ndarray | None, size: int = 112,
               center_crop: float = 1.0) -> tuple[np.ndarray, bool]:
    """Warp one face onto the ArcFace template: `(aligned_bgr size x size, used_landmarks)`.

    `landmarks5` is (5,2) in image pixels (or the 10 values of a detector row), or None for the
    center-crop fallback; non-finite landmarks also fall back.
    """
    if image_bgr is None or image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
        raise ValueError(f"expected an (H,W,3) BGR image, got shape {getattr(image_bgr, 'shape', None)}")
    if landmarks5 is not None:
        points = np.asarray(landmarks5, dtype=np.float64).reshape(-1, 2)
        if points.shape == (5, 2) and np.isfinite(points).all() and (points >= 0).any():
            try:
                matrix = similarity_transform(points, template(size))
            except ValueError:
                matrix = None
            if matrix is not None:
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
    """What the aligner found in one image; `status` is ok | no_face | several_faces | no_detector."""

    status: str
    faces: int
    used_landmarks: bool
    box: list[float] | None = None
    score: float | None = None
    landmarks: list[list[float]] | None = None
    others: list[list[float]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"status": self.status, "faces": self.faces, "used_landmarks": self.used_landmarks,
                "box": self.box, "score": self.score, "landmarks": self.landmarks}


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
    (`status`, `faces`, `used_landmarks`, `box`, `score`, `landmarks`); `.align_all_batch` returns
    every face of each image. `no_face` images are center-cropped too; callers decide whether to keep them.
    """

    def __init__(self, detector=None, score_threshold: float = 0.5, nms_threshold: float = 0.4,
                 center_crop: float = 1.0, device: str = "cpu"):
        if isinstance(detector, (str, Path)):
            from facepipe.detection.infer import Detector

            detector = Detector.load(str(detector), device=device)
        self.detector = detector
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.center_crop = center_crop

    @property
    def digest(self) -> str | None:
        return getattr(self.detector, "digest", None)

    def detect(self, image_bgr: np.ndarray) -> np.ndarray:
        if self.detector is None:
            return np.zeros((0, 15), np.float32)
        dets = np.asarray(self.detector.detect(image_bgr, score_threshold=self.score_threshold,
                                               nms_threshold=self.nms_threshold), dtype=np.float32)
        return dets.reshape(-1, 15)

    def align(self, image_bgr: np.ndarray, size: int = 112) -> tuple[np.ndarray, dict]:
        if self.detector is None:
            aligned, _ = align_face(image_bgr, None, size, self.center_crop)
            return aligned, FaceInfo("no_detector", 0, False).to_dict()
        dets = self.detect(image_bgr)
        if len(dets) == 0:
            aligned, _ = align_face(image_bgr, None, size, self.center_crop)
            return aligned, FaceInfo("no_face", 0, False).to_dict()
        i = main_face_index(dets)
        row = dets[i]
        aligned, used = align_face(image_bgr, row[5:15], size, self.center_crop)
        status = "several_faces" if len(dets) > 1 else "ok"
        info = FaceInfo(status, len(dets), used, _rounded(row[:4]), round(float(row[4]), 4),
                        [_rounded(p) for p in row[5:15].reshape(5, 2)])
        return aligned, info.to_dict()

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
            faces = []
            for j in order:
                row = dets[j]
                aligned, used = align_face(image, row[5:15], size, self.center_crop)
                info = FaceInfo("ok", len(dets), used, _rounded(row[:4]), round(float(row[4]), 4),
                                [_rounded(p) for p in row[5:15].reshape(5, 2)])
                faces.append((aligned, info.to_dict()))
            found.append(faces)
        return found
