"""The online recognizer behind `facepipe serve` and the `facepipe-recognize` MLflow model: images in, named faces out.

Both answer through `OnlineRecognizer.answer`, so the service and the MLflow model give the same
JSON for the same image. Gallery edits go through `facepipe.gallery.edit` (a new gallery folder
swapped in whole) and the service then searches the new version.
"""

from __future__ import annotations

import json
import re
import tempfile
import threading
from pathlib import Path

import numpy as np

from facepipe.errors import DataError, FacepipeError
from facepipe.gallery.recognize import UNKNOWN, Matcher, RecognizeConfig
from facepipe.manifest import sha256_file

# What a request body may be: JPEG or PNG, told by its first bytes (not by a client's header).
MAGIC = {b"\xff\xd8\xff": "jpg", b"\x89PNG\r\n\x1a\n": "png"}
MAX_PIXELS = 40_000_000  # 40 MP: any camera photo; a decoded image of this size is 120 MB
# An enrolled name becomes a folder name in the gallery's edit history: no paths, no dot files.
NAME = re.compile(r"^[\w][\w .@+-]{0,127}$")


class RequestError(FacepipeError):
    """A request the service refuses, with the HTTP status that says why (4xx)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR or a JPEG's start-of-frame, read before decoding."""
    if data.startswith(b"\x89PNG") and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    i = 2
    while i + 9 < len(data) and data[i] == 0xFF:
        marker, length = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn: height, width
            return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
        i += 2 + length
    return None


def decode_image(data: bytes) -> np.ndarray:
    """A BGR image from a JPEG/PNG body, or a RequestError (400 empty, 415 other type, 413 over
    MAX_PIXELS, 422 broken)."""
    import cv2

    if not data:
        raise RequestError(400, "empty body: send a JPEG or PNG image")
    if not any(data.startswith(m) for m in MAGIC):
        raise RequestError(415, "not a JPEG or PNG image")
    size = declared_size(data)
    if size and size[0] * size[1] > MAX_PIXELS:
        # A small compressed body can declare gigapixels: refuse before allocating them.
        raise RequestError(413, f"image of {size[0]}x{size[1]} pixels is over the limit of {MAX_PIXELS} pixels")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise RequestError(422, "the image could not be decoded (truncated or corrupt)")
    return image


def face_answer(face: dict) -> dict:
    """One face as the service answers it (the `recognize` record, renamed for clients)."""
    return {"box": face["box"], "score": face["detector_score"], "landmarks": face["landmarks"],
            "identity": None if face["identity"] == UNKNOWN else face["identity"],
            "similarity": face["similarity"], "candidates": face["top_k"]}


class OnlineRecognizer:
    """Detector + recognizer + gallery loaded once; answers batches of images and edits the gallery."""

    def __init__(self, gallery_dir, detector_path, recognizer_path, cfg: RecognizeConfig | None = None):
        self.gallery_dir = Path(gallery_dir)
        self.matcher = Matcher(cfg or RecognizeConfig(), gallery_dir, detector_path, recognizer_path)
        self.gallery_digest = sha256_file(self.gallery_dir / "manifest.json")
        self._edits = threading.Lock()

    def model_info(self) -> dict:
        m = self.matcher
        return {"detector": m.aligner.digest, "recognizer": m.recognizer.digest, "gallery": self.gallery_digest}

    def answer(self, requests: list[tuple[np.ndarray, int | None, float | None]]) -> list[dict]:
        """`[(image, top_k, threshold)]` -> one `{"faces", "model"}` per image; detection and
        embedding run once for the whole batch (once per distinct top_k/threshold for the search)."""
        model = self.model_info()
        found = self.matcher.find_faces([image for image, _, _ in requests])
        groups: dict[tuple, list[int]] = {}
        for i, (_, top_k, threshold) in enumerate(requests):
            groups.setdefault((top_k, threshold), []).append(i)
        for (top_k, threshold), members in groups.items():
            pairs = [pair for i in members for pair in found[i]]
            self.matcher.name_faces([info for _, info in pairs], [aligned for aligned, _ in pairs], top_k, threshold)
        return [{"faces": [face_answer(info) for _, info in faces], "model": model} for faces in found]

    def gallery_summary(self) -> dict:
        g = self.matcher.gallery
        return {"identities": list(g.identities), "size": len(g.identities), "images": int(len(g.image_embeddings)),
                "threshold": self.matcher.threshold(), "digest": self.gallery_digest}

    def _reload(self) -> None:
        from facepipe.gallery.store import Gallery

        gallery = Gallery.load(self.gallery_dir, verify=True)
        self.matcher.gallery, self.gallery_digest = gallery, sha256_file(self.gallery_dir / "manifest.json")

    def enrol(self, name: str, images: list[bytes], replace: bool = False) -> dict:
        """Enrol `name` from image bodies into a new gallery version (`gallery.edit.add_identities`)."""
        from facepipe.gallery.edit import add_identities

        if not NAME.match(name):
            raise RequestError(422, "identity names are 1-128 letters, digits, spaces or . _ @ + - "
                                    "(not starting with a dot)")
        if not images:
            raise RequestError(400, "no images: send one JPEG/PNG body or multipart files")
        for data in images:
            decode_image(data)
        with self._edits, tempfile.TemporaryDirectory(prefix="facepipe-enrol-") as tmp:
            if name in self.matcher.gallery.identities and not replace:
                raise RequestError(409, "this identity is already enrolled; pass replace=true to re-enrol it")
            folder = Path(tmp) / name
            folder.mkdir()
            for i, data in enumerate(images):
                suffix = next(kind for magic, kind in MAGIC.items() if data.startswith(magic))
                (folder / f"{i:04d}.{suffix}").write_bytes(data)
            try:
                change = add_identities(self.gallery_dir, tmp, None, replace=replace,
                                        models=(self.matcher.recognizer, self.matcher.aligner))
            except DataError as exc:
                raise RequestError(422, str(exc).replace(tmp, "<upload>")) from None
            self._reload()
        enrolled = sum(r["identity"] == name and r["row"] is not None for r in self.matcher.gallery.images)
        return {"identity": name, "enrolled_images": enrolled, "images": len(images),
                "threshold": change["threshold"], "gallery": self.gallery_digest}

    def remove(self, name: str) -> dict:
        """Remove `name` (`gallery.edit.remove_identities`); says which kept versions still hold it."""
        from facepipe.gallery.edit import remove_identities

        with self._edits:
            if name not in self.matcher.gallery.identities:
                raise RequestError(404, "this identity is not enrolled")
            try:
                remove_identities(self.gallery_dir, [name])
            except DataError as exc:
                raise RequestError(409, str(exc)) from None
            self._reload()
        return {"identity": name, "removed": True, "gallery": self.gallery_digest,
                "versions_still_holding": self.versions_holding(name)}

    def versions_holding(self, name: str) -> list[str]:
        """The gallery versions on disk (current, and a `.old`/`.partial` an interrupted swap left)
        whose identities or per-image records still name `name`."""
        held = []
        for folder in (self.gallery_dir, *(self.gallery_dir.with_name(self.gallery_dir.name + s)
                                           for s in (".old", ".partial"))):
            for file in ("identities.json", "images.json"):
                path = folder / file
                if path.is_file() and _names(json.loads(path.read_text())) & {name}:
                    held.append(str(folder))
                    break
        return held


def _names(rows) -> set[str]:
    return {r if isinstance(r, str) else r.get("identity") for r in rows}
