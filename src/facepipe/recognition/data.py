"""Training data for recognition: a torch Dataset over a packed FaceRecordSet, and the batch
samplers (shuffled, or P identities x K images) that split every global batch across DDP ranks.

Samplers yield `(record_index, epoch, position)` items; augmentation draws its randomness from
that triple, never from a worker's RNG, so a run resumed mid-epoch (the sampler skips the batches
already done) sees exactly the images and augmentations of an uninterrupted run, whatever the
number of loader workers.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from facepipe.data.crop import center_crop_resize  # noqa: F401  (re-exported)
from facepipe.errors import DataError


def check_records(records, data_dir) -> None:
    """Refuse datasets that cannot train a classifier: empty, one identity, labels vs `property`."""
    n = len(records)
    if n == 0:
        raise DataError("the dataset has no images", path=data_dir)
    labels = np.asarray(records.labels)
    if len(labels) != n:
        raise DataError(f"{len(labels)} labels for {n} records", path=data_dir)
    if labels.min() < 0 or labels.max() >= records.num_classes:
        raise DataError(
            f"'property' says {records.num_classes} identities but labels run from {labels.min()} to "
            f"{labels.max()}; repack the dataset or fix 'property'", path=f"{data_dir}/property")
    present = np.unique(labels)
    if len(present) < 2:
        raise DataError(f"the dataset has {len(present)} identity; training needs at least 2", path=data_dir)
    if len(present) != records.num_classes:
        raise DataError(
            f"'property' says {records.num_classes} identities but the records hold {len(present)} "
            f"distinct labels", path=f"{data_dir}/property")


class FaceDataset(Dataset):
    """Decoded, resized, augmented faces as uint8 BGR `(S, S, 3)` tensors with their labels.

    Images stay uint8 until the training loop (`faces_to_tensor`) so workers ship 4x less data.
    """

    def __init__(self, records, input_size: int, augment: str = "flip", seed: int = 0):
        self.records, self.input_size, self.augment, self.seed = records, input_size, augment, seed

    def __len__(self):
        return len(self.records)

    def __getitem__(self, item):
        index, epoch, position = item
        image, label = self.records.decode(int(index))
        if image.shape[0] != self.input_size or image.shape[1] != self.input_size:
            image = center_crop_resize(image, self.input_size)
        if self.augment != "none":
            rng = np.random.default_rng([self.seed, epoch, position])
            image = self._augment(image, rng)
        return torch.from_numpy(np.ascontiguousarray(image)), int(label)

    def _augment(self, image, rng):
        if rng.random() < 0.5:
            image = image[:, ::-1]
        if self.augment == "flip_jitter":
            # small shift/scale (faces are aligned already) and brightness/contrast changes
            image = _warp(image, rng, scale=(0.93, 1.07), shift=0.04, degrees=0.0)
            image = _brightness_contrast(image, rng)
        elif self.augment == "strong":
            image = strong_augment(image, rng)
        return image


def _warp(image, rng, scale, shift, degrees):
    # draws: scale, shift, then the angle only where one is asked for (flip_jitter's stream is unchanged)
    s = image.shape[0]
    zoom, (tx, ty) = rng.uniform(*scale), rng.uniform(-shift, shift, size=2) * s
    angle = rng.uniform(-degrees, degrees) if degrees else 0.0
    m = cv2.getRotationMatrix2D((s / 2, s / 2), angle, zoom)
    m[:, 2] += (tx, ty)
    return cv2.warpAffine(np.ascontiguousarray(image), m, (s, s), borderMode=cv2.BORDER_REFLECT)


def _brightness_contrast(image, rng):
    return cv2.convertScaleAbs(image, alpha=rng.uniform(0.8, 1.2), beta=rng.uniform(-20, 20))


def strong_augment(image, rng):
    """For small training sets that a network memorises: a wider warp (rotation +-10 degrees,
    scale 0.9..1.1, shift +-6%), brightness/contrast, per-channel colour gain, grayscale (20%), a
    low-resolution round trip (20%: down to 40..80% and back) and one erased rectangle (50%: 4..20%
    of the face, filled with noise). `image` is uint8 BGR (S, S, 3), already flipped or not."""
    s = image.shape[0]
    image = _warp(image, rng, scale=(0.9, 1.1), shift=0.06, degrees=10.0)
    image = _brightness_contrast(image, rng)
    gains = rng.uniform(0.9, 1.1, size=3)
    image = np.clip(image.astype(np.float32) * gains, 0, 255).astype(np.uint8)
    if rng.random() < 0.2:
        image = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    if rng.random() < 0.2:
        small = max(8, int(round(s * rng.uniform(0.4, 0.8))))
        image = cv2.resize(cv2.resize(image, (small, small), interpolation=cv2.INTER_AREA), (s, s),
                           interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        area = rng.uniform(0.04, 0.2) * s * s
        aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
        h = min(s, max(1, int(round(np.sqrt(area * aspect)))))
        w = min(s, max(1, int(round(np.sqrt(area / aspect)))))
        y, x = int(rng.integers(0, s - h + 1)), int(rng.integers(0, s - w + 1))
        image = image.copy()
        image[y:y + h, x:x + w] = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    return image


class _PositionedBatches(Sampler):
    """Shared bookkeeping: epoch, the batch to start from (resume), rank and world size."""

    def __init__(self, seed: int, rank: int, world: int):
        self.seed, self.rank, self.world = seed, rank, world
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _rng(self):
        return np.random.default_rng([self.seed, self.epoch])

    def __iter__(self):
        for b, batch in enumerate(self._global_batches()):
            if b < self.start_batch:
                continue
            share = len(batch) // self.world
            mine = batch[self.rank * share:(self.rank + 1) * share]
            first = b * len(batch) + self.rank * share
            yield [(int(i), self.epoch, first + j) for j, i in enumerate(mine)]


class ShuffledBatches(_PositionedBatches):
    """A fresh permutation each epoch; each global batch (batch_size x world) split across ranks."""

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1):
        super().__init__(seed, rank, world)
        self.num_samples, self.batch_size = num_samples, batch_size
        if len(self) == 0:
            raise DataError(f"{num_samples} images is fewer than one batch of {batch_size} x {world} ranks")

    def __len__(self):
        return self.num_samples // (self.batch_size * self.world)

    def _global_batches(self):
        perm = self._rng().permutation(self.num_samples)
        size = self.batch_size * self.world
        for b in range(len(self)):
            yield perm[b * size:(b + 1) * size]


class PKBatches(_PositionedBatches):
    """P identities x K images per rank batch (for triplet/contrastive losses).

    Only identities with at least 2 images take part; one with fewer than K images repeats some.
    """

    def __init__(self, labels: np.ndarray, p: int, k: int, seed: int = 0, rank: int = 0, world: int = 1):
        super().__init__(seed, rank, world)
        labels = np.asarray(labels)
        order = np.argsort(labels, kind="stable")
        ids, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
        self.groups = [order[s:s + c] for s, c in zip(starts, counts) if c >= 2]
        self.p, self.k = p, k
        if len(self) == 0:
            raise DataError(
                f"P x K sampling needs {p * world} identities with 2+ images; the dataset has {len(self.groups)}")

    def __len__(self):
        return len(self.groups) // (self.p * self.world)

    def _global_batches(self):
        rng = self._rng()
        order = rng.permutation(len(self.groups))
        per_batch = self.p * self.world
        for b in range(len(self)):
            batch = []
            for g in order[b * per_batch:(b + 1) * per_batch]:
                members = self.groups[g]
                batch.extend(rng.choice(members, self.k, replace=len(members) < self.k))
            yield np.asarray(batch)
