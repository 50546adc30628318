"""Verification pair lists: LFW `pairs.txt` with an image folder, and InsightFace `.bin` files
(a pickle of JPEG bytes and an is-same list), read without MXNet, into one `VerificationSet`.

LFW `pairs.txt`: a header `FOLDS<TAB>N` (or just `N`: one fold), then per fold N same-person
lines `name<TAB>i<TAB>j` and N different-person lines `name1<TAB>i<TAB>name2<TAB>j`; image i of a
person is `IMAGES/name/name_{i:04d}.jpg`. InsightFace `.bin`: images 2k and 2k+1 form pair k, and
the 10 folds are 10 contiguous blocks, as in insightface's verification code.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from facepipe.errors import DataError


@dataclass(frozen=True)
class Pair:
    name1: str
    image1: int
    name2: str
    image2: int
    same: bool
    fold: int
    line: int


@dataclass
class VerificationSet:
    """Faces (uint8 BGR, N x S x S x 3) and pairs as index arrays into them."""

    faces: np.ndarray
    left: np.ndarray
    right: np.ndarray
    same: np.ndarray
    folds: np.ndarray


def read_lfw_pairs(path: str | Path) -> list[Pair]:
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise DataError("pairs file not found", path=path) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"not a text pairs file ({exc.reason})", path=path) from None
    if not lines or not lines[0].strip():
        raise DataError("empty pairs file; expected a header 'FOLDS<TAB>PAIRS_PER_FOLD'", path=path, line=1)
    head = lines[0].split()
    try:
        folds, per_fold = (1, int(head[0])) if len(head) == 1 else (int(head[0]), int(head[1]))
    except ValueError:
        raise DataError(f"header {lines[0]!r}: expected 'FOLDS<TAB>PAIRS_PER_FOLD' as integers",
                        path=path, line=1) from None
    if len(head) > 2 or folds < 1 or per_fold < 1:
        raise DataError(f"header {lines[0]!r}: expected 'FOLDS<TAB>PAIRS_PER_FOLD'", path=path, line=1)
    body = [(n, ln) for n, ln in enumerate(lines[1:], start=2) if ln.strip()]
    expected = folds * 2 * per_fold
    if len(body) != expected:
        raise DataError(f"header promises {folds} folds x {2 * per_fold} pairs = {expected} lines, "
                        f"found {len(body)}", path=path, line=1)
    pairs = []
    for k, (lineno, text) in enumerate(body):
        fold, within = divmod(k, 2 * per_fold)
        same = within < per_fold
        f = text.split()
        try:
            if same and len(f) == 3:
                pair = Pair(f[0], int(f[1]), f[0], int(f[2]), True, fold, lineno)
            elif not same and len(f) == 4:
                pair = Pair(f[0], int(f[1]), f[2], int(f[3]), False, fold, lineno)
            else:
                want = "name<TAB>i<TAB>j (same person)" if same else "name1<TAB>i<TAB>name2<TAB>j (different people)"
                raise DataError(f"{text!r}: expected {want} at this position of fold {fold + 1}",
                                path=path, line=lineno)
        except ValueError:
            raise DataError(f"{text!r}: image numbers must be integers", path=path, line=lineno) from None
        if pair.image1 < 1 or pair.image2 < 1:
            raise DataError(f"{text!r}: image numbers start at 1", path=path, line=lineno)
        pairs.append(pair)
    return pairs


def lfw_image_path(images_dir: str | Path, name: str, number: int) -> Path:
    return Path(images_dir) / name / f"{name}_{number:04d}.jpg"


class _BinUnpickler(pickle.Unpickler):
    """Only plain containers, bytes and numpy arrays: a .bin from the internet cannot run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("builtins", "bytearray"),
               ("_codecs", "encode"), ("builtins", "bool")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a verification .bin")


def read_insightface_bin(path: str | Path) -> tuple[list[bytes], np.ndarray]:
    """(encoded images, is-same per pair) from an InsightFace verification .bin."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError("verification .bin not found", path=path) from None
    try:
        bins, issame = _BinUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # any unpickling failure means the file is not a .bin we can use
        raise DataError(f"not an InsightFace verification .bin (pickle of (images, issame)): {exc}",
                        path=path) from None
    images = [bytes(b.tobytes() if isinstance(b, np.ndarray) else b) for b in bins]
    issame = np.asarray(list(issame), dtype=bool)
    if len(images) != 2 * len(issame):
        raise DataError(f"{len(images)} images for {len(issame)} pairs; expected 2 images per pair", path=path)
    return images, issame


def _decode(data: bytes, where: str) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError("cannot decode the image", path=where)
    return image


def load_verification_set(pairs_path: str | Path, images_dir: str | Path | None,
                          prepare: Callable[[np.ndarray], np.ndarray]) -> VerificationSet:
    """Read a pairs file (.bin, or LFW pairs.txt with `images_dir`) and prepare each distinct face once.

    `prepare(image_bgr) -> uint8 (S, S, 3)`: center-crop and resize, or detect and align.
    """
    pairs_path = Path(pairs_path)
    if pairs_path.suffix == ".bin":
        images, issame = read_insightface_bin(pairs_path)
        faces = np.stack([prepare(_decode(b, f"{pairs_path} image {i}")) for i, b in enumerate(images)])
        n = len(issame)
        return VerificationSet(faces, np.arange(0, 2 * n, 2), np.arange(1, 2 * n, 2), issame,
                               (np.arange(n) * 10) // max(n, 1))
    if images_dir is None:
        images_dir = pairs_path.parent / "images"
    pairs = read_lfw_pairs(pairs_path)
    index: dict[Path, int] = {}
    left, right = [], []
    for pair in pairs:
        for name, number, side in ((pair.name1, pair.image1, left), (pair.name2, pair.image2, right)):
            p = lfw_image_path(images_dir, name, number)
            if p not in index:
                if not p.is_file():
                    raise DataError(f"image {p} of this pair does not exist", path=pairs_path, line=pair.line)
                index[p] = len(index)
            side.append(index[p])
    faces = np.stack([prepare(_decode(p.read_bytes(), str(p))) for p in index])
    return VerificationSet(faces, np.asarray(left), np.asarray(right),
                           np.asarray([p.same for p in pairs]), np.asarray([p.fold for p in pairs]))
