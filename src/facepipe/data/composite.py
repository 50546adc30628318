"""Real-photo detection scenes from LFW: whole photos, mosaics of several whole photos, face-free mosaics.

A whole LFW photo (250x250) shows the person's head, shoulders, clothing, sometimes hands and other
people: the context a detector meets in real photos. Its faces are labelled by a teacher
(`facepipe.data.teacher`, `teacher`): `haar`, OpenCV's Haar cascade plus the LFW crop geometry,
boxes only (landmarks -1); or `mtcnn`, MTCNN's boxes and 5 landmarks (the geometry box, without
landmarks, where MTCNN finds no main face). Landmarks follow their face through the mosaic's cut,
mirror and scale, and are dropped (-1) where one falls outside the visible photo. A mosaic places 1..N whole photos (each cut to a random frame around its main face) at
varied scales, side by side without overlap, on a background of real photo texture or a procedural
one: many faces per image, 16 px to half the image. Negative mosaics are tiled from photo regions
the teacher finds no face in (below the chin: clothing, hands; the top corners: scenery). With
`evaluation` the main faces are labelled from the geometry alone (not from the cascade that is
benchmarked beside the detector) and the cascade's other faces go to `ignore.json`: a detection
there counts neither way. Identities are chosen by the first letter of their folder name so
training (A..H) and evaluation (I..K) never share a person. Output: `OUT/images/` (whole photos
through the link `images/photos` to the LFW folder, never copied), `OUT/label.txt`, then
`OUT/manifest.json`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from facepipe.config import bounded, choice
from facepipe.data.synth_nuisance import background, degrade, light
from facepipe.data.teacher import (LFW_FACE_BOX, LFW_SIZE, TeacherConfig, make_teacher, teacher_face,
                                   unknown_landmarks)
from facepipe.errors import ConfigError, DataError

CORNER = 50
# The frame a mosaic cuts from a photo: its edges are drawn in these ranges (they always hold the main face).
FRAME_LOW, FRAME_HIGH = (0, 45), (205, 250)
# A face cut by its frame or the image edge stays labelled when this share of its box is visible.
MIN_VISIBLE = 0.6
# BGR gains that tint a grey photo towards a range of skin tones (lfw-dev photos are grey).
SKIN_TINTS = np.array([[0.78, 0.88, 1.10], [0.70, 0.82, 1.05], [0.85, 0.92, 1.08], [0.62, 0.74, 0.95]],
                      np.float32)


@dataclass
class CompositeConfig:
    scenes: int = bounded(100, low=0, help="mosaics")
    photos: int = bounded(0, low=0, help="photos drawn from (a seeded choice; 0 = all): bounds the teacher's work")
    whole_photos: bool = False  # also list each of those photos as it is (250x250)
    width: int = bounded(640, low=64, high=4096)
    height: int = bounded(480, low=64, high=4096)
    photos_min: int = bounded(1, low=1, high=64)
    photos_max: int = bounded(9, low=1, high=64)
    min_face: int = bounded(16, low=4, help="smallest main face side in a mosaic (px)")
    max_face_fraction: float = bounded(0.45, low=0.05, high=1.0, help="largest face side / mosaic short side")
    negative_fraction: float = bounded(0.1, low=0.0, high=1.0, help="mosaics of face-free photo regions")
    photo_background_fraction: float = bounded(0.5, low=0.0, high=1.0,
                                               help="mosaics on a collage of photo corners instead of procedural")
    tint_fraction: float = bounded(0.5, low=0.0, high=1.0, help="mosaics whose grey photos get skin tints")
    teacher: str = choice("haar", ["haar", "mtcnn"], help="labels: haar boxes, or mtcnn boxes and landmarks")
    min_neighbors: int = bounded(5, low=1, help="teacher: cascade hits a background face needs")
    evaluation: bool = False
    first_letters: str = "ABCDEFGH"
    seed: int = 0
    jpeg_quality: int = bounded(92, low=30, high=100)

    def validate(self) -> None:
        if self.photos_min > self.photos_max:
            raise ConfigError(f"CompositeConfig.photos_min {self.photos_min} > photos_max {self.photos_max}")
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


@dataclass
class PhotoFaces:
    """One photo's teacher labels in its pixels: faces to label (K,14: xyxy + 5 landmarks, -1 where
    unknown), faces to ignore (J,4 xyxy) and the main face's box."""

    labels: np.ndarray
    ignore: np.ndarray
    main: np.ndarray


class PhotoLabels:
    """Teacher labels of LFW photos, computed once per photo."""

    def __init__(self, cfg: CompositeConfig):
        self.evaluation = cfg.evaluation
        teacher_cfg = TeacherConfig(teacher=cfg.teacher, min_neighbors=cfg.min_neighbors, lfw_geometry=True)
        self.teacher = make_teacher(teacher_cfg)
        self.cache: dict[Path, PhotoFaces] = {}

    def __call__(self, path: Path, image: np.ndarray) -> PhotoFaces:
        if path not in self.cache:
            main, geometry, others = self.teacher.lfw_rows(image)
            if self.evaluation:  # the benchmarked teacher must not draw the boxes it is scored on
                self.cache[path] = PhotoFaces(unknown_landmarks(geometry[None]), others[:, :4], geometry)
            else:
                self.cache[path] = PhotoFaces(np.concatenate([main[None], others]), np.zeros((0, 4), np.float32),
                                              main[:4])
        return self.cache[path]


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


def _intersection(a, b) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


# A mirrored face's landmarks: the left eye becomes the right one, the mouth corners swap.
MIRRORED_LANDMARKS = [1, 0, 2, 4, 3]


def _place(rows: np.ndarray, scale: float, frame, offset, flip: bool, visible) -> tuple[np.ndarray, np.ndarray]:
    """Photo faces -> mosaic faces (frame cut, optional mirror, scale, offset), clipped to `visible`;
    returns (kept faces, boxes too cut to label (J,4)). `rows` are (K,4) boxes or (K,14) boxes +
    landmarks (-1: unknown); a landmark outside `visible` makes its face's landmarks unknown."""
    fx0, fy0, fx1, _fy1 = frame
    boxes = rows[:, :4].astype(np.float64)
    out = boxes.copy()
    if flip:
        out[:, [0, 2]] = fx0 + fx1 - boxes[:, [2, 0]]  # mirrored inside the frame
    out = (out - [fx0, fy0, fx0, fy0]) * scale + [offset[0], offset[1], offset[0], offset[1]]
    clipped = np.concatenate([np.maximum(out[:, :2], visible[:2]), np.minimum(out[:, 2:], visible[2:])], 1)
    area = np.prod(np.clip(out[:, 2:] - out[:, :2], 0, None), 1)
    shown = np.prod(np.clip(clipped[:, 2:] - clipped[:, :2], 0, None), 1)
    ok = shown >= MIN_VISIBLE * np.maximum(area, 1e-9)
    cut = out[~ok & (shown > 0)].astype(np.float32)
    if rows.shape[1] == 4:
        return clipped[ok].astype(np.float32), cut
    points = rows[:, 4:14].astype(np.float64).reshape(-1, 5, 2)
    known = (points >= 0).all((1, 2))
    if flip:
        points[..., 0] = fx0 + fx1 - points[..., 0]
        points = points[:, MIRRORED_LANDMARKS]
    points = (points - [fx0, fy0]) * scale + offset
    inside = (points >= visible[:2]).all((1, 2)) & (points <= visible[2:]).all((1, 2))
    points[~(known & inside)] = -1.0
    return np.concatenate([clipped, points.reshape(-1, 10)], 1)[ok].astype(np.float32), cut


def face_free_regions(photo: np.ndarray, faces: PhotoFaces) -> list[np.ndarray]:
    """Parts of a photo without faces: below the main face's chin (clothing, hands) and the top corners.
    None when the teacher found other people in it (they could sit in those parts)."""
    if len(faces.ignore) or len(faces.labels) > 1:
        return []
    below = int(min(faces.main[3] + 0.2 * (faces.main[3] - faces.main[1]), LFW_SIZE - 20))
    return [photo[below:], photo[:CORNER, :CORNER], photo[:CORNER, -CORNER:]]


def render_composite(cfg: CompositeConfig, photos: list[Path], index: int, labels: PhotoLabels):
    """One mosaic: (BGR image, (K,14) faces: xyxy + landmarks, (J,4) ignored boxes). Deterministic in (seed, index)."""
    rng = np.random.default_rng([cfg.seed, 41, index])
    h, w = cfg.height, cfg.width
    if rng.random() < cfg.photo_background_fraction:
        img = photo_background(rng, photos, h, w)
    else:
        img = background(rng, h, w, shapes=int(rng.integers(3, 16)))
    # Grey photos on colour backgrounds would teach "grey blob = face": a tinted mosaic tints each
    # photo, an untinted one is made grey throughout.
    tint = rng.random() < cfg.tint_fraction
    boxes, ignored = [np.zeros((0, 14), np.float32)], [np.zeros((0, 4), np.float32)]
    if rng.random() < cfg.negative_fraction:
        _paste_regions(img, rng, photos, labels, tint)
    else:
        placed: list[tuple[float, float, float, float]] = []
        largest = cfg.max_face_fraction * min(w, h)
        main_side = LFW_FACE_BOX[2] - LFW_FACE_BOX[0]
        for _ in range(int(rng.integers(cfg.photos_min, cfg.photos_max + 1))):
            path = photos[int(rng.integers(len(photos)))]
            photo = cv2.imread(str(path))
            if photo is None or photo.shape[:2] != (LFW_SIZE, LFW_SIZE):
                continue
            faces = labels(path, photo)
            frame = tuple(int(rng.integers(lo, hi + 1)) for lo, hi in (FRAME_LOW, FRAME_LOW, FRAME_HIGH, FRAME_HIGH))
            flip = rng.random() < 0.5
            # Frame pixels left of / above the main face (mirrored: the frame's right margin).
            lead = (frame[2] - LFW_FACE_BOX[2] if flip else LFW_FACE_BOX[0] - frame[0], LFW_FACE_BOX[1] - frame[1])
            for _try in range(30):
                scale = math.exp(rng.uniform(math.log(cfg.min_face), math.log(largest))) / main_side
                pw, ph = round((frame[2] - frame[0]) * scale), round((frame[3] - frame[1]) * scale)
                # The main face must be inside the mosaic; the rest of the frame may be cut by its edge.
                lead_x, lead_y = lead[0] * scale, lead[1] * scale
                ox = round(rng.uniform(-lead_x, w - main_side * scale - lead_x))
                oy = round(rng.uniform(-lead_y, h - main_side * scale - lead_y))
                rect = (max(ox, 0), max(oy, 0), min(ox + pw, w), min(oy + ph, h))
                if rect[2] > rect[0] and rect[3] > rect[1] and all(_intersection(rect, p) == 0 for p in placed):
                    break
            else:
                continue
            patch = photo[frame[1]:frame[3], frame[0]:frame[2]]
            patch = np.ascontiguousarray(patch[:, ::-1] if flip else patch)
            patch = cv2.resize(patch, (pw, ph), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
            piece = light(patch[rect[1] - oy:rect[3] - oy, rect[0] - ox:rect[2] - ox], rng, 0.6).astype(np.float32)
            if tint:
                piece = piece * SKIN_TINTS[int(rng.integers(len(SKIN_TINTS)))]
            img[rect[1]:rect[3], rect[0]:rect[2]] = np.clip(piece, 0, 255).astype(np.uint8)
            placed.append(rect)
            kept, cut = _place(faces.labels, scale, frame, (ox, oy), flip, np.asarray(rect, np.float64))
            kept_ignored, cut_ignored = _place(faces.ignore, scale, frame, (ox, oy), flip, np.asarray(rect, np.float64))
            boxes.append(kept)
            ignored += [cut, kept_ignored, cut_ignored]
    if not tint:
        img[:] = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    degrade(img, rng, 0.5)
    boxes = np.concatenate(boxes)
    # Faces too small for any anchor are left unlabelled but not counted against a detector.
    small = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) < 4
    return img, boxes[~small], np.concatenate(ignored + [boxes[small, :4]])


def _paste_regions(img: np.ndarray, rng: np.random.Generator, photos: list[Path], labels: PhotoLabels,
                   tint: bool) -> None:
    """Tile face-free photo regions over the image at random scales, in place."""
    h, w = img.shape[:2]
    pasted = 0
    for _try in range(40):
        if pasted >= int(rng.integers(3, 9)):
            break
        path = photos[int(rng.integers(len(photos)))]
        photo = cv2.imread(str(path))
        if photo is None or photo.shape[:2] != (LFW_SIZE, LFW_SIZE):
            continue
        regions = face_free_regions(photo, labels(path, photo))
        if not regions:
            continue
        region = regions[int(rng.integers(len(regions)))]
        factor = rng.uniform(0.5, 3.0)
        rw, rh = max(8, min(w, round(region.shape[1] * factor))), max(8, min(h, round(region.shape[0] * factor)))
        piece = light(cv2.resize(region, (rw, rh), interpolation=cv2.INTER_LINEAR), rng, 0.6).astype(np.float32)
        if tint:
            piece = piece * SKIN_TINTS[int(rng.integers(len(SKIN_TINTS)))]
        x, y = int(rng.integers(0, w - rw + 1)), int(rng.integers(0, h - rh + 1))
        img[y:y + rh, x:x + rw] = np.clip(piece, 0, 255).astype(np.uint8)
        pasted += 1


def build_composites(cfg: CompositeConfig, lfw_dir: str | Path, out_dir: str | Path) -> dict:
    """Write `OUT/images/composite_NNNNNN.jpg` (+ the `images/photos` link for whole photos),
    `OUT/label.txt`, `OUT/ignore.json` and the manifest; returns counts."""
    from facepipe.data.labels import LabelledImage, write_labels
    from facepipe.manifest import write_manifest
    from facepipe.progress import Progress

    cfg.validate()
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    photos = face_photos(lfw_dir, cfg.first_letters)
    if cfg.photos:
        chosen = np.random.default_rng([cfg.seed, 43]).permutation(len(photos))[:cfg.photos]
        photos = [photos[i] for i in sorted(chosen.tolist())]
    labels = PhotoLabels(cfg)
    labelled, ignore, faces, landmarked = [], {}, 0, 0

    def add(name: str, rows: np.ndarray, ignored: np.ndarray) -> None:
        nonlocal faces, landmarked
        labelled.append(LabelledImage(name, [teacher_face(row) for row in rows]))
        landmarked += int((rows[:, 4:] >= 0).all(1).sum())
        if len(ignored):
            ignore[name] = np.round(ignored, 2).tolist()
        faces += len(rows)

    if cfg.whole_photos:
        link = out_dir / "images" / "photos"
        root = photos[0].parents[1]
        if not link.is_symlink():
            link.symlink_to(root.resolve(), target_is_directory=True)
        with Progress(len(photos), "whole photos (teacher)", unit="photo") as progress:
            for path in photos:
                photo = cv2.imread(str(path))
                if photo is None:
                    raise DataError("cannot read LFW photo", path=path)
                pf = labels(path, photo)
                add(f"photos/{path.relative_to(root).as_posix()}", pf.labels, pf.ignore)
                progress.update()
    with Progress(cfg.scenes, "mosaics", unit="scene") as progress:
        for index in range(cfg.scenes):
            img, boxes, ignored = render_composite(cfg, photos, index, labels)
            name = f"composite_{index:06d}.jpg"
            cv2.imwrite(str(out_dir / "images" / name), img, [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])
            add(name, boxes, ignored)
            progress.update()
    write_labels(out_dir / "label.txt", labelled)
    (out_dir / "ignore.json").write_text(json.dumps(ignore))
    report = {"scenes": cfg.scenes, "whole_photos": len(photos) if cfg.whole_photos else 0, "faces": faces,
              "ignored_faces": sum(len(v) for v in ignore.values()), "photos_available": len(photos),
              "landmarked_faces": landmarked, "identities": cfg.first_letters,
              "labels": f"teacher: {labels.teacher.description} + LFW geometry"
              + (" (main faces: geometry only)" if cfg.evaluation else "")}
    write_manifest(out_dir, kind="detection_composites", extra=report)
    return report


def read_ignored(split_dir: str | Path) -> dict[str, np.ndarray]:
    """`SPLIT/ignore.json` as {image path: (J, 4) xyxy}; empty when the set has none."""
    path = Path(split_dir) / "ignore.json"
    if not path.is_file():
        return {}
    return {k: np.asarray(v, np.float64).reshape(-1, 4) for k, v in json.loads(path.read_text()).items()}
