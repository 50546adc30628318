"""Composite detection scenes: real face photos (LFW) pasted onto backgrounds at known boxes.

LFW photos are 250x250 with one face roughly centred at a known place (the dataset was cut around
a Viola-Jones detection scaled by 2.2), so a pasted photo's face box is known from where it is
pasted: the central `FACE_BOX` square, which OpenCV's Haar cascade puts at IoU ~0.8 on these photos.
The head and shoulders are blended in with a feathered ellipse (no hard rectangle edge for a
detector to learn). Landmarks are unknown (-1). Identities are chosen by the first letter of their
folder name so training (A..H) and evaluation (I..K) never share a person. Output is the
RetinaFace layout `OUT/images/*.jpg` + `OUT/label.txt`, then `OUT/manifest.json`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from facepipe.config import bounded
from facepipe.data.synth_nuisance import background, degrade, light
from facepipe.errors import ConfigError, DataError

LFW_SIZE = 250
# The face square in an LFW photo (x1, y1, x2, y2), from the median Haar box over lfw-dev photos.
FACE_BOX = (70.0, 70.0, 180.0, 180.0)
# The part of the photo pasted around it: face plus hair, ears and chin.
PASTE_BOX = (35, 25, 215, 235)
CORNER = 50
# BGR gains that tint a grey photo towards a range of skin tones (lfw-dev photos are grey).
SKIN_TINTS = np.array([[0.78, 0.88, 1.10], [0.70, 0.82, 1.05], [0.85, 0.92, 1.08], [0.62, 0.74, 0.95]],
                      np.float32)


@dataclass
class CompositeConfig:
    scenes: int = bounded(100, low=1)
    width: int = bounded(640, low=64, high=4096)
    height: int = bounded(480, low=64, high=4096)
    faces_min: int = bounded(1, low=0, high=32)
    faces_max: int = bounded(5, low=1, high=32)
    min_face: int = bounded(16, low=4, help="smallest pasted face box side (px)")
    max_face_fraction: float = bounded(0.45, low=0.05, high=1.0, help="largest face side / scene short side")
    negative_fraction: float = bounded(0.05, low=0.0, high=1.0)
    photo_background_fraction: float = bounded(0.4, low=0.0, high=1.0,
                                               help="scenes on a collage of photo borders instead of procedural")
    first_letters: str = "ABCDEFGH"
    seed: int = 0
    jpeg_quality: int = bounded(92, low=30, high=100)

    def validate(self) -> None:
        if self.faces_min > self.faces_max:
            raise ConfigError(f"CompositeConfig.faces_min {self.faces_min} > faces_max {self.faces_max}")
        if self.min_face > self.max_face_fraction * min(self.width, self.height):
            raise ConfigError(f"CompositeConfig.min_face {self.min_face} does not fit a "
                              f"{self.width}x{self.height} scene with max_face_fraction {self.max_face_fraction}")


def face_photos(lfw_dir: str | Path, first_letters: str) -> list[Path]:
    """LFW photos (`DIR/images/<Name>/<Name>_NNNN.jpg` or `DIR/<Name>/...`) of people starting with these letters."""
    root = Path(lfw_dir)
    images = root / "images" if (root / "images").is_dir() else root
    letters = tuple(first_letters.upper())
    people = sorted(p for p in images.iterdir() if p.is_dir() and p.name[:1].upper() in letters) \
        if images.is_dir() else []
    files = [f for p in people for f in sorted(p.glob("*.jpg"))]
    if not files:
        raise DataError(f"no LFW photos of identities starting with {''.join(letters)} "
                        f"(expected images/<Name>/<Name>_NNNN.jpg)", path=images)
    return files


def _feather_mask(h: int, w: int) -> np.ndarray:
    """An ellipse filling the paste region, softened at its rim: alpha in [0, 1]."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.sqrt(((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2)
    return np.clip((1.0 - r) / 0.25, 0.0, 1.0)[..., None]


def photo_background(rng: np.random.Generator, photos: list[Path], height: int, width: int) -> np.ndarray:
    """A collage of LFW photo corners (scenery beside the person), enlarged: real photo texture."""
    img = np.zeros((height, width, 3), np.uint8)
    tiles = int(rng.integers(1, 4))
    tile_w, tile_h = math.ceil(width / tiles), math.ceil(height / tiles)
    for ty in range(tiles):
        for tx in range(tiles):
            photo = cv2.imread(str(photos[int(rng.integers(len(photos)))]))
            # A top corner: beside and above the centred person, so (almost) never a face.
            x = 0 if rng.random() < 0.5 else LFW_SIZE - CORNER
            corner = photo[0:CORNER, x:x + CORNER] if photo is not None else np.zeros((8, 8, 3), np.uint8)
            tile = cv2.resize(corner, (tile_w, tile_h), interpolation=cv2.INTER_LINEAR)
            img[ty * tile_h:(ty + 1) * tile_h, tx * tile_w:(tx + 1) * tile_w] = \
                tile[:min(tile_h, height - ty * tile_h), :min(tile_w, width - tx * tile_w)]
    return img


def render_composite(cfg: CompositeConfig, photos: list[Path], index: int):
    """One scene: (BGR image, list of (x1, y1, x2, y2) face boxes). Deterministic in (seed, index)."""
    rng = np.random.default_rng([cfg.seed, 41, index])
    h, w = cfg.height, cfg.width
    if rng.random() < cfg.photo_background_fraction:
        img = photo_background(rng, photos, h, w)
    else:
        img = background(rng, h, w, shapes=int(rng.integers(3, 16)))
    # Grey faces on colour backgrounds would teach "grey blob = face": half the scenes are grey
    # throughout, the other half get tinted faces.
    tint = rng.random() < 0.5
    count = 0 if rng.random() < cfg.negative_fraction else int(rng.integers(cfg.faces_min, cfg.faces_max + 1))
    largest = cfg.max_face_fraction * min(w, h)
    boxes: list[tuple[float, float, float, float]] = []
    px1, py1, px2, py2 = PASTE_BOX
    fx1, fy1, fx2, fy2 = FACE_BOX
    for _ in range(count):
        photo = cv2.imread(str(photos[int(rng.integers(len(photos)))]))
        if photo is None or photo.shape[:2] != (LFW_SIZE, LFW_SIZE):
            continue
        for _try in range(20):
            side = math.exp(rng.uniform(math.log(cfg.min_face), math.log(largest)))
            scale = side / (fx2 - fx1)
            pw, ph = round((px2 - px1) * scale), round((py2 - py1) * scale)
            # The face box must be fully inside the scene; the hair/shoulder margin may be cut.
            fx = rng.uniform(0, w - side)
            fy = rng.uniform(0, h - side)
            box = (fx, fy, fx + side, fy + side)
            if all(_overlap(box, b) < 0.1 for b in boxes):
                break
        else:
            continue
        patch = photo[py1:py2, px1:px2]
        if rng.random() < 0.5:
            patch = patch[:, ::-1]  # the face box is centred horizontally, so it stays put
        patch = cv2.resize(np.ascontiguousarray(patch), (pw, ph), interpolation=cv2.INTER_AREA)
        ox, oy = round(fx - (fx1 - px1) * scale), round(fy - (fy1 - py1) * scale)
        x0, y0, x1, y1 = max(ox, 0), max(oy, 0), min(ox + pw, w), min(oy + ph, h)
        if x1 <= x0 or y1 <= y0:
            continue
        alpha = _feather_mask(ph, pw)[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
        piece = light(patch[y0 - oy:y1 - oy, x0 - ox:x1 - ox], rng, 0.6).astype(np.float32)
        if tint:
            piece = np.clip(piece * SKIN_TINTS[int(rng.integers(len(SKIN_TINTS)))], 0, 255)
        region = img[y0:y1, x0:x1].astype(np.float32)
        img[y0:y1, x0:x1] = (alpha * piece + (1 - alpha) * region).astype(np.uint8)
        boxes.append(box)
    if not tint:
        img[:] = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    degrade(img, rng, 0.5)
    return img, boxes


def _overlap(a, b) -> float:
    """Intersection over the smaller box: pasted faces may touch but not hide each other."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return ix * iy / smaller if smaller > 0 else 0.0


def build_composites(cfg: CompositeConfig, lfw_dir: str | Path, out_dir: str | Path) -> dict:
    """Write `OUT/images/composite_NNNNNN.jpg`, `OUT/label.txt` and the manifest; returns counts."""
    from facepipe.data.labels import FaceLabel, LabelledImage, write_labels
    from facepipe.manifest import write_manifest
    from facepipe.progress import Progress

    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    photos = face_photos(lfw_dir, cfg.first_letters)
    labelled, faces = [], 0
    with Progress(cfg.scenes, "composites", unit="scene") as progress:
        for index in range(cfg.scenes):
            img, boxes = render_composite(cfg, photos, index)
            name = f"composite_{index:06d}.jpg"
            cv2.imwrite(str(out_dir / "images" / name), img, [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])
            labelled.append(LabelledImage(name, [FaceLabel(box=[x1, y1, x2 - x1, y2 - y1])
                                                 for x1, y1, x2, y2 in boxes]))
            faces += len(boxes)
            progress.update()
    write_labels(out_dir / "label.txt", labelled)
    report = {"scenes": cfg.scenes, "faces": faces, "photos_available": len(photos),
              "identities": cfg.first_letters}
    write_manifest(out_dir, kind="detection_composites", extra=report)
    return report
