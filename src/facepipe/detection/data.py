"""Training data: label.txt trees (`SPLIT/images/` + `SPLIT/label.txt`) as a torch Dataset, plus collate.

Sample randomness is keyed by (seed, epoch, index) and batches come from `EpochBatches`, a
per-epoch permutation split across DDP ranks, so a resumed run sees exactly the batches, crops and
flips the uninterrupted run would have seen.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from facepipe.detection.augment import Faces, augment, resize_only, to_input
from facepipe.errors import DataError


@dataclass
class Sample:
    path: Path
    faces: Faces


def find_label_file(data_dir: str | Path, split: str | None = None) -> Path:
    """`DIR/SPLIT/label.txt`, `DIR/label.txt`, or a label.txt path itself."""
    p = Path(data_dir)
    if p.is_file():
        return p
    candidates = ([p / split / "label.txt"] if split else []) + [p / "label.txt"]
    for c in candidates:
        if c.is_file():
            return c
    raise DataError(f"no label.txt found (looked for {', '.join(str(c) for c in candidates)}); expected the "
                    f"RetinaFace layout SPLIT/images/ + SPLIT/label.txt", path=p)


def faces_from_labels(face_labels) -> Faces:
    """`facepipe.data.labels.FaceLabel`s (box x,y,w,h; landmarks (5,2) or None) -> pixel `Faces`."""
    if not face_labels:
        return Faces.empty()
    boxes, landmarks, has = [], [], []
    for f in face_labels:
        x, y, w, h = (float(v) for v in f.box)
        boxes.append([x, y, x + w, y + h])
        lm = getattr(f, "landmarks", None)
        ok = lm is not None and np.all(np.asarray(lm, np.float32) >= 0)
        landmarks.append(np.asarray(lm, np.float32).reshape(5, 2) if ok else np.zeros((5, 2), np.float32))
        has.append(bool(ok))
    return Faces(np.asarray(boxes, np.float32), np.stack(landmarks).astype(np.float32), np.asarray(has, bool))


def load_samples(label_txt: str | Path, strict: bool = False) -> list[Sample]:
    """Read and validate a label file (facepipe.data.labels) into samples with absolute image paths.

    Out-of-image boxes are clipped and zero-area ones dropped (counted in `last_report`); missing
    image files are named on stderr and skipped, or raise with `strict`. No usable image is an error.
    """
    from facepipe.data.labels import read_labels, validate_labels

    label_txt = Path(label_txt)
    images_dir = label_txt.parent / "images"
    images, report = validate_labels(read_labels(label_txt), images_dir, strict=strict)
    load_samples.last_report = report
    for key in ("images_missing", "images_unreadable"):
        if report[key]:
            names = ", ".join(report[key][:10]) + (" ..." if len(report[key]) > 10 else "")
            print(f"warning: {label_txt}: {len(report[key])} image(s) {key.split('_')[1]} under {images_dir}, "
                  f"skipped: {names}", file=sys.stderr)
    if report["boxes_clipped"] or report["boxes_dropped"]:
        lines = ", ".join(str(d["line"]) for d in report["boxes_dropped"][:10])
        print(f"warning: {label_txt}: {report['boxes_clipped']} box(es) clipped to the image, "
              f"{report['boxes_dropped_zero_area']} zero-area and {report['boxes_dropped_outside']} "
              f"outside the image dropped" + (f" (lines {lines})" if lines else ""), file=sys.stderr)
    if not images:
        raise DataError(f"no usable images ({report['images']} listed, "
                        f"{len(report['images_missing'])} missing)", path=label_txt)
    return [Sample(images_dir / item.path, faces_from_labels(item.faces)) for item in images]


load_samples.last_report = {}


def read_image(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError("cannot read image (missing or not an image file)", path=path)
    return image


def faces_to_target(faces: Faces, size: int) -> np.ndarray:
    """(K, 15) float32: normalised xyxy, 10 normalised landmark coords, has_landmarks flag."""
    k = len(faces.boxes)
    target = np.zeros((k, 15), np.float32)
    if k:
        target[:, :4] = faces.boxes / size
        target[:, 4:14] = faces.landmarks.reshape(k, 10) / size
        target[:, 14] = faces.has_landmarks.astype(np.float32)
    return target


class DetectionDataset(torch.utils.data.Dataset):
    """Indexed by `(index, epoch)`; `train=False` only pads and resizes (validation loss)."""

    def __init__(self, samples: list[Sample], image_size: int, seed: int = 0, train: bool = True,
                 scales=(0.3, 0.45, 0.6, 0.8, 1.0), min_face_size: float = 2.0, photometric: bool = True,
                 flip: bool = True, min_visible: float = 0.0):
        self.samples, self.size, self.seed, self.train = samples, image_size, seed, train
        self.scales, self.min_face_size, self.min_visible = list(scales), min_face_size, min_visible
        self.photometric, self.flip = photometric, flip

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        sample = self.samples[index]
        image = read_image(sample.path)
        if self.train:
            rng = np.random.default_rng([self.seed, epoch, index])
            image, faces = augment(image, sample.faces, self.size, rng, self.scales, self.min_face_size,
                                   self.photometric, self.flip, self.min_visible)
        else:
            image, faces = resize_only(image, sample.faces, self.size)
        return torch.from_numpy(to_input(image)), torch.from_numpy(faces_to_target(faces, self.size))


def collate(batch):
    images, targets = zip(*batch)
    return torch.stack(images), list(targets)


class EpochBatches(torch.utils.data.Sampler):
    """Batches of `(index, epoch)` keys for one process; `skip` batches of `first_epoch` are left out."""

    def __init__(self, num_samples: int, batch_size: int, seed: int, epochs: int, rank: int = 0,
                 world: int = 1, first_epoch: int = 0, skip: int = 0):
        self.n, self.batch, self.seed, self.epochs = num_samples, batch_size, seed, epochs
        self.rank, self.world, self.first_epoch, self.skip = rank, world, first_epoch, skip

    @property
    def steps_per_epoch(self) -> int:
        return max(1, self.n // (self.batch * self.world))

    def epoch_order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 7919, epoch])
        need = self.steps_per_epoch * self.batch * self.world
        order = np.concatenate([rng.permutation(self.n) for _ in range(-(-need // self.n))])
        return order[:need].reshape(self.steps_per_epoch, self.world, self.batch)[:, self.rank]

    def __iter__(self):
        for epoch in range(self.first_epoch, self.epochs):
            order = self.epoch_order(epoch)
            start = self.skip if epoch == self.first_epoch else 0
            for row in order[start:]:
                yield [(int(i), epoch) for i in row]

    def __len__(self) -> int:
        return self.steps_per_epoch * (self.epochs - self.first_epoch) - self.skip
