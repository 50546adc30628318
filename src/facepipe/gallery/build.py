"""`build_gallery`: enrol identity folders into a searchable gallery (the seed's run_generate_data_base.sh).

Per image: detect, pick the main face, align onto the ArcFace template (center crop where there is
no face or its landmarks are implausible; counted as `alignment.fallback`), embed (image + flip,
L2-normalised); per identity a mean template (quality-weighted: `template_weighting`) or all
embeddings; then a FAISS index, an open-set threshold calibrated for a target FAR, a report of
problem images and folders, and manifest.json.
"""

from __future__ import annotations

import json
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from facepipe.config import bounded, choice, to_dict
from facepipe.errors import ConfigError, DataError
from facepipe.gallery.store import (FORMAT_VERSION, WEIGHTINGS, Gallery, check_replaceable, row_weights,
                                    save_replacing)
from facepipe.progress import Progress
from facepipe.run_logger import NullLogger, RunLogger

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass
class GalleryConfig:
    """How identities are enrolled and searched."""

    template: str = choice("mean", ["mean", "all"], help="one mean embedding per identity, or every image")
    template_weighting: str = choice("embedding_norm", list(WEIGHTINGS),
                                     help="weight of each image in its person's mean template: equal, "
                                          "detector confidence, or the embedding's norm before normalising")
    dtype: str = choice("float32", ["float32", "float16"], help="stored embedding precision")
    index: str = choice("flat", ["flat", "ivf", "hnsw"], help="exact inner product, or approximate for large galleries")
    ivf_nlist: int = bounded(0, low=0, help="IVF lists (0: about 4 sqrt(rows))")
    ivf_nprobe: int = bounded(16, low=1, help="IVF lists visited per query")
    hnsw_m: int = bounded(32, low=4, high=128, help="HNSW neighbours per node")
    hnsw_ef_search: int = bounded(64, low=1, help="HNSW candidate list size per query")
    target_far: float = bounded(0.01, low=0.0, high=1.0, low_inclusive=False,
                                help="open-set false alarm rate the unknown threshold is calibrated for")
    calibration_dir: str = ""  # identity folders of people NOT enrolled; empty: leave-identity-out
    no_face: str = choice("skip", ["skip", "center_crop"],
                          help="images where the detector finds no face: leave out, or embed a center crop")
    max_images_per_identity: int = bounded(0, low=0, help="enrol only the first K images (sorted) per identity; 0: all")
    batch_size: int = bounded(64, low=1, help="faces per recognizer forward pass")
    score_threshold: float = bounded(0.5, low=0.0, high=1.0, help="detector confidence for a face")
    center_crop: Optional[float] = bounded(None, low=0.05, high=1.0,
                                             help="center-crop fallback: share of the shorter side "
                                                  "(default: the recognizer's training center_crop)")
    device: str = "cpu"


def normalized_name(name: str) -> str:
    """Names that differ only in case, spacing or Unicode form are the same person to a user."""
    text = unicodedata.normalize("NFKC", name).casefold()
    return "_".join(text.replace("-", " ").replace("_", " ").split())


def scan_identity_tree(data_dir: str | Path, max_images: int = 0) -> tuple[list[tuple[str, list[Path]]], dict]:
    """`[(identity, [image paths])]` sorted by name, and what was odd about the tree.

    The report lists empty identity folders, stray files at the top level, and identity names
    that collide once case/spacing are normalised (all of them are still enrolled, by folder name).
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError("identity folder tree not found (expected DATA/<identity>/<image>.jpg)", path=root)
    identities, empty, stray, skipped = [], [], [], []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file():
            stray.append(entry.name)
            continue
        images = sorted(p for p in entry.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
        if not images:
            empty.append(entry.name)
            continue
        if max_images and len(images) > max_images:
            skipped += [str(p.relative_to(root)) for p in images[max_images:]]
            images = images[:max_images]
        identities.append((entry.name, images))
    groups: dict[str, list[str]] = {}
    for name, _ in identities:
        groups.setdefault(normalized_name(name), []).append(name)
    duplicates = [names for names in groups.values() if len(names) > 1]
    if not identities:
        raise DataError(f"no identity folders with images ({', '.join(IMAGE_EXTS)}) "
                        f"(empty folders: {empty[:5]}, top-level files: {stray[:5]})", path=root)
    report = {"empty_identity_folders": empty, "duplicate_identity_names": duplicates,
              "top_level_files_ignored": stray, "images_beyond_max_per_identity": len(skipped)}
    return identities, report


def input_size_of(recognizer) -> int:
    size = recognizer.input_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def fallback_crop(center_crop: float | None, recognizer) -> float:
    """Without landmarks, crop as the recognizer saw its training faces (its `center_crop`)."""
    if center_crop is not None:
        return float(center_crop)
    return float(getattr(recognizer, "center_crop", 1.0) or 1.0)


def embed_identity_tree(identities: list[tuple[str, list[Path]]], root: Path, aligner, recognizer,
                        batch_size: int = 64, no_face: str = "skip", desc: str = "embedding"):
    """Align and embed every image: `(embeddings (M,D), labels (M,), records)`.

    `records` has one dict per image (enrolled or not): identity, file, status
    (ok | several_faces | no_face | no_detector | unreadable), faces, used_landmarks, fallback,
    box, score, `row` (its embedding row, or None when left out) and, when embedded,
    `embedding_norm` (the feature norm before normalising: a quality signal).
    """
    size = input_size_of(recognizer)
    total = sum(len(images) for _, images in identities)
    dim = int(recognizer.embedding_size)
    chunks, labels, records = [], [], []
    batch, batch_records = [], []

    def flush():
        if batch:
            emb, norms = recognizer.embed(np.stack(batch), norms=True)
            chunks.append(np.asarray(emb, np.float32).reshape(len(batch), dim))
            for rec, norm in zip(batch_records, norms):
                rec["embedding_norm"] = round(float(norm), 4)
            batch.clear()
            batch_records.clear()

    from facepipe.gallery.align import read_image

    with Progress(total, desc, unit="img") as progress:
        for label, (name, images) in enumerate(identities):
            for path in images:
                record = {"identity": name, "file": str(path.relative_to(root)), "row": None}
                try:
                    image = read_image(path)
                except DataError as exc:
                    record.update(status="unreadable", error=str(exc))
                    records.append(record)
                    progress.update(1)
                    continue
                aligned, info = aligner.align(image, size=size)
                record.update(info)
                if info["status"] != "no_face" or no_face == "center_crop":
                    record["row"] = len(labels)
                    labels.append(label)
                    batch.append(aligned)
                    batch_records.append(record)
                    if len(batch) >= batch_size:
                        flush()
                records.append(record)
                progress.update(1)
        flush()
    embeddings = np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)
    return embeddings, np.asarray(labels, np.int32), records


def problem_report(records: list[dict], tree_report: dict) -> dict:
    """Per-image problems (not fatal) plus the folder-level findings."""
    from facepipe.gallery.align import alignment_summary

    by = lambda status: [r["file"] for r in records if r.get("status") == status]  # noqa: E731
    return {
        "images": len(records),
        "enrolled_images": sum(r["row"] is not None for r in records),
        "no_face": by("no_face"), "several_faces": by("several_faces"), "unreadable": by("unreadable"),
        "center_cropped": [r["file"] for r in records if r["row"] is not None and not r.get("used_landmarks")],
        # every image that was aligned or center-cropped, enrolled or not: alignment.* counts
        **alignment_summary(r["fallback"] for r in records if "fallback" in r),
        **tree_report,
    }


def load_models(recognizer_path, detector_path, cfg):
    """The recognizer and the face aligner a gallery is built with."""
    from facepipe.gallery.align import FaceAligner
    from facepipe.recognition.embed import Recognizer

    if recognizer_path is None:
        raise ConfigError("a recognizer model (model.pt) is required")
    recognizer = Recognizer.load(str(recognizer_path), device=cfg.device)
    aligner = FaceAligner(detector_path, score_threshold=cfg.score_threshold,
                          center_crop=fallback_crop(cfg.center_crop, recognizer), device=cfg.device)
    return recognizer, aligner


def enrol(cfg: GalleryConfig, data_dir, recognizer, aligner, desc: str = "enrolling"):
    """Embed an identity tree: names, embeddings, labels, provenance records, problem report."""
    root = Path(data_dir)
    tree, tree_report = scan_identity_tree(root, cfg.max_images_per_identity)
    emb, labels, records = embed_identity_tree(tree, root, aligner, recognizer, cfg.batch_size,
                                               cfg.no_face, desc=desc)
    names = [name for name, _ in tree]
    report = problem_report(records, tree_report)
    # Identities whose every image was left out (no face, unreadable) are not enrolled.
    used = set(labels.tolist())
    report["identities_without_usable_images"] = [n for i, n in enumerate(names) if i not in used]
    if len(used) < len(names):
        keep = [i for i in range(len(names)) if i in used]
        remap = np.full(len(names), -1, np.int64)
        remap[keep] = np.arange(len(keep))
        labels = remap[labels].astype(np.int32)
        names = [names[i] for i in keep]
    return names, emb, labels, records, report


def make_gallery(cfg: GalleryConfig, names: list[str], embeddings: np.ndarray, labels: np.ndarray,
                 records: list[dict], recognizer, aligner, source: str,
                 calibration_embeddings: np.ndarray | None = None):
    """An in-memory gallery (indexed and calibrated) of already embedded identities."""
    meta = {
        "format": FORMAT_VERSION, "recognizer_digest": recognizer.digest,
        "detector_digest": aligner.digest, "embedding_size": int(recognizer.embedding_size),
        "input_size": input_size_of(recognizer), "template": cfg.template,
        "template_weighting": cfg.template_weighting, "dtype": cfg.dtype,
        "index": cfg.index, "ivf_nlist": cfg.ivf_nlist, "ivf_nprobe": cfg.ivf_nprobe,
        "hnsw_m": cfg.hnsw_m, "hnsw_ef_search": cfg.hnsw_ef_search, "target_far": cfg.target_far,
        "alignment": "landmarks" if aligner.detector is not None else "center_crop",
        "config": to_dict(cfg), "source": source,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    calib = None if calibration_embeddings is None else calibration_embeddings.astype(cfg.dtype)
    gallery = Gallery(meta=meta, identities=list(names), image_embeddings=embeddings.astype(cfg.dtype),
                      image_identity=np.asarray(labels, np.int32), images=records, calibration_embeddings=calib,
                      image_weight=row_weights(records, len(embeddings), cfg.template_weighting))
    gallery.reindex()
    return gallery


def gallery_from_tree(cfg: GalleryConfig, data_dir, recognizer, aligner):
    """An in-memory gallery of the identity folders in `data_dir`, and its problem report."""
    names, emb, labels, records, report = enrol(cfg, data_dir, recognizer, aligner)
    if not names:
        raise DataError(f"no identity has a usable face image (no face in {len(report['no_face'])} images, "
                        f"{len(report['unreadable'])} unreadable); check the detector or use no_face=center_crop",
                        path=data_dir)
    calibration_emb = None
    if cfg.calibration_dir:
        _, calibration_emb, _, _, _ = enrol(cfg, cfg.calibration_dir, recognizer, aligner,
                                            desc="calibration split")
    gallery = make_gallery(cfg, names, emb, labels, records, recognizer, aligner, str(data_dir), calibration_emb)
    report.update({"identities": len(names), "rows": gallery.index.size,
                   "threshold": gallery.threshold, "calibration": gallery.calibration})
    return gallery, report


def build_gallery(cfg: GalleryConfig, data_dir, detector_path, recognizer_path, out_dir,
                  logger: RunLogger = NullLogger()) -> dict:
    """Enrol `data_dir` (identity folders) into a gallery at `out_dir`; returns the build report."""
    t0 = time.time()
    out = Path(out_dir)
    check_replaceable(out)  # before the slow part
    recognizer, aligner = load_models(recognizer_path, detector_path, cfg)
    gallery, report = gallery_from_tree(cfg, data_dir, recognizer, aligner)
    report["seconds"] = round(time.time() - t0, 2)
    save_replacing(gallery, out, report)
    metrics = {"gallery.identities": report["identities"], "gallery.images": report["images"],
               "gallery.enrolled_images": report["enrolled_images"],
               "gallery.no_face": len(report["no_face"]), "gallery.several_faces": len(report["several_faces"]),
               **{f"gallery.{k}": v for k, v in report.items() if k.startswith("alignment.") and v is not None}}
    if gallery.threshold is not None:
        metrics["gallery.threshold"] = gallery.threshold
    logger.log_metrics(metrics)
    logger.log_artifact(out / "build_report.json")
    return report


def summary_lines(report: dict) -> list[str]:
    """What a user reads after a build: counts and the problems worth acting on."""
    lines = [f"enrolled {report['identities']} identities from {report['enrolled_images']}/"
             f"{report['images']} images; threshold {report.get('threshold')} "
             f"({report['calibration'].get('split')}, FAR {report['calibration'].get('target_far')})"]
    for key in ("no_face", "several_faces", "unreadable", "empty_identity_folders",
                "identities_without_usable_images", "duplicate_identity_names"):
        items = report.get(key) or []
        if items:
            shown = json.dumps(items[:5], ensure_ascii=False)
            lines.append(f"{key}: {len(items)} {shown}{' ...' if len(items) > 5 else ''}")
    if report.get("alignment.fallback"):
        reasons = {k.rsplit("fallback_", 1)[1]: v for k, v in report.items()
                   if k.startswith("alignment.fallback_") and k != "alignment.fallback_rate"}
        lines.append(f"alignment: {report['alignment.aligned']} faces aligned on landmarks, "
                     f"{report['alignment.fallback']} center-cropped {reasons}")
    if report["calibration"].get("note"):
        lines.append(f"calibration: {report['calibration']['note']}")
    return lines
