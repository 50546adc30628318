"""The pack step: face images (identity folders or a `.lst`) -> InsightFace RecordIO dataset.

`pack(PackConfig(...), src, out_dir)` writes `PREFIX.rec/.idx/.lst`, `property`,
`pack_report.json` and, last, `manifest.json`. Images are decoded, center-cropped (or aligned
with a detector) and resized to SIZE x SIZE, JPEG-encoded in worker processes; the parent writes
them in source order, so the same input gives byte-identical files for any worker count.
JPEGs that are already SIZE x SIZE colour pass through unchanged.

Bad files are skipped and listed in the report with the reason (not an image, truncated JPEG,
unreadable); identities left with fewer than `min_images` usable images are dropped and listed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facepipe.config import bounded
from facepipe.errors import ConfigError, DataError
from facepipe.manifest import MANIFEST
from facepipe.progress import Progress
from facepipe.tracking import NullLogger, RunLogger

REPORT = "pack_report.json"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


@dataclass
class PackConfig:
    prefix: str = "train"
    size: int = bounded(112, low=8, high=4096, help="output images are SIZE x SIZE")
    workers: int = bounded(0, low=0, help="worker processes; 0 = all cores")
    quality: int = bounded(95, low=1, high=100, help="JPEG quality")
    min_images: int = bounded(1, low=1, help="drop identities with fewer usable images")
    detector: str | None = None  # detector model.pt: align faces with landmarks instead of center-crop

    def validate(self) -> None:
        if not self.prefix or "/" in self.prefix or "\\" in self.prefix or self.prefix.startswith("."):
            raise ConfigError(f"PackConfig.prefix: {self.prefix!r} is not a file name prefix "
                              f"(expected e.g. 'train', without slashes)")
        if self.detector is not None and not Path(self.detector).is_file():
            raise ConfigError(f"PackConfig.detector: {self.detector!r} is not a file "
                              f"(expected a detector model.pt)")


# ---------------------------------------------------------------------------------------------
# JPEG structure, read without decoding
# ---------------------------------------------------------------------------------------------

_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_info(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, components) from a JPEG's frame header, or None if not a JPEG."""
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:
            i += 2
            continue
        if marker in _SOF_MARKERS:
            if i + 10 > n:
                return None
            h = int.from_bytes(data[i + 5:i + 7], "big")
            w = int.from_bytes(data[i + 7:i + 9], "big")
            return w, h, data[i + 9]
        if marker in (0xDA, 0xD9):  # scan or end before any frame header
            return None
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def jpeg_complete(data: bytes) -> bool:
    """True when an end-of-image marker follows the last scan (a truncated file has none).

    OpenCV decodes a truncated JPEG without an error (grey bottom rows), so this is the check
    that keeps cut-off downloads out of a dataset.
    """
    return data.rfind(b"\xff\xd9") > data.rfind(b"\xff\xda") >= 0


# ---------------------------------------------------------------------------------------------
# Per-image work (runs in the worker processes)
# ---------------------------------------------------------------------------------------------

_ALIGNER = None


def _init_worker(detector: str | None, in_pool: bool = True) -> None:
    global _ALIGNER
    if in_pool:
        import cv2

        cv2.setNumThreads(1)  # parallelism comes from the processes
    _ALIGNER = _load_aligner(detector) if detector else None


def _load_aligner(detector: str):
    try:
        from facepipe.gallery.align import FaceAligner
    except ImportError as exc:
        raise ConfigError(f"--detector needs facepipe.gallery.align.FaceAligner, which is not "
                          f"available: {exc}") from None
    return FaceAligner(detector)


def center_crop_resize(image: np.ndarray, size: int) -> np.ndarray:
    import cv2

    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = image[top:top + side, left:left + side]
    if side == size:
        return np.ascontiguousarray(square)
    # INTER_AREA only where it matters (>= 2x): for smaller ratios it costs 4x LINEAR here.
    interp = cv2.INTER_AREA if side >= 2 * size else cv2.INTER_LINEAR if side > size else cv2.INTER_CUBIC
    return cv2.resize(square, (size, size), interpolation=interp)


def process_image(path: str, size: int, quality: int) -> tuple:
    """Read, check and convert one source image.

    Returns ("ok", jpeg_bytes, sha256, passthrough, (used_landmarks, aligner status) | None)
    or ("skip", reason, sha256 | None).
    """
    import cv2

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        return ("skip", f"unreadable: {exc.strerror or exc.__class__.__name__}", None)
    digest = hashlib.sha256(data).hexdigest()
    if not data:
        return ("skip", "empty file", digest)
    info = jpeg_info(data)
    if data[:2] == b"\xff\xd8":
        if info is None:
            return ("skip", "corrupt JPEG: no frame header (expected SOF marker before the scan)", digest)
        if not jpeg_complete(data):
            return ("skip", "truncated JPEG: no end-of-image marker after the last scan", digest)
    if _ALIGNER is None and info is not None and info[0] == size and info[1] == size and info[2] == 3:
        return ("ok", data, digest, True, None)
    flags = cv2.IMREAD_COLOR
    if info is not None and _ALIGNER is None:
        shorter = min(info[0], info[1])
        # libjpeg's DCT scaling decodes at 1/2 or 1/4 for a fraction of the cost.
        if shorter >= 4 * size:
            flags = cv2.IMREAD_REDUCED_COLOR_4
        elif shorter >= 2 * size:
            flags = cv2.IMREAD_REDUCED_COLOR_2
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None:
        return ("skip", "not a decodable image (expected JPEG, PNG, BMP, WebP or TIFF)", digest)
    used_landmarks = None
    if _ALIGNER is not None:
        aligned, details = _ALIGNER.align(image, size)
        used_landmarks = (bool(_landmarks_used(details)),
                          details.get("status") if isinstance(details, dict) else None)
        face = aligned
        if face.shape[:2] != (size, size):
            face = center_crop_resize(face, size)
    else:
        face = center_crop_resize(image, size)
    ok, buf = cv2.imencode(".jpg", face, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        return ("skip", "JPEG encoding failed", digest)
    return ("ok", buf.tobytes(), digest, False, used_landmarks)


def _landmarks_used(details) -> bool:
    if isinstance(details, dict):
        for key in ("used_landmarks", "landmarks_used"):
            if key in details:
                return bool(details[key])
        return details.get("landmarks") is not None
    return bool(details)


def _work(task):
    index, path, size, quality = task
    return index, process_image(path, size, quality)


# ---------------------------------------------------------------------------------------------
# Listing the source
# ---------------------------------------------------------------------------------------------

@dataclass
class _Identity:
    name: str
    files: list[tuple[str, str]]  # (name in the .lst, path to read)


def list_identity_tree(src: Path, skipped: list[dict]) -> list[_Identity]:
    """SRC/<identity>/<image> sorted by name; stray files and nested folders are reported."""
    identities = []
    for entry in sorted(os.scandir(src), key=lambda e: e.name):
        if entry.name.startswith(".") or entry.name == MANIFEST:
            continue
        if not entry.is_dir():
            skipped.append({"file": entry.name, "reason": "not inside an identity folder"})
            continue
        files = []
        for item in sorted(os.scandir(entry.path), key=lambda e: e.name):
            rel = f"{entry.name}/{item.name}"
            if item.name.startswith("."):
                continue
            if item.is_dir():
                skipped.append({"file": rel + "/", "reason": "nested folder (expected SRC/<identity>/<image>)"})
                continue
            files.append((rel, item.path))
        identities.append(_Identity(entry.name, files))
    return identities


def list_lst(lst_path: Path) -> tuple[list[_Identity], str]:
    from facepipe.data.insightface import read_lst, relative_to_lst

    fmt, entries = read_lst(lst_path)
    by_label: dict[int, list[tuple[str, Path]]] = {}
    for e in entries:
        by_label.setdefault(e.label, []).append((e.path, str(relative_to_lst(lst_path, e.path))))
    return [_Identity(str(label), by_label[label]) for label in sorted(by_label)], fmt


# ---------------------------------------------------------------------------------------------
# The step
# ---------------------------------------------------------------------------------------------

def resolve_workers(workers: int) -> int:
    if workers > 0:
        return workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def pack(cfg: PackConfig, src: str | Path, out_dir: str | Path, logger: RunLogger = NullLogger(),
         progress: bool = True) -> dict:
    """Pack `src` (identity tree or .lst) into an InsightFace RecordIO dataset in `out_dir`."""
    from facepipe.data.insightface import InsightFaceWriter, write_lst, write_property
    from facepipe.manifest import write_manifest

    cfg.validate()
    src, out_dir = Path(src), Path(out_dir)
    if not src.exists():
        raise DataError("source not found (expected an identity-folder tree or a .lst file)", path=src)
    skipped: list[dict] = []
    if src.is_dir():
        identities, source_kind = list_identity_tree(src, skipped), "identity_tree"
    else:
        identities, lst_format = list_lst(src)
        source_kind = f"lst ({lst_format})"
    tasks = [(i, p, cfg.size, cfg.quality)
             for i, (_, p) in enumerate(f for ident in identities for f in ident.files)]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)  # the folder is incomplete until we finish
    logger.log_params({k: v for k, v in dataclasses.asdict(cfg).items()})

    workers = min(resolve_workers(cfg.workers), max(1, len(tasks)))
    t0 = time.monotonic()
    report = {
        "source": source_kind,
        "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "workers"},
        "images_seen": len(tasks),
    }
    packed_lst: list[tuple[str, int]] = []
    dropped: list[dict] = []
    digests: dict[str, list[tuple[str, str]]] = {}
    alignment: list[dict] = []
    passthrough = 0

    writer = InsightFaceWriter(out_dir, cfg.prefix)
    bar = Progress(len(tasks), "pack", unit="img", enabled=progress)
    try:
        results = _run(tasks, workers, cfg.detector)
        for ident in identities:
            usable = []
            for rel, _ in ident.files:
                _, result = next(results)
                bar.update(1)
                digest = result[2]
                if digest is not None:
                    digests.setdefault(digest, []).append((rel, ident.name))
                if result[0] == "skip":
                    skipped.append({"file": rel, "reason": result[1]})
                else:
                    usable.append((rel, result))
            if len(usable) < cfg.min_images:
                reason = ("empty folder" if not ident.files else
                          f"{len(usable)} usable image(s), fewer than min_images={cfg.min_images}")
                dropped.append({"identity": ident.name, "images": len(usable), "reason": reason})
                continue
            class_id = writer.num_classes
            for rel, (_, jpeg, _, was_passthrough, used_landmarks) in usable:
                writer.add(jpeg, class_id)
                packed_lst.append((rel, class_id))
                passthrough += bool(was_passthrough)
                if cfg.detector:
                    landmarks, status = used_landmarks
                    alignment.append({"file": rel, "landmarks": landmarks, "status": status})
    finally:
        bar.close()
        writer.close()

    if writer.num_images == 0:
        (out_dir / f"{cfg.prefix}.rec").unlink(missing_ok=True)
        (out_dir / f"{cfg.prefix}.idx").unlink(missing_ok=True)
        reasons = sorted({s["reason"] for s in skipped} | {d["reason"] for d in dropped})
        raise DataError(f"no images packed: {len(tasks)} file(s) seen, {len(skipped)} skipped, "
                        f"{len(dropped)} identities dropped ({'; '.join(reasons[:3]) or 'nothing found'})",
                        path=src)

    write_lst(out_dir / f"{cfg.prefix}.lst", packed_lst)
    write_property(out_dir / "property", writer.num_classes, cfg.size, cfg.size)
    duplicates = [{"sha256": d, "files": [f for f, _ in entries],
                   "identities": sorted({name for _, name in entries})}
                  for d, entries in sorted(digests.items()) if len(entries) > 1]
    report.update({
        "images_packed": writer.num_images,
        "identities_packed": writer.num_classes,
        "images_passed_through": passthrough,
        "images_reencoded": writer.num_images - passthrough,
        "skipped_count": len(skipped),
        "skipped": skipped,
        "identities_dropped_count": len(dropped),
        "identities_dropped": dropped,
        "duplicate_groups": len(duplicates),
        "duplicate_files": sum(len(d["files"]) - 1 for d in duplicates),
        "duplicates_across_identities": sum(len(d["identities"]) > 1 for d in duplicates),
        "duplicates": duplicates,
    })
    if cfg.detector:
        report["aligned_with_landmarks"] = sum(a["landmarks"] for a in alignment)
        report["aligned_without_landmarks"] = len(alignment) - report["aligned_with_landmarks"]
        report["alignment"] = alignment
    # The report file holds no timings or paths of this machine, so reruns are byte-identical.
    (out_dir / REPORT).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    write_manifest(out_dir, kind="recordio", extra={"prefix": cfg.prefix, "num_images": writer.num_images,
                                                    "num_classes": writer.num_classes})

    seconds = time.monotonic() - t0
    metrics = {"images_packed": writer.num_images, "identities_packed": writer.num_classes,
               "skipped_count": len(skipped), "identities_dropped_count": len(dropped),
               "duplicate_files": report["duplicate_files"], "images_passed_through": passthrough,
               "seconds": round(seconds, 3), "images_per_s": round(len(tasks) / max(seconds, 1e-9), 1)}
    logger.log_metrics(metrics)
    logger.log_artifact(out_dir / REPORT)
    return {**report, **metrics, "workers": workers}


def _run(tasks, workers: int, detector: str | None):
    """Yield (index, result) in task order, from a process pool or in this process."""
    if workers <= 1 or len(tasks) < 2:
        _init_worker(detector, in_pool=False)
        try:
            for task in tasks:
                yield _work(task)
        finally:
            _reset_worker()
        return
    if detector:
        _load_aligner(detector)  # fail here with a clear error, not in a pool initializer (it would respawn)
    ctx = multiprocessing.get_context("fork" if hasattr(os, "fork") else "spawn")
    chunk = max(1, min(64, len(tasks) // (workers * 8)))
    with ctx.Pool(workers, initializer=_init_worker, initargs=(detector,)) as pool:
        yield from pool.imap(_work, tasks, chunksize=chunk)


def _reset_worker() -> None:
    global _ALIGNER
    _ALIGNER = None
