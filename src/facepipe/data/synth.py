"""Synthetic faces, the embedded default dataset: identity folders for recognition, scenes for detection.

Faces are drawn procedurally with OpenCV. An identity is a fixed set of traits (head shape, eye,
brow, nose and mouth geometry, skin, hair and iris colour, hair style, ears, glasses, beard, a
mole); every image of it adds nuisance (roll, yaw as a feature shift, scale, expression, lighting
gradient and colour cast, blur, noise, partial occlusion). Skin and hair come from small palettes,
so many identities share colours and a model has to learn the geometry.

Output of `synthesize(cfg, out_dir)`:

    faces/<id>/<id>_<NNNN>.jpg        face_size px, landmarks near the ArcFace 112 template (LFW naming,
                                      numbers from 1)
    faces_eval/<id>/<id>_<NNNN>.jpg   held-out identities (never in faces/), for verification
    faces_pairs.txt                   LFW pairs.txt over faces_eval/ (folds, same then different pairs)
    detection/{train,val,test}/images/*.jpg + label.txt   RetinaFace/WIDER labels (facepipe.data.labels)
    preview.png                       a look at the faces and two annotated training scenes
    synth_report.json, manifest.json (last)

Everything is drawn from numpy Generators seeded per identity, image and scene, so the same
seed gives byte-identical files whatever the worker count or order.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from facepipe.config import bounded, to_dict
from facepipe.data.synth_face import (FaceIdentity, draw_face, face_landmarks, fill_shape, head_outline,
                                      identity_rng, make_identity, occluder, random_pose, transform_points)
from facepipe.data.recordio import encode_image
from facepipe.data.synth_nuisance import background, degrade, light
from facepipe.errors import ConfigError
from facepipe.gallery.align import ARCFACE_TEMPLATE_112 as ARCFACE_TEMPLATE, similarity_transform
from facepipe.run_logger import NullLogger, RunLogger

SPLITS = ("train", "val", "test")


@dataclass
class SynthConfig:
    """How much synthetic data to draw and how hard it is."""

    identities: int = bounded(50, low=1, help="identities in faces/ (recognition training)")
    images: int = bounded(20, low=1, help="images per identity")
    scenes: int = bounded(100, low=0, help="detection scenes over train/val/test")
    seed: int = 0
    face_size: int = bounded(112, low=32, high=512, help="side of the face crops in faces/")
    scene_size: int = bounded(320, low=64, high=4096, help="typical scene side; each varies +-20%")
    faces_per_scene_min: int = bounded(1, low=0, high=64)
    faces_per_scene_max: int = bounded(6, low=1, high=64)
    min_face: int = bounded(10, low=4, help="smallest face box side in scenes (px)")
    max_face_fraction: float = bounded(0.6, low=0.05, high=1.0, help="largest face box / scene side")
    landmark_min_face: int = bounded(16, low=0,
                                     help="faces smaller than this get -1 landmarks, as WIDER's tiny faces")
    val_fraction: float = bounded(0.1, low=0.0, high=0.9)
    test_fraction: float = bounded(0.1, low=0.0, high=0.9)
    negative_fraction: float = bounded(0.05, low=0.0, high=1.0, help="scenes with no face")
    nuisance: float = bounded(1.0, low=0.0, high=2.0, help="scales pose/lighting/blur/noise/occlusion")
    occlusion: float = bounded(0.15, low=0.0, high=1.0, help="chance of an occluder per face")
    eval_identities: int = bounded(10, low=0, help="held-out identities in faces_eval/ for pairs")
    pair_folds: int = bounded(10, low=1)
    pairs_per_fold: int = bounded(20, low=1, help="same-identity pairs per fold (and as many different)")
    jpeg_quality: int = bounded(95, low=30, high=100)
    workers: int = bounded(1, low=1, high=64, help="processes; output does not depend on it")

    def validate(self) -> None:
        if self.faces_per_scene_min > self.faces_per_scene_max:
            raise ConfigError(f"SynthConfig.faces_per_scene_min ({self.faces_per_scene_min}) is above "
                              f"faces_per_scene_max ({self.faces_per_scene_max})")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ConfigError("SynthConfig.val_fraction + test_fraction must be below 1 "
                              f"(got {self.val_fraction} + {self.test_fraction})")
        if self.min_face > self.max_face_fraction * self.scene_size * 0.8:
            raise ConfigError(f"SynthConfig.min_face {self.min_face} does not fit scenes of "
                              f"{self.scene_size} px with max_face_fraction {self.max_face_fraction}")


def _jitter(angle_deg: float, scale: float, shift: tuple[float, float], center: float) -> np.ndarray:
    a = math.radians(angle_deg)
    R = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    t = np.array([center, center]) - R @ np.array([center, center]) + np.array(shift)
    return np.concatenate([R, t[:, None]], 1)


def _compose(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """A after B, both 2x3."""
    return np.concatenate([A[:, :2] @ B[:, :2], (A[:, :2] @ B[:, 2] + A[:, 2])[:, None]], 1)


# --------------------------------------------------------------------------- recognition crops

def render_face_image(ident: FaceIdentity, rng: np.random.Generator, size: int = 112,
                      nuisance: float = 1.0, occlusion: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """One aligned face crop (BGR uint8, size x size) and its 5 landmarks in crop pixels."""
    pose = random_pose(rng, nuisance)
    img = background(rng, size, size, shapes=int(rng.integers(0, 4)))
    # Align this shot's landmarks onto the template (what a real aligner does), then jitter it.
    template = ARCFACE_TEMPLATE * (size / 112.0)
    align = similarity_transform(face_landmarks(ident, pose) * (size / 112.0), template)
    jit = _jitter(rng.normal(0, 5 * nuisance), 1 + rng.normal(0, 0.04 * nuisance),
                  tuple(rng.normal(0, 1.5 * nuisance * size / 112, 2)), size / 2)
    M = _compose(jit, _compose(align, np.diag([size / 112.0, size / 112.0, 1])[:2]))
    geo = draw_face(img, M, ident, pose)
    if rng.random() < occlusion:
        poly, color = occluder(rng)
        fill_shape(img, M, poly, color)
    img = light(img, rng, nuisance)
    degrade(img, rng, nuisance, scale=size / 112.0)
    return img, geo["landmarks"]


def _identity_name(index: int, total: int) -> str:
    return f"id{index:0{max(4, len(str(total - 1)))}d}"


def _identity_task(args) -> int:
    cfg, out_root, index, total, held_out = args
    ident = make_identity(identity_rng(cfg.seed, index, held_out))
    name = _identity_name(index, total)
    folder = Path(out_root) / name
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(cfg.images):
        rng = np.random.default_rng([cfg.seed, 4 if held_out else 1, index, k])
        img, _ = render_face_image(ident, rng, cfg.face_size, cfg.nuisance, cfg.occlusion)
        (folder / f"{name}_{k + 1:04d}.jpg").write_bytes(encode_image(img, cfg.jpeg_quality))
    return cfg.images


# --------------------------------------------------------------------------- detection scenes

def _overlap(a, b) -> float:
    """Intersection over the smaller box: a small face hidden inside a big one counts as overlap."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return inter / smaller if smaller > 0 else 0.0


def render_scene(cfg: SynthConfig, index: int):
    """One detection scene: (BGR image, list of FaceLabel). Deterministic in (seed, index)."""
    from facepipe.data.labels import OCCLUDED, VISIBLE, FaceLabel

    rng = np.random.default_rng([cfg.seed, 2, index])
    width = int(cfg.scene_size * rng.uniform(0.8, 1.2))
    height = int(cfg.scene_size * rng.uniform(0.8, 1.2))
    img = background(rng, height, width, shapes=int(rng.integers(3, 16)))
    if rng.random() < cfg.negative_fraction:
        count = 0
    else:
        count = int(rng.integers(cfg.faces_per_scene_min, cfg.faces_per_scene_max + 1))
    largest = cfg.max_face_fraction * min(width, height)
    placed = []  # (box xyxy, landmarks, outline, occluder polygon or None, blur)
    for _ in range(count):
        ident = make_identity(rng)
        pose = random_pose(rng, cfg.nuisance)
        for _try in range(20):
            side = math.exp(rng.uniform(math.log(cfg.min_face), math.log(largest)))
            angle = rng.normal(0, 10 * cfg.nuisance)
            # Map the head outline's width onto `side` pixels; place it fully inside the scene.
            scale = side / (2 * ident.head_w)
            a = math.radians(angle)
            R = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
            outline = head_outline(ident) @ R.T
            lo, hi = outline.min(0), outline.max(0)
            span = hi - lo
            if span[0] >= width - 2 or span[1] >= height - 2:
                continue
            tx = rng.uniform(-lo[0] + 1, width - hi[0] - 1)
            ty = rng.uniform(-lo[1] + 1, height - hi[1] - 1)
            box = (lo[0] + tx, lo[1] + ty, hi[0] + tx, hi[1] + ty)
            if all(_overlap(box, p[0]) < 0.25 for p in placed):
                break
        else:
            continue
        M = np.concatenate([R, np.array([[tx], [ty]])], 1)
        # Draw into a padded region, light and blur it there, then paste back.
        x0, y0 = max(0, int(box[0] - side * 0.5)), max(0, int(box[1] - side * 0.5))
        x1, y1 = min(width, int(box[2] + side * 0.5) + 1), min(height, int(box[3] + side * 0.5) + 1)
        before = img[y0:y1, x0:x1].copy()
        region = before.copy()
        Mr = M - np.array([[0, 0, x0], [0, 0, y0]])
        geo = draw_face(region, Mr, ident, pose)
        occ = None
        if rng.random() < cfg.occlusion:
            poly, color = occluder(rng)
            fill_shape(region, Mr, poly, color)
            occ = transform_points(M, poly).astype(np.float32)
        # Lighting and blur belong to the face, not its surroundings: blend through a soft mask.
        mask = (region != before).any(2).astype(np.float32)
        region = light(region, rng, cfg.nuisance * 0.7)
        blur = degrade(region, rng, cfg.nuisance, scale=side / 70.0)
        mask = cv2.GaussianBlur(mask, (0, 0), max(0.6, blur * side / 70.0))[..., None]
        img[y0:y1, x0:x1] = (region * mask + before * (1 - mask) + 0.5).astype(np.uint8)
        placed.append((box, geo["landmarks"] + [x0, y0], geo["outline"] + [x0, y0], occ, blur))
    degrade(img, rng, cfg.nuisance * 0.5)

    faces = []
    for i, (box, lms, _outline, occ, blur) in enumerate(placed):
        w, h = box[2] - box[0], box[3] - box[1]
        xywh = np.round([box[0], box[1], w, h], 2)
        if max(w, h) < cfg.landmark_min_face:
            faces.append(FaceLabel(box=xywh, blur=round(min(blur, 1.0), 2)))
            continue
        # Occluded: under this face's occluder or under a face drawn later.
        covers = [p[2].astype(np.float32) for p in placed[i + 1:]] + ([occ] if occ is not None else [])
        flags = np.array([OCCLUDED if any(cv2.pointPolygonTest(c, (float(x), float(y)), False) >= 0
                                          for c in covers) else VISIBLE for x, y in lms])
        faces.append(FaceLabel(box=xywh, landmarks=np.round(lms, 2), landmark_flags=flags,
                               blur=round(min(blur, 1.0), 2)))
    return img, faces


def split_of(cfg: SynthConfig, index: int) -> str:
    """Scenes 0.. go to train, then val, then test; a split asked for gets at least one scene
    when there are three or more (an empty val/ would stop a detector's evaluation)."""
    def share(fraction: float) -> int:
        n = int(round(cfg.scenes * fraction))
        return max(n, 1) if fraction > 0 and cfg.scenes >= 3 else n

    n_val, n_test = share(cfg.val_fraction), share(cfg.test_fraction)
    n_train = cfg.scenes - n_val - n_test
    return "train" if index < n_train else ("val" if index < n_train + n_val else "test")


def _scene_task(args):
    cfg, det_root, index = args
    img, faces = render_scene(cfg, index)
    name = f"scene_{index:06d}.jpg"
    (Path(det_root) / split_of(cfg, index) / "images" / name).write_bytes(encode_image(img, cfg.jpeg_quality))
    return index, name, faces


# --------------------------------------------------------------------------- pairs

def write_pairs(path: Path, names: list[str], images: int, folds: int, per_fold: int, seed: int) -> int:
    """LFW pairs.txt over held-out identities: `folds<TAB>per_fold`, then per fold `per_fold`
    same-identity lines `name i j` and `per_fold` different-identity lines `n1 i n2 j` (1-based)."""
    rng = np.random.default_rng([seed, 5])
    lines = [f"{folds}\t{per_fold}"]
    for _ in range(folds):
        for _ in range(per_fold):
            name = names[int(rng.integers(len(names)))]
            i, j = rng.choice(images, 2, replace=False) + 1
            lines.append(f"{name}\t{i}\t{j}")
        for _ in range(per_fold):
            a, b = rng.choice(len(names), 2, replace=False)
            lines.append(f"{names[a]}\t{int(rng.integers(images)) + 1}\t{names[b]}\t{int(rng.integers(images)) + 1}")
    path.write_text("\n".join(lines) + "\n")
    return folds * per_fold * 2


# --------------------------------------------------------------------------- preview

LANDMARK_COLOURS = [(255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 0, 255), (0, 255, 255)]


def annotate(image: np.ndarray, faces) -> np.ndarray:
    """Boxes (green) and landmarks (left eye blue, right eye red, nose green, mouth magenta/yellow)."""
    out = image.copy()
    for face in faces:
        x, y, w, h = face.box
        cv2.rectangle(out, (int(x), int(y)), (int(round(x + w)), int(round(y + h))), (0, 255, 0), 1)
        if face.landmarks is not None:
            for (lx, ly), flag, colour in zip(face.landmarks, face.landmark_flags, LANDMARK_COLOURS):
                if flag >= 0:
                    cv2.circle(out, (int(lx), int(ly)), 2, colour, -1 if flag == 0 else 1)
    return out


def write_preview(out_dir: Path, labelled_train: list, per_row: int = 8, tile: int = 64) -> Path:
    """`preview.png`: a grid of faces (one identity per row) above annotated training scenes."""
    rows = []
    for person in sorted((out_dir / "faces").iterdir())[:per_row]:
        tiles = [cv2.resize(cv2.imread(str(f)), (tile, tile), interpolation=cv2.INTER_AREA)
                 for f in sorted(person.iterdir())[:per_row]]
        tiles += [np.zeros((tile, tile, 3), np.uint8)] * (per_row - len(tiles))
        rows.append(np.concatenate(tiles, 1))
    width = per_row * tile
    scene_h = width // 2
    scenes = []
    for item in labelled_train[:2]:
        img = annotate(cv2.imread(str(out_dir / "detection" / "train" / "images" / item.path)), item.faces)
        scale = min(scene_h / img.shape[0], (width // 2) / img.shape[1])
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        canvas = np.zeros((scene_h, width // 2, 3), np.uint8)
        canvas[:img.shape[0], :img.shape[1]] = img
        scenes.append(canvas)
    if scenes:
        scenes += [np.zeros((scene_h, width // 2, 3), np.uint8)] * (2 - len(scenes))
        rows.append(np.concatenate(scenes, 1))
    path = out_dir / "preview.png"
    if rows:
        cv2.imwrite(str(path), np.concatenate(rows, 0))
    return path


# --------------------------------------------------------------------------- the step

_OUTPUTS = ("faces", "faces_eval", "faces_pairs.txt", "detection", "synth_report.json", "preview.png")


def _prepare(out_dir: Path) -> None:
    """Start from a clean folder; an earlier synth output is replaced, anything else is refused."""
    from facepipe.manifest import MANIFEST

    if out_dir.exists() and any(out_dir.iterdir()):
        try:
            kind = json.loads((out_dir / MANIFEST).read_text()).get("kind")
        except (OSError, ValueError, AttributeError):
            kind = None
        ours = kind == "synth" or (out_dir / "synth_report.json").exists() or \
            {p.name for p in out_dir.iterdir()} <= set(_OUTPUTS) | {MANIFEST + ".tmp"}
        if not ours:
            raise ConfigError(f"{out_dir}: not empty and not an earlier synth output; "
                              "choose an empty or new folder")
        (out_dir / MANIFEST).unlink(missing_ok=True)  # incomplete until rewritten
        for name in _OUTPUTS:
            target = out_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def _run(tasks, fn, workers: int, progress):
    if workers <= 1:
        for t in tasks:
            result = fn(t)
            progress.update(1)
            yield result
        return
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(workers) as pool:
        for result in pool.imap(fn, tasks, chunksize=max(1, len(tasks) // (workers * 8) or 1)):
            progress.update(1)
            yield result


def synthesize(cfg: SynthConfig, out_dir: str | Path, logger: RunLogger = NullLogger()) -> dict:
    """Draw the synthetic dataset into out_dir (see the module docstring); returns the report."""
    from facepipe.data.labels import LabelledImage, write_labels
    from facepipe.manifest import write_manifest
    from facepipe.progress import Progress

    out_dir = Path(out_dir)
    _prepare(out_dir)
    t0 = time.monotonic()

    faces_root = out_dir / "faces"
    tasks = [(cfg, str(faces_root), i, cfg.identities, False) for i in range(cfg.identities)]
    eval_root = out_dir / "faces_eval"
    tasks += [(cfg, str(eval_root), i, cfg.eval_identities, True) for i in range(cfg.eval_identities)]
    with Progress(len(tasks), "synth faces", unit="identity") as progress:
        face_images = sum(_run(tasks, _identity_task, cfg.workers, progress))
    t_faces = time.monotonic() - t0

    pairs = 0
    if cfg.eval_identities >= 2 and cfg.images >= 2:
        names = [_identity_name(i, cfg.eval_identities) for i in range(cfg.eval_identities)]
        pairs = write_pairs(out_dir / "faces_pairs.txt", names, cfg.images, cfg.pair_folds,
                            cfg.pairs_per_fold, cfg.seed)

    det_root = out_dir / "detection"
    for split in SPLITS:
        (det_root / split / "images").mkdir(parents=True, exist_ok=True)
    labelled: dict[str, list] = {s: [] for s in SPLITS}
    sizes, occluded, no_landmarks = [], 0, 0
    with Progress(cfg.scenes, "synth scenes", unit="scene") as progress:
        for index, name, faces in _run([(cfg, str(det_root), i) for i in range(cfg.scenes)],
                                       _scene_task, cfg.workers, progress):
            labelled[split_of(cfg, index)].append(LabelledImage(name, faces))
            for f in faces:
                sizes.append(max(f.box[2], f.box[3]))
                no_landmarks += not f.has_landmarks
                occluded += int((f.landmark_flags == 1.0).sum())
    for split in SPLITS:
        write_labels(det_root / split / "label.txt", labelled[split])
    seconds = time.monotonic() - t0

    report = {
        "identities": cfg.identities, "images_per_identity": cfg.images, "face_images": cfg.identities * cfg.images,
        "face_size": cfg.face_size, "eval_identities": cfg.eval_identities,
        "eval_images": cfg.eval_identities * cfg.images, "pairs": pairs,
        "pairs_root": "faces_eval" if pairs else None,
        "scenes": {s: len(labelled[s]) for s in SPLITS},
        "faces_in_scenes": {s: sum(len(i.faces) for i in labelled[s]) for s in SPLITS},
        "negative_scenes": sum(not i.faces for s in SPLITS for i in labelled[s]),
        "faces_without_landmarks": no_landmarks, "occluded_landmarks": occluded,
        "face_box_px": ({"min": round(float(np.min(sizes)), 2), "median": round(float(np.median(sizes)), 2),
                         "max": round(float(np.max(sizes)), 2)} if sizes else None),
        "landmark_order": ["left_eye", "right_eye", "nose", "mouth_left", "mouth_right"],
        "config": to_dict(cfg),
    }
    report["config"].pop("workers")  # the files do not depend on it; keep the report byte-identical
    write_preview(out_dir, labelled["train"])
    (out_dir / "synth_report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    write_manifest(out_dir, kind="synth", extra={"seed": cfg.seed})
    logger.log_metrics({"face_images": face_images, "scenes": cfg.scenes,
                        "scene_faces": len(sizes), "seconds": seconds,
                        "faces_per_s": (face_images / t_faces) if t_faces > 0 else 0.0})
    logger.log_artifact(out_dir / "synth_report.json")
    return {**report, "seconds": round(seconds, 3),
            "faces_per_s": round(face_images / t_faces, 1) if t_faces > 0 else None}
