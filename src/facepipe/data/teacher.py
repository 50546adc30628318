"""Teacher labels: faces found by a detector that needs no training, for unlabelled photos.

The detector's real-photo training data has no hand-made boxes: a teacher labels it. Two teachers:
- `haar` (`HaarTeacher`): OpenCV's Haar cascade (shipped in opencv-python). `faces` gives the boxes
  it is confident of (at least `min_neighbors` merged hits); `lfw_faces` adds what is known of an
  LFW photo (250x250, cut around a Viola-Jones detection, so its main face sits at `LFW_FACE_BOX`):
  the main face is the cascade's box when one agrees with that geometry, else the geometry box; the
  cascade's other confident boxes are the background people. No landmarks (written as -1, so the
  landmark loss skips these faces).
- `mtcnn` (`MtcnnTeacher`): the MTCNN cascade (`facepipe.detection.mtcnn`, weights from the
  facenet-pytorch wheel): boxes and 5 landmarks for the faces it scores at least `min_score`.
`label_photos` is the user's way to the same labels: a folder of photos -> `OUT/images/` +
`OUT/label.txt` (the RetinaFace layout) + manifest.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from facepipe.config import bounded, choice

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
    teacher: str = choice("haar", ["haar", "mtcnn"], help="haar: boxes only; mtcnn: boxes and 5 landmarks")
    min_score: float = bounded(0.9, low=0.0, high=1.0, help="mtcnn: O-Net score a face needs to become a label")
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
        geometry = lfw_geometry_box(image)
        found = self.detections(image)
        ious = np.array([box_iou(geometry, d) for d in found])
        main = geometry
        if len(found) and ious.max() >= MAIN_FACE_IOU:
            main = found[int(ious.argmax()), :4]
        others = [d[:4] for d, iou in zip(found, ious)
                  if iou < 0.2 and box_iou(main, d) < 0.2 and d[4] >= self.cfg.min_neighbors]
        return main, geometry, np.asarray(others, np.float32).reshape(-1, 4)

    def lfw_rows(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """An LFW photo's (main face row (14,), geometry box (4,), other faces' rows (K, 14))."""
        main, geometry, others = self.lfw_faces(image)
        rows = unknown_landmarks(np.concatenate([main[None], others]))
        return rows[0], geometry, rows[1:]

    def label(self, image: np.ndarray) -> np.ndarray:
        """(K, 14) labels for one photo: xyxy + 5 landmarks (-1: unknown), with the LFW geometry
        when `lfw_geometry` is set."""
        if not self.cfg.lfw_geometry:
            return unknown_landmarks(self.faces(image))
        return lfw_label(self, image)

    @property
    def description(self) -> str:
        return f"opencv {cv2.__version__} {HAAR_MODEL}"


class MtcnnTeacher:
    """MTCNN's faces scored at least `min_score`, with their landmarks; on an LFW photo
    (`lfw_geometry`) the main face is MTCNN's face nearest the geometry box, or that box without
    landmarks where MTCNN finds none there."""

    def __init__(self, cfg: TeacherConfig | None = None):
        from facepipe.detection.mtcnn import MtcnnDetector

        self.cfg = cfg or TeacherConfig(teacher="mtcnn")
        self.detector = MtcnnDetector(min_face=self.cfg.min_size)

    def faces(self, image: np.ndarray) -> np.ndarray:
        """(K, 14) rows: xyxy + 5 landmarks of the faces MTCNN scores at least `min_score`."""
        rows = self.detector.detect(image)
        return np.concatenate([rows[:, :4], rows[:, 5:]], 1)[rows[:, 4] >= self.cfg.min_score]

    def lfw_rows(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """An LFW photo's (main face row (14,), geometry box (4,), other faces' rows (K, 14))."""
        rows = self.faces(image)
        geometry = lfw_geometry_box(image)
        ious = np.array([box_iou(geometry, r) for r in rows])
        if len(rows) and ious.max() >= MTCNN_MAIN_FACE_IOU:
            main = rows[int(ious.argmax())]
        else:
            main = unknown_landmarks(geometry[None])[0]
        others = [r for r, iou in zip(rows, ious) if iou < 0.2 and box_iou(main, r) < 0.2]
        return main, geometry, np.asarray(others, np.float32).reshape(-1, 14)

    def label(self, image: np.ndarray) -> np.ndarray:
        """(K, 14) labels for one photo (see `HaarTeacher.label`)."""
        return lfw_label(self, image) if self.cfg.lfw_geometry else self.faces(image)

    @property
    def description(self) -> str:
        return f"mtcnn (facenet-pytorch weights, {self.detector.digest[:12]})"


# MTCNN's boxes run from brow to chin, taller than the cascade's squares the geometry comes from.
MTCNN_MAIN_FACE_IOU = 0.4


def lfw_geometry_box(image: np.ndarray) -> np.ndarray:
    """`LFW_FACE_BOX` (4,) in this photo's pixels, scaled if it is not 250x250."""
    h, w = image.shape[:2]
    return np.asarray(LFW_FACE_BOX, np.float32) * np.array([w, h, w, h], np.float32) / LFW_SIZE


def unknown_landmarks(boxes: np.ndarray) -> np.ndarray:
    """(K, 4) xyxy boxes -> (K, 14) teacher rows whose landmarks are unknown (-1)."""
    return np.concatenate([boxes, np.full((len(boxes), 10), -1.0, np.float32)], 1).astype(np.float32)


def lfw_label(teacher, image: np.ndarray) -> np.ndarray:
    """A teacher's labels of an LFW photo: its main face first, then the others."""
    main, _geometry, others = teacher.lfw_rows(image)
    return np.concatenate([main[None], others], 0)


def make_teacher(cfg: TeacherConfig):
    return MtcnnTeacher(cfg) if cfg.teacher == "mtcnn" else HaarTeacher(cfg)


def teacher_face(row: np.ndarray):
    """A label.txt face from a teacher row (xyxy + 10 landmark values, -1 where unknown)."""
    from facepipe.data.labels import VISIBLE, FaceLabel

    x1, y1, x2, y2 = (float(v) for v in row[:4])
    if (row[4:] < 0).all():
        return FaceLabel(box=[x1, y1, x2 - x1, y2 - y1])
    return FaceLabel(box=[x1, y1, x2 - x1, y2 - y1], landmarks=row[4:].reshape(5, 2),
                     landmark_flags=np.full(5, VISIBLE))


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
    teacher = make_teacher(cfg or TeacherConfig())
    labelled, unreadable, faces = [], [], 0
    with replacing(out_dir, kind="teacher_labels") as tmp, Progress(len(files), "labelling", unit="img") as progress:
        for f in files:
            rel = f.relative_to(src).as_posix()
            image = cv2.imread(str(f), cv2.IMREAD_COLOR)
            progress.update()
            if image is None:
                unreadable.append(rel)
                continue
            rows = teacher.label(image)
            (tmp / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, tmp / "images" / rel)
            labelled.append(LabelledImage(rel, [teacher_face(row) for row in rows]))
            faces += len(rows)
        if not labelled:
            raise DataError(f"none of the {len(files)} photos could be read", path=src)
        write_labels(tmp / "label.txt", labelled)
        report = {"images": len(labelled), "faces": faces, "unreadable": unreadable,
                  "negative_images": sum(not x.faces for x in labelled),
                  "landmarked_faces": sum(f.has_landmarks for x in labelled for f in x.faces),
                  "teacher": teacher.description, "teacher_config": vars(teacher.cfg)}
        write_manifest(tmp, kind="teacher_labels", extra=report)
    return report
