"""Training augmentation of an image with its face boxes and landmarks, kept consistent.

Random square crop that keeps whole-face centres (reference RetinaFace `_crop`), photometric
distortion, horizontal flip with the left/right landmark swap, resize to the training size, and
dropping faces too small to learn from. All randomness comes from the `rng` passed in, so a sample's
augmentation depends only on (seed, epoch, index): that is what makes resume exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# Mean BGR pixel subtracted before the network (the reference's (104, 117, 123)).
MEAN_BGR = np.array([104.0, 117.0, 123.0], dtype=np.float32)

# After a horizontal flip the image-left eye becomes the image-right eye: new order of the 5 points
# (left eye, right eye, nose, left mouth, right mouth).
FLIP_ORDER = [1, 0, 2, 4, 3]

_INTERPOLATIONS = [cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA, cv2.INTER_NEAREST, cv2.INTER_LANCZOS4]


@dataclass
class Faces:
    """Faces of one image in pixels: boxes (K,4) xyxy, landmarks (K,5,2), has_landmarks (K,) bool."""

    boxes: np.ndarray
    landmarks: np.ndarray
    has_landmarks: np.ndarray

    def select(self, keep: np.ndarray) -> "Faces":
        return Faces(self.boxes[keep], self.landmarks[keep], self.has_landmarks[keep])

    @staticmethod
    def empty() -> "Faces":
        return Faces(np.zeros((0, 4), np.float32), np.zeros((0, 5, 2), np.float32), np.zeros(0, bool))


def random_square_crop(image: np.ndarray, faces: Faces, scales, rng: np.random.Generator,
                       tries: int = 250, min_visible: float = 0.0) -> tuple[np.ndarray, Faces]:
    """A square crop (side = scale x short side) that contains at least one face centre.

    Faces whose centre falls outside are removed; the rest are clipped to the crop. With
    `min_visible` > 0 a crop that would keep a face with less than that share of its box is
    redrawn: where faces fill much of the photo (whole LFW photos) small crops would otherwise
    label a cheek or an eye as a whole face, and the detector learns to box face parts. An image
    without faces gets any crop (it stays a negative). After `tries` failures the image is returned
    whole.
    """
    h, w = image.shape[:2]
    short = min(h, w)
    for _ in range(tries):
        side = max(int(rng.choice(scales) * short), 1)
        x0 = int(rng.integers(0, w - side + 1))
        y0 = int(rng.integers(0, h - side + 1))
        if len(faces.boxes) == 0:
            return image[y0:y0 + side, x0:x0 + side], faces
        centres = (faces.boxes[:, :2] + faces.boxes[:, 2:]) / 2
        inside = ((centres[:, 0] > x0) & (centres[:, 0] < x0 + side)
                  & (centres[:, 1] > y0) & (centres[:, 1] < y0 + side))
        if not inside.any():
            continue
        kept = faces.select(inside)
        boxes = kept.boxes - np.array([x0, y0, x0, y0], np.float32)
        clipped = np.clip(boxes, 0, side)
        if min_visible > 0:
            area = np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 1e-6, None), 1)
            if (np.prod(clipped[:, 2:] - clipped[:, :2], 1) < min_visible * area).any():
                continue
        boxes = clipped
        landmarks = kept.landmarks - np.array([x0, y0], np.float32)
        return image[y0:y0 + side, x0:x0 + side], Faces(boxes, landmarks, kept.has_landmarks)
    return image, faces


def pad_to_square(image: np.ndarray) -> np.ndarray:
    """Pad right/bottom with the mean colour so that the resize keeps the aspect ratio."""
    h, w = image.shape[:2]
    if h == w:
        return image
    side = max(h, w)
    out = np.empty((side, side, 3), image.dtype)
    out[:] = MEAN_BGR.astype(image.dtype)
    out[:h, :w] = image
    return out


def photometric_distort(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random brightness, contrast, saturation and hue (each applied with probability 1/2)."""
    img = image.astype(np.float32)
    if rng.random() < 0.5:
        img += rng.uniform(-32, 32)
    contrast_first = rng.random() < 0.5
    if contrast_first and rng.random() < 0.5:
        img *= rng.uniform(0.5, 1.5)
    img = np.clip(img, 0, 255)
    hsv = cv2.cvtColor(img.astype(np.uint8), cv2.COLOR_BGR2HSV).astype(np.float32)
    if rng.random() < 0.5:
        hsv[:, :, 1] *= rng.uniform(0.5, 1.5)
    if rng.random() < 0.5:
        hsv[:, :, 0] = (hsv[:, :, 0] + rng.integers(-18, 19)) % 180
    img = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2BGR).astype(np.float32)
    if not contrast_first and rng.random() < 0.5:
        img *= rng.uniform(0.5, 1.5)
    return np.clip(img, 0, 255).astype(np.uint8)


def hflip(image: np.ndarray, faces: Faces) -> tuple[np.ndarray, Faces]:
    """Mirror the image; boxes mirror, landmarks mirror and swap left/right so names stay true."""
    w = image.shape[1]
    boxes = faces.boxes.copy()
    boxes[:, [0, 2]] = w - faces.boxes[:, [2, 0]]
    landmarks = faces.landmarks.copy()
    landmarks[:, :, 0] = w - landmarks[:, :, 0]
    landmarks = landmarks[:, FLIP_ORDER]
    return image[:, ::-1], Faces(boxes, landmarks, faces.has_landmarks)


def to_input(image: np.ndarray) -> np.ndarray:
    """uint8 BGR HWC -> float32 CHW minus the mean, the network's input."""
    return (image.astype(np.float32) - MEAN_BGR).transpose(2, 0, 1).copy()


def augment(image: np.ndarray, faces: Faces, size: int, rng: np.random.Generator, scales,
            min_face_size: float = 2.0, photometric: bool = True, flip: bool = True,
            min_visible: float = 0.0) -> tuple[np.ndarray, Faces]:
    """The full training transform; returns a `size`x`size` uint8 image and faces in its pixels."""
    image, faces = random_square_crop(image, faces, scales, rng, min_visible=min_visible)
    if photometric:
        image = photometric_distort(image, rng)
    if flip and rng.random() < 0.5:
        image, faces = hflip(image, faces)
    image = pad_to_square(np.ascontiguousarray(image))
    factor = size / image.shape[0]
    interp = _INTERPOLATIONS[int(rng.integers(len(_INTERPOLATIONS)))]
    image = cv2.resize(image, (size, size), interpolation=interp)
    faces = Faces(faces.boxes * factor, faces.landmarks * factor, faces.has_landmarks)
    sides = np.minimum(faces.boxes[:, 2] - faces.boxes[:, 0], faces.boxes[:, 3] - faces.boxes[:, 1])
    return image, faces.select(sides >= max(min_face_size, 1e-6))


def resize_only(image: np.ndarray, faces: Faces, size: int) -> tuple[np.ndarray, Faces]:
    """The evaluation-time transform used for validation loss: pad to square and resize."""
    image = pad_to_square(image)
    factor = size / image.shape[0]
    image = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    return image, Faces(faces.boxes * factor, faces.landmarks * factor, faces.has_landmarks)
