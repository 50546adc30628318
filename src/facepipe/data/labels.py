"""RetinaFace/WIDER `label.txt` for detection data: read, write, and check against the images on disk.

The format (as Pytorch_Retinaface and InsightFace's RetinaFace ship WIDER FACE):

    # relative/path.jpg                    (an optional `width height` after the path is tolerated)
    x y w h  lx1 ly1 f1  lx2 ly2 f2  lx3 ly3 f3  lx4 ly4 f4  lx5 ly5 f5  blur
    ...one line per face...

Paths are relative to the `images/` folder beside `label.txt`. Landmarks are, in order: left eye,
right eye, nose tip, left mouth corner, right mouth corner ("left" = image left). The flag after
each landmark is 0.0 (visible), 1.0 (occluded) or -1 (missing); a face without landmarks has
`-1 -1 -1` for all five. Box-only lines (`x y w h`, as in the WIDER val/test files) are read as
faces without landmarks. An image with no face lines is a negative (kept).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facepipe.errors import DataError

NUM_LANDMARKS = 5
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
VISIBLE, OCCLUDED, MISSING = 0.0, 1.0, -1.0
_FULL_FIELDS = 4 + 3 * NUM_LANDMARKS + 1  # 20
_EXPECTED = ("expected 4 numbers (x y w h) or 20 numbers "
             "(x y w h, then 5 landmarks as x y flag, then blur)")


@dataclass
class FaceLabel:
    """One face: box `(x, y, w, h)` in pixels, 5 landmarks (or None), their flags, and blur."""

    box: np.ndarray                          # (4,) float64: x, y, w, h
    landmarks: np.ndarray | None = None      # (5, 2) float64, or None when all are missing
    landmark_flags: np.ndarray = field(      # (5,) float64: 0 visible, 1 occluded, -1 missing
        default_factory=lambda: np.full(NUM_LANDMARKS, MISSING))
    blur: float = 0.0
    line: int | None = None                  # where in its label file (not part of equality)

    def __post_init__(self):
        self.box = np.asarray(self.box, dtype=np.float64).reshape(4)
        if self.landmarks is not None:
            self.landmarks = np.asarray(self.landmarks, dtype=np.float64).reshape(NUM_LANDMARKS, 2)
        self.landmark_flags = np.asarray(self.landmark_flags, dtype=np.float64).reshape(NUM_LANDMARKS)
        self.blur = float(self.blur)

    @property
    def xyxy(self) -> np.ndarray:
        x, y, w, h = self.box
        return np.array([x, y, x + w, y + h])

    @property
    def has_landmarks(self) -> bool:
        return self.landmarks is not None

    def __eq__(self, other) -> bool:
        if not isinstance(other, FaceLabel):
            return NotImplemented
        same_lm = (self.landmarks is None and other.landmarks is None) or (
            self.landmarks is not None and other.landmarks is not None
            and np.array_equal(self.landmarks, other.landmarks))
        return (np.array_equal(self.box, other.box) and same_lm
                and np.array_equal(self.landmark_flags, other.landmark_flags) and self.blur == other.blur)


@dataclass
class LabelledImage:
    """An image path (relative to `images/`) and its faces; no faces = a negative image."""

    path: str
    faces: list[FaceLabel] = field(default_factory=list)


def _numbers(tokens: list[str], path, line_no: int) -> list[float]:
    values = []
    for i, tok in enumerate(tokens):
        try:
            v = float(tok)
        except ValueError:
            raise DataError(f"field {i + 1} is {tok!r}, not a number; {_EXPECTED}",
                            path=path, line=line_no) from None
        if not math.isfinite(v):
            raise DataError(f"field {i + 1} is {tok!r}; coordinates must be finite numbers",
                            path=path, line=line_no)
        values.append(v)
    return values


def parse_face_line(text: str, path=None, line_no: int | None = None) -> FaceLabel:
    """One face line -> FaceLabel; DataError naming the file and line when it is malformed."""
    values = _numbers(text.split(), path, line_no)
    if len(values) not in (4, _FULL_FIELDS - 1, _FULL_FIELDS):
        raise DataError(f"{len(values)} numbers; {_EXPECTED}", path=path, line=line_no)
    box = np.array(values[:4])
    if box[2] < 0 or box[3] < 0:
        raise DataError(f"box width/height {box[2]:g} x {box[3]:g} is negative; "
                        "expected x y w h with w, h >= 0", path=path, line=line_no)
    if len(values) == 4:
        return FaceLabel(box=box, line=line_no)
    lm = np.array(values[4:4 + 3 * NUM_LANDMARKS]).reshape(NUM_LANDMARKS, 3)
    flags = lm[:, 2].copy()
    bad = [f for f in flags if f not in (VISIBLE, OCCLUDED, MISSING)]
    if bad:
        raise DataError(f"landmark flag {bad[0]:g}; expected 0.0 (visible), 1.0 (occluded) "
                        "or -1 (missing)", path=path, line=line_no)
    # A landmark is missing when its flag says so or its coordinates are the -1 placeholder.
    missing = (flags == MISSING) | ((lm[:, 0] == -1) & (lm[:, 1] == -1))
    flags[missing] = MISSING
    blur = values[_FULL_FIELDS - 1] if len(values) == _FULL_FIELDS else 0.0
    if missing.all():
        return FaceLabel(box=box, landmarks=None, blur=blur, line=line_no)
    points = lm[:, :2].copy()
    points[missing] = -1.0
    return FaceLabel(box=box, landmarks=points, landmark_flags=flags, blur=blur, line=line_no)


def read_labels(label_txt: str | Path) -> list[LabelledImage]:
    """Parse a label.txt; a malformed line raises DataError naming the file, line and what was expected."""
    label_txt = Path(label_txt)
    try:
        raw = label_txt.read_bytes()
    except FileNotFoundError:
        raise DataError("label file not found", path=label_txt) from None
    except OSError as exc:
        raise DataError(f"cannot read label file: {exc.strerror}", path=label_txt) from None
    images: list[LabelledImage] = []
    seen: dict[str, int] = {}
    if raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark from Windows editors
        raw = raw[3:]
    for line_no, line_bytes in enumerate(raw.splitlines(), start=1):
        try:
            line = line_bytes.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise DataError("not UTF-8 text; expected a '# path' line or a face line",
                            path=label_txt, line=line_no) from None
        if not line:
            continue
        if line.startswith("#"):
            rel = _image_path(line[1:].strip())
            if not rel:
                raise DataError("'#' without an image path; expected '# relative/path.jpg'",
                                path=label_txt, line=line_no)
            if rel in seen:
                raise DataError(f"image {rel!r} is listed twice (first at line {seen[rel]})",
                                path=label_txt, line=line_no)
            seen[rel] = line_no
            images.append(LabelledImage(rel))
            continue
        if not images:
            raise DataError("face line before any '# path' line; expected '# relative/path.jpg' first",
                            path=label_txt, line=line_no)
        images[-1].faces.append(parse_face_line(line, label_txt, line_no))
    return images


def read_wider_gt(gt_txt: str | Path) -> list[LabelledImage]:
    """WIDER FACE's own annotation file (`wider_face_{train,val}_bbx_gt.txt`) -> box-only labels.

    Per image: the path, a face count, then one line per face
    `x y w h blur expression illumination invalid occlusion pose` (an image with 0 faces still
    has one line of zeros). WIDER's blur (0 clear, 1 normal, 2 heavy) becomes 0.0, 0.5, 1.0;
    faces marked invalid are kept with zero area, so validation drops and counts them.
    """
    gt_txt = Path(gt_txt)
    try:
        lines = gt_txt.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError("WIDER annotation file not found", path=gt_txt) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read WIDER annotation file: {exc}", path=gt_txt) from None
    images: list[LabelledImage] = []
    i = 0
    while i < len(lines):
        rel = lines[i].strip()
        if not rel:
            i += 1
            continue
        if not rel.lower().endswith((".jpg", ".jpeg", ".png")):
            raise DataError(f"{rel[:40]!r}: expected an image path (.jpg/.png)", path=gt_txt, line=i + 1)
        if i + 1 >= len(lines) or not lines[i + 1].strip().isdigit():
            raise DataError("expected the number of faces after the image path", path=gt_txt, line=i + 2)
        count = int(lines[i + 1])
        image = LabelledImage(rel)
        for k in range(max(count, 1)):
            line_no = i + 3 + k
            if line_no > len(lines):
                raise DataError(f"file ends inside {rel}: {count} face line(s) announced",
                                path=gt_txt, line=line_no)
            values = _numbers(lines[line_no - 1].split(), gt_txt, line_no)
            if len(values) != 10:
                raise DataError(f"{len(values)} numbers; expected 10 (x y w h blur expression "
                                "illumination invalid occlusion pose)", path=gt_txt, line=line_no)
            if count == 0:
                continue
            x, y, w, h, blur, _expr, _illum, invalid = values[:8]
            box = [x, y, 0.0, 0.0] if invalid else [x, y, max(w, 0.0), max(h, 0.0)]
            image.faces.append(FaceLabel(box=box, blur=min(max(blur, 0.0), 2.0) / 2))
        images.append(image)
        i += 2 + max(count, 1)
    return images


def _image_path(text: str) -> str:
    """`path.jpg` or `path.jpg W H` -> `path.jpg` (some exports append the image size)."""
    parts = text.rsplit(None, 2)
    if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
        return parts[0]
    return text


def _fmt(v: float) -> str:
    """Compact, exact-enough number text: at most 3 decimals (sub-pixel), no trailing zeros."""
    text = f"{v:.3f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def format_face(face: FaceLabel) -> str:
    parts = [_fmt(v) for v in face.box]
    for k in range(NUM_LANDMARKS):
        if face.landmarks is None or face.landmark_flags[k] == MISSING:
            parts += ["-1.0", "-1.0", "-1.0"]
        else:
            x, y = face.landmarks[k]
            parts += [_fmt(x), _fmt(y), _fmt(face.landmark_flags[k])]
    parts.append(_fmt(face.blur))
    return " ".join(parts)


def write_labels(path: str | Path, images: list[LabelledImage]) -> Path:
    """Write a label.txt (every face with 20 fields; `-1` for missing landmarks)."""
    path = Path(path)
    lines = []
    for image in images:
        if not image.path or "\n" in image.path:
            raise DataError(f"image path {image.path!r} cannot be written to a label file", path=path)
        lines.append(f"# {image.path}")
        lines += [format_face(face) for face in image.faces]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + ("\n" if lines else ""))
    tmp.replace(path)
    return path


def image_size(path: str | Path) -> tuple[int, int] | None:
    """(width, height) from a JPEG or PNG header without decoding; None when it is neither."""
    with open(path, "rb") as f:
        head = f.read(26)
        if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
            w, h = struct.unpack(">II", head[16:24])
            return int(w), int(h)
        if head[:2] != b"\xff\xd8":
            return None
        f.seek(2)
        while True:
            marker = f.read(2)
            if len(marker) < 2 or marker[0] != 0xFF:
                return None
            while marker[1] == 0xFF:  # fill bytes
                nxt = f.read(1)
                if not nxt:
                    return None
                marker = b"\xff" + nxt
            code = marker[1]
            if code in (0xD8, 0x01) or 0xD0 <= code <= 0xD7:
                continue
            seg = f.read(2)
            if len(seg) < 2:
                return None
            (length,) = struct.unpack(">H", seg)
            # Start-of-frame markers (baseline, progressive, ...) carry the size.
            if code in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                body = f.read(5)
                if len(body) < 5:
                    return None
                h, w = struct.unpack(">HH", body[1:5])
                return (int(w), int(h)) if w and h else None
            if length < 2:
                return None
            f.seek(length - 2, 1)


def _read_size(path: Path) -> tuple[int, int] | None:
    size = image_size(path)
    if size is not None:
        return size
    import cv2  # other formats (BMP, WebP, ...): decode to learn the size

    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    return None if img is None else (img.shape[1], img.shape[0])


def validate_labels(images: list[LabelledImage], images_dir: str | Path,
                    strict: bool = False) -> tuple[list[LabelledImage], dict]:
    """Check labels against the images on disk; return the usable labels and a report.

    Missing or unreadable image files are named in the report and left out (with `strict`, the
    first one raises DataError instead). Boxes reaching outside the image are clipped to it and
    counted; boxes of zero area (as given, or after clipping) are dropped and counted. Images
    without faces are kept as negatives and counted.
    """
    images_dir = Path(images_dir)
    report = {"images": len(images), "images_kept": 0, "images_missing": [], "images_unreadable": [],
              "negative_images": 0, "faces": 0, "faces_kept": 0, "faces_with_landmarks": 0,
              "boxes_clipped": 0, "boxes_dropped_zero_area": 0, "boxes_dropped_outside": 0, "boxes_dropped": []}
    kept: list[LabelledImage] = []
    for image in images:
        file = images_dir / image.path
        report["faces"] += len(image.faces)
        if not file.is_file():
            if strict:
                raise DataError("image listed in the labels is missing", path=file)
            report["images_missing"].append(image.path)
            continue
        try:
            size = _read_size(file)
        except OSError:
            size = None
        if size is None:
            if strict:
                raise DataError("not a readable image (expected JPEG or PNG)", path=file)
            report["images_unreadable"].append(image.path)
            continue
        width, height = size
        faces = []
        for face in image.faces:
            x, y, w, h = face.box
            x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
            x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
            why = "zero_area" if w <= 0 or h <= 0 else "outside" if x2 <= x1 or y2 <= y1 else None
            if why:
                report[f"boxes_dropped_{why}"] += 1
                report["boxes_dropped"].append({"line": face.line, "image": image.path, "reason": why})
                continue
            if (x1, y1, x2, y2) != (x, y, x + w, y + h):
                report["boxes_clipped"] += 1
                face = FaceLabel(box=[x1, y1, x2 - x1, y2 - y1], landmarks=face.landmarks,
                                 landmark_flags=face.landmark_flags, blur=face.blur, line=face.line)
            faces.append(face)
            report["faces_with_landmarks"] += face.has_landmarks
        report["faces_kept"] += len(faces)
        report["negative_images"] += not faces
        kept.append(LabelledImage(image.path, faces))
    report["images_kept"] = len(kept)
    return kept, report


def load_split(split_dir: str | Path, strict: bool = False) -> tuple[list[LabelledImage], dict]:
    """`SPLIT/label.txt` + `SPLIT/images/`: read and validate in one call (what a detector trainer wants)."""
    split_dir = Path(split_dir)
    return validate_labels(read_labels(split_dir / "label.txt"), split_dir / "images", strict=strict)
