"""Teacher labels: face boxes found by OpenCV's Haar cascade (shipped in opencv-python) for unlabelled photos.

The detector's real-photo training data has no hand-made boxes: a classical detector labels it.
`HaarTeacher.faces` gives the boxes it is confident of (at least `min_neighbors` merged hits);
`lfw_faces` adds what is known of an LFW photo (250x250, cut around a Viola-Jones detection, so its
main face sits at `LFW_FACE_BOX`): the main face is the cascade's box when one agrees with that
geometry, else the geometry box; the cascade's other confident boxes are the background people.
Landmarks are not labelled (written as -1, so the landmark loss skips these faces).
`label_photos` is the user's way to the same labels: a folder of photos -> `OUT/images/` +
`OUT/label.txt` (the RetinaFace layout) + manifest.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from facepipe.config import bounded

HAAR_MODEL = "haarcascade_frontalface_default.xml"
LFW_SIZE = 250
# The main face square in an LFW photo (x1, y1, x2, y2), from the median Haar box over lfw-dev photos.
LFW_FACE_BOX = (70.0, 70.0, 180.0, 180.0)
# A cascade box at least this close (IoU) to the geometry box is taken as the main face.
MAIN_FACE_IOU = 0.5
# Hits a cascade box needs to be found at all; `min_neighbors` (higher) decides which become labels.
FIND_NEIGHBORS = 3
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass
class TeacherConfig:
    min_neighbors: int = bounded(5, low=1, help="merged cascade hits a box needs to become a label")
    scale_factor: float = bounded(1.1, low=1.01, high=2.0, help="cascade pyramid step")
    min_size: int = bounded(20, low=8, help="smallest face side searched (px)")
    lfw_geometry: bool = False


def box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
    return ix * iy / union if union > 0 else 0.0


class HaarTeacher:
    def __init__(self, cfg: TeacherConfig | None = None):
        self.cfg = cfg or TeacherConfig()
        self.cascade = cv2.CascadeClassifier(cv2.data.haarcascades + HAAR_MODEL)
        if self.cascade.empty():
            from facepipe.errors import DataError

            raise DataError("OpenCV's Haar cascade did not load", path=cv2.data.haarcascades + HAAR_MODEL)

    def detections(self, image: np.ndarray) -> np.ndarray:
        """(K, 5) x1 y1 x2 y2 hits: every box with at least FIND_NEIGHBORS merged hits."""
        gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        rects, hits = self.cascade.detectMultiScale2(gray, scaleFactor=self.cfg.scale_factor,
                                                     minNeighbors=min(FIND_NEIGHBORS, self.cfg.min_neighbors),
                                                     minSize=(self.cfg.min_size, self.cfg.min_size))
        if len(rects) == 0:
            return np.zeros((0, 5), np.float32)
        rects = np.asarray(rects, np.float32).reshape(-1, 4)
        return np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:],
                               np.asarray(hits, np.float32).reshape(-1, 1)], 1)

    def faces(self, image: np.ndarray) -> np.ndarray:
        """(K, 4) xyxy boxes the cascade is confident of."""
        found = self.detections(image)
        return found[found[:, 4] >= self.cfg.min_neighbors, :4]

    def lfw_faces(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """An LFW photo's (main box from the cascade or geometry (4,), main box from geometry alone (4,),
        other confident boxes (K, 4)) in the photo's pixels, scaled if it is not 250x250."""
        h, w = image.shape[:2]
        s = np.array([w, h, w, h], np.float32) / LFW_SIZE
        geometry = np.asarray(LFW_FACE_BOX, np.float32) * s
        found = self.detections(image)
        ious = np.array([box_iou(geometry, d) for d in found])
        main = geometry
        if len(found) and ious.max() >= MAIN_FACE_IOU:
            main = found[int(ious.argmax()), :4]
        others = [d[:4] for d, iou in zip(found, ious)
                  if iou < 0.2 and box_iou(main, d) < 0.2 and d[4] >= self.cfg.min_neighbors]
        return main, geometry, np.asarray(others, np.float32).reshape(-1, 4)

    def label(self, image: np.ndarray) -> np.ndarray:
        """(K, 4) xyxy labels for one photo, with the LFW geometry when `lfw_geometry` is set."""
        if not self.cfg.lfw_geometry:
            return self.faces(image)
        main, _geometry, others = self.lfw_faces(image)
        return np.concatenate([main[None], others], 0)


def label_photos(src: str | Path, out_dir: str | Path, cfg: TeacherConfig | None = None) -> dict:
    """Label every photo under SRC with the teacher: OUT/images/<relative path> (copies), OUT/label.txt,
    OUT/manifest.json (written into OUT.partial, swapped in when complete); returns counts."""
    from facepipe.data.labels import FaceLabel, LabelledImage, write_labels
    from facepipe.errors import DataError
    from facepipe.manifest import replacing, write_manifest
    from facepipe.progress import Progress

    src = Path(src)
    if not src.is_dir():
        raise DataError("not a folder of photos", path=src)
    files = sorted(f for f in src.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"no photos ({', '.join(IMAGE_SUFFIXES)}) in this folder", path=src)
    teacher = HaarTeacher(cfg)
    labelled, unreadable, faces = [], [], 0
    with replacing(out_dir, kind="teacher_labels") as tmp, Progress(len(files), "labelling", unit="img") as progress:
        for f in files:
            rel = f.relative_to(src).as_posix()
            image = cv2.imread(str(f), cv2.IMREAD_COLOR)
            progress.update()
            if image is None:
                unreadable.append(rel)
                continue
            boxes = teacher.label(image)
            (tmp / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, tmp / "images" / rel)
            labelled.append(LabelledImage(rel, [FaceLabel(box=[x1, y1, x2 - x1, y2 - y1])
                                                for x1, y1, x2, y2 in boxes.tolist()]))
            faces += len(boxes)
        if not labelled:
            raise DataError(f"none of the {len(files)} photos could be read", path=src)
        write_labels(tmp / "label.txt", labelled)
        report = {"images": len(labelled), "faces": faces, "unreadable": unreadable,
                  "negative_images": sum(not x.faces for x in labelled),
                  "teacher": f"opencv {cv2.__version__} {HAAR_MODEL}", "teacher_config": vars(teacher.cfg)}
        write_manifest(tmp, kind="teacher_labels", extra=report)
    return report
