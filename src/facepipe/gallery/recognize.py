"""`recognize`: name every face in a folder of photos against a gallery (the seed's run_face_recognition.sh).

Detect every face, align, embed in batches, search the gallery's top-k identities by cosine
similarity, and call a face `unknown` when its best score is under the threshold (by default the
one calibrated when the gallery was built). Writes results.json, results.csv, annotated images and
manifest.json. Refuses a gallery built by another recognizer or whose files fail their checksums.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from facepipe.config import bounded, to_dict
from facepipe.errors import ConfigError, DataError
from facepipe.gallery.build import IMAGE_EXTS, fallback_crop, input_size_of
from facepipe.manifest import write_manifest
from facepipe.progress import Progress
from facepipe.run_logger import NullLogger, RunLogger

UNKNOWN = "unknown"


@dataclass
class RecognizeConfig:
    """How faces are matched against the gallery."""

    top_k: int = bounded(5, low=1, high=1000, help="gallery identities listed per face")
    threshold: Optional[float] = bounded(None, low=-1.0, high=1.0,
                                         help="similarity for a named match; default: the gallery's calibrated one")
    batch_size: int = bounded(64, low=1, help="faces per recognizer forward pass")
    score_threshold: float = bounded(0.5, low=0.0, high=1.0, help="detector confidence for a face")
    nms_threshold: float = bounded(0.4, low=0.0, high=1.0)
    annotate: bool = True
    center_crop: Optional[float] = bounded(None, low=0.05, high=1.0,
                                             help="no-detector fallback: center-crop share (default: the "
                                                  "recognizer's training center_crop)")
    device: str = "cpu"


def list_images(data: Path) -> list[Path]:
    if data.is_file():
        return [data]
    if not data.is_dir():
        raise DataError("no such image file or folder", path=data)
    images = sorted(p for p in data.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if not images:
        raise DataError(f"no images ({', '.join(IMAGE_EXTS)}) in the folder", path=data)
    return images


def _label_colour(identity: str) -> tuple[int, int, int]:
    if identity == UNKNOWN:
        return (0, 0, 255)
    return (0, 200, 0)


def annotate(image: np.ndarray, faces: list[dict]) -> np.ndarray:
    """Boxes and `name similarity` labels drawn on a copy of the image."""
    out = image.copy()
    h, w = out.shape[:2]
    scale = max(0.35, min(w, h) / 500)
    for face in faces:
        colour = _label_colour(face["identity"])
        if face.get("box"):
            x1, y1, x2, y2 = (int(round(v)) for v in face["box"])
        else:  # center-crop fallback: the whole image is the face
            x1, y1, x2, y2 = 1, 1, w - 2, h - 2
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, max(1, int(2 * scale)))
        text = f"{face['identity']} {face['similarity']:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        ty = y1 - 3 if y1 - th - base - 3 >= 0 else min(h - 1, y2 + th + 3)
        cv2.rectangle(out, (x1, ty - th - 2), (x1 + tw + 2, ty + base), colour, -1)
        cv2.putText(out, text, (x1 + 1, ty - 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return out


class Matcher:
    """The online half, loaded once: aligner (detector), recognizer, gallery and threshold.

    `recognize` (a folder of photos) and `facepipe serve` (HTTP requests) find and name faces
    through it, so both give the same answer for the same image.
    """

    def __init__(self, cfg: RecognizeConfig, gallery_dir, detector_path, recognizer_path):
        from facepipe.gallery.align import FaceAligner
        from facepipe.gallery.store import Gallery
        from facepipe.recognition.embed import Recognizer

        self.cfg = cfg
        self.gallery = Gallery.load(gallery_dir, verify=True)
        self.recognizer = Recognizer.load(str(recognizer_path), device=cfg.device)
        self.gallery.check_recognizer(self.recognizer.digest, self.recognizer.embedding_size, recognizer_path)
        if self.threshold() is None:
            raise ConfigError("the gallery has no calibrated threshold (it was built from a single identity); "
                              "set one with --set threshold=0.4")
        self.aligner = FaceAligner(detector_path, score_threshold=cfg.score_threshold,
                                   nms_threshold=cfg.nms_threshold,
                                   center_crop=fallback_crop(cfg.center_crop, self.recognizer), device=cfg.device)
        self.size = input_size_of(self.recognizer)

    def threshold(self, override: float | None = None) -> float | None:
        """The request's threshold, else the config's, else the (current) gallery's calibrated one."""
        for value in (override, self.cfg.threshold, self.gallery.threshold):
            if value is not None:
                return float(value)
        return None

    def find_faces(self, images: list[np.ndarray]) -> list[list[tuple[np.ndarray, dict]]]:
        """Every face of each image as `(aligned, face record)`, detected in one batch."""
        found = self.aligner.align_all_batch(images, self.size)
        return [[(aligned, {"box": info["box"], "detector_score": info["score"], "landmarks": info["landmarks"],
                            "alignment": "landmarks" if info["used_landmarks"] else "center_crop",
                            "fallback": info["fallback"]})
                 for aligned, info in faces] for faces in found]

    def name_faces(self, faces: list[dict], aligned: list[np.ndarray], top_k: int | None = None,
                   threshold: float | None = None) -> None:
        """Embed the aligned faces in one pass and fill in each record's identity, similarity, top_k."""
        if not faces:
            return
        gallery, threshold = self.gallery, self.threshold(threshold)  # one gallery version per call
        if threshold is None:
            raise ConfigError("the gallery has no calibrated threshold (one identity left); pass a threshold")
        emb = self.recognizer.embed(np.stack(aligned))
        scores, ids = gallery.search(emb, top_k or self.cfg.top_k)
        for face, row_s, row_i in zip(faces, scores, ids):
            top = [{"identity": gallery.identities[i], "similarity": round(float(s), 4)}
                   for s, i in zip(row_s, row_i) if i >= 0]
            best = top[0]["similarity"] if top else -1.0
            face["identity"] = top[0]["identity"] if top and best >= threshold else UNKNOWN
            face["similarity"] = best
            face["top_k"] = top


def recognize(cfg: RecognizeConfig, data_dir, gallery_dir, detector_path, recognizer_path, out_dir,
              logger: RunLogger = NullLogger()) -> dict:
    """Recognise every face in `data_dir` (a folder or one image); returns the summary."""
    from facepipe.gallery.align import alignment_summary, read_image

    t0 = time.time()
    data = Path(data_dir)
    out = Path(out_dir)
    images = list_images(data)
    root = data if data.is_dir() else data.parent
    matcher = Matcher(cfg, gallery_dir, detector_path, recognizer_path)
    gallery, threshold = matcher.gallery, matcher.threshold()
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)
    results: list[dict] = []
    pending: list[tuple[dict, np.ndarray, list]] = []  # (image result, image, aligned faces)

    def resolve() -> None:
        matcher.name_faces([f for r, _, _ in pending for f in r["faces"]], [a for _, _, al in pending for a in al])
        for result, image, _ in pending:
            if cfg.annotate:
                target = out / "annotated" / Path(result["file"]).with_suffix(".jpg")
                target.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(target), annotate(image, result["faces"]), [cv2.IMWRITE_JPEG_QUALITY, 90])
            results.append(result)
        pending.clear()

    with Progress(len(images), "recognizing", unit="img") as progress:
        for path in images:
            result = {"file": str(path.relative_to(root)), "faces": []}
            try:
                image = read_image(path)
            except DataError as exc:
                result["error"] = str(exc)
                results.append(result)
                progress.update(1)
                continue
            result["height"], result["width"] = image.shape[:2]
            found = matcher.find_faces([image])[0]
            result["faces"] = [info for _, info in found]
            pending.append((result, image, [aligned for aligned, _ in found]))
            if sum(len(a) for _, _, a in pending) >= cfg.batch_size:
                resolve()
            progress.update(1, faces=sum(len(r["faces"]) for r in results))
        resolve()
    bad = [r for r in results if "error" in r]
    if bad and len(bad) == len(results):  # a result of nothing but errors is no result
        raise DataError(f"none of the {len(bad)} images could be read (first: {bad[0]['file']}: {bad[0]['error']})",
                        path=data_dir)

    faces = [f for r in results for f in r["faces"]]
    named = [f["identity"] for f in faces if f["identity"] != UNKNOWN]
    summary = {
        "images": len(results), "faces": len(faces), "recognized": len(named),
        "unknown": len(faces) - len(named),
        "images_without_faces": [r["file"] for r in results if not r["faces"] and "error" not in r],
        "unreadable": [r["file"] for r in results if "error" in r],
        "identities_seen": {n: named.count(n) for n in sorted(set(named))},
        "threshold": threshold, "threshold_source": "config" if cfg.threshold is not None else "gallery",
        **{f"recognize.{k}": v for k, v in alignment_summary(f["fallback"] for f in faces).items()},
        "gallery": str(gallery_dir), "recognizer_digest": matcher.recognizer.digest,
        "detector_digest": matcher.aligner.digest, "seconds": round(time.time() - t0, 2),
    }
    (out / "results.json").write_text(json.dumps({"summary": summary, "config": to_dict(cfg),
                                                  "images": results}, indent=1, ensure_ascii=False))
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "face", "x1", "y1", "x2", "y2", "detector_score", "alignment",
                         "identity", "similarity", "top_k"])
        for r in results:
            for j, face in enumerate(r["faces"]):
                box = face["box"] or ["", "", "", ""]
                top = ";".join(f"{t['identity']}:{t['similarity']:.4f}" for t in face["top_k"])
                writer.writerow([r["file"], j, *box, face["detector_score"] if face["detector_score"] is not None else "",
                                 face["alignment"], face["identity"], f"{face['similarity']:.4f}", top])
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    write_manifest(out, "recognize", extra={"gallery_recognizer_digest": gallery.meta["recognizer_digest"]})
    logger.log_metrics({"recognize.images": summary["images"], "recognize.faces": summary["faces"],
                        "recognize.recognized": summary["recognized"], "recognize.unknown": summary["unknown"],
                        **{k: v for k, v in summary.items() if k.startswith("recognize.alignment.") and v is not None}})
    return summary
