"""The pack step: face images (identity folders or a `.lst`) -> InsightFace RecordIO dataset.

`pack(PackConfig(...), src, out_dir)` writes `PREFIX.rec/.idx/.lst`, `property`,
`pack_report.json` and, last, `manifest.json`. Images are decoded, center-cropped (or aligned
with a detector) and resized to SIZE x SIZE, JPEG-encoded in worker processes (threads for a
set that is already SIZE x SIZE); the parent writes them in source order, so the same input
gives byte-identical files for any worker count. JPEGs that are already SIZE x SIZE colour pass
through unchanged.

Bad files are skipped and listed in the report with the reason (not an image, truncated JPEG,
unreadable); identities left with fewer than `min_images` usable images are dropped and listed.
Paths in `PREFIX.lst` and in the report are relative to SRC (as given in a .lst source), so the
output does not depend on where SRC is mounted.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import hashlib
import itertools
import json
import multiprocessing
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from facepipe.config import bounded
from facepipe.data.crop import center_crop_resize
from facepipe.data.insightface import InsightFaceWriter, lst_line, read_lst, relative_to_lst, write_property
from facepipe.data.jpeg import jpeg_complete, jpeg_info
from facepipe.errors import ConfigError, DataError
from facepipe.manifest import MANIFEST, replacing, write_manifest
from facepipe.progress import Progress
from facepipe.run_logger import NullLogger, RunLogger

REPORT = "pack_report.json"
MIN_SIDE = 8  # pixels; a smaller source image is skipped


@dataclass
class PackConfig:
    prefix: str = "train"
    size: int = bounded(112, low=8, high=4096, help="output images are SIZE x SIZE")
    workers: int = bounded(0, low=0, help="worker processes; 0 = all cores")
    quality: int = bounded(95, low=1, high=100, help="JPEG quality")
    min_images: int = bounded(1, low=1, help="drop identities with fewer usable images")
    detector: str | None = None  # detector model.pt, or mtcnn (the teacher): align faces on landmarks
    center_crop: float = bounded(1.0, low=0.05, high=1.0,
                                 help="share of the shorter side kept where a face is center-cropped "
                                      "(no detector, or no face / implausible landmarks); train with "
                                      "the same center_crop so the fallback matches")

    def validate(self) -> None:
        if not self.prefix or "/" in self.prefix or "\\" in self.prefix or self.prefix.startswith("."):
            raise ConfigError(f"PackConfig.prefix: {self.prefix!r} is not a file name prefix "
                              f"(expected e.g. 'train', without slashes)")
        if self.detector not in (None, "mtcnn") and not Path(self.detector).is_file():
            raise ConfigError(f"PackConfig.detector: {self.detector!r} is not a file "
                              f"(expected a detector model.pt, or mtcnn for the MTCNN teacher)")


# ---------------------------------------------------------------------------------------------
# Per-image work (runs in the worker processes)
# ---------------------------------------------------------------------------------------------

_ALIGNER = None
_CALLER_TORCH_THREADS = None
_CENTER_CROP = 1.0


def _init_worker(detector: str | None, in_pool: bool = True, forked: bool = False, center_crop: float = 1.0) -> None:
    global _ALIGNER, _CALLER_TORCH_THREADS, _CENTER_CROP
    if in_pool and not forked:
        import cv2

        cv2.setNumThreads(1)  # parallelism comes from the processes
    _CENTER_CROP = center_crop
    _ALIGNER = _load_aligner(detector, center_crop) if detector else None
    if detector:
        import torch

        if not in_pool:
            _CALLER_TORCH_THREADS = torch.get_num_threads()
        # One thread per process; and the same thread count for every worker count, so the
        # detector's float results (and the aligned pixels) do not depend on --workers.
        torch.set_num_threads(1)


def _load_aligner(detector: str, center_crop: float = 1.0):
    try:
        from facepipe.gallery.align import FaceAligner
    except ImportError as exc:
        raise ConfigError(f"--detector needs facepipe.gallery.align.FaceAligner, which is not "
                          f"available: {exc}") from None
    return FaceAligner(detector, center_crop=center_crop)


def _read_file(path: str) -> bytes:
    # os-level calls: a third of the cost of open().read() for files of a few KB
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO named .jpg must not block the pack
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        size = st.st_size
        chunks = [os.read(fd, max(size, 1))]
        while chunks[-1]:  # a file that grew, or a size fstat does not know (/proc)
            chunks.append(os.read(fd, 1 << 20))
        return b"".join(chunks)
    finally:
        os.close(fd)


def process_image(path: str, size: int, quality: int, geometry: tuple | None = None) -> tuple:
    """Read, check and convert one source image.

    `geometry` is where a .lst puts the face: ("landmarks", 5 (x, y) points) to align on, or
    ("bbox", (x1, y1, x2, y2)) to crop; otherwise the detector aligns (if any) or we center-crop.

    Returns ("ok", jpeg_bytes, sha256 digest, passthrough, (used_landmarks, status, fallback reason) | None)
    or ("skip", reason, sha256 digest | None).
    """
    import cv2

    try:
        data = _read_file(path)
    except OSError as exc:
        return ("skip", f"unreadable: {exc.strerror or exc.__class__.__name__}", None)
    digest = hashlib.sha256(data).digest()
    if not data:
        return ("skip", "empty file", digest)
    info = jpeg_info(data)
    if data[:2] == b"\xff\xd8":
        if info is None:
            return ("skip", "corrupt JPEG: no frame header (expected SOF marker before the scan)", digest)
        if not jpeg_complete(data):
            return ("skip", "truncated JPEG: no end-of-image marker after the last scan", digest)
    plain = _ALIGNER is None and geometry is None
    cropped = _CENTER_CROP < 1.0
    if plain and not cropped and info is not None and info[0] == size and info[1] == size and info[2] == 3:
        return ("ok", data, digest, True, None)
    flags = cv2.IMREAD_COLOR
    if info is not None and plain:
        shorter = min(info[0], info[1]) * _CENTER_CROP
        # libjpeg's DCT scaling decodes at 1/2 or 1/4 for a fraction of the cost.
        if shorter >= 4 * size:
            flags = cv2.IMREAD_REDUCED_COLOR_4
        elif shorter >= 2 * size:
            flags = cv2.IMREAD_REDUCED_COLOR_2
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as exc:  # e.g. a header claiming more pixels than OpenCV allows
        return ("skip", f"not decodable: {str(exc).strip().splitlines()[-1][:200]}", digest)
    if image is None:
        return ("skip", "not a decodable image (expected JPEG, PNG, BMP, WebP or TIFF)", digest)
    if min(image.shape[:2]) < MIN_SIDE:  # upscaled, it would teach the model blur, not a face
        return ("skip", f"too small: {image.shape[1]}x{image.shape[0]} px (expected at least {MIN_SIDE} a side)", digest)
    used_landmarks = None
    if geometry is not None and geometry[0] == "landmarks":
        from facepipe.gallery.align import align_face

        face, used = align_face(image, np.asarray(geometry[1], dtype=np.float64), size)
        used_landmarks = (bool(used), "lst_landmarks" if used else "lst_landmarks_unusable",
                          None if used else "implausible_landmarks")
    elif geometry is not None:
        face, used_landmarks = box_crop(image, geometry[1], size), (False, "lst_box", "lst_box")
    elif _ALIGNER is not None:
        aligned, details = _ALIGNER.align(image, size)
        used = bool(_landmarks_used(details))
        status = details.get("status") if isinstance(details, dict) else None
        fallback = details.get("fallback", "no_landmarks") if isinstance(details, dict) else "no_landmarks"
        used_landmarks = (used, status, None if used else fallback)
        face = aligned
        if face.shape[:2] != (size, size):
            face = center_crop_resize(face, size)
    else:
        face = center_crop_resize(image, size, _CENTER_CROP)
    ok, buf = cv2.imencode(".jpg", face, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        return ("skip", "JPEG encoding failed", digest)
    return ("ok", buf.tobytes(), digest, False, used_landmarks)


def box_crop(image: np.ndarray, box, size: int, margin: float = 44.0) -> np.ndarray:
    """The box widened by `margin` / 2 pixels on each side (InsightFace's `face_preprocess`
    default), clipped to the image and resized to size x size."""
    import cv2

    h, w = image.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    left, top = int(max(x1 - margin / 2, 0)), int(max(y1 - margin / 2, 0))
    right, bottom = int(min(x2 + margin / 2, w)), int(min(y2 + margin / 2, h))
    if right <= left or bottom <= top:  # a box outside the image: keep the whole image
        left, top, right, bottom = 0, 0, w, h
    return cv2.resize(image[top:bottom, left:right], (size, size), interpolation=cv2.INTER_LINEAR)


def _landmarks_used(details) -> bool:
    if isinstance(details, dict):
        for key in ("used_landmarks", "landmarks_used"):
            if key in details:
                return bool(details[key])
        return details.get("landmarks") is not None
    return bool(details)


def _work(task):
    identity_no, path, size, quality, geometry = task
    return identity_no, (None if path is None else process_image(path, size, quality, geometry))


# ---------------------------------------------------------------------------------------------
# Listing the source
# ---------------------------------------------------------------------------------------------

@dataclass
class _Identity:
    name: str
    files: list[tuple[str, str, tuple | None]]  # (name in the .lst, path to read, face geometry)


def identity_folders(src: Path, skipped: list[dict]) -> list[os.DirEntry]:
    """The identity folders of SRC in name order; stray top-level files are reported."""
    folders = []
    for entry in sorted(os.scandir(src), key=lambda e: e.name):
        if entry.name.startswith(".") or entry.name == MANIFEST:
            continue
        if entry.is_dir():
            folders.append(entry)
        else:
            skipped.append({"file": entry.name, "reason": "not inside an identity folder"})
    return folders


def list_identity_tree(folders: list[os.DirEntry], skipped: list[dict]) -> Iterator[_Identity]:
    """SRC/<identity>/<image> in name order, one folder at a time (so packing starts at once)."""
    for entry in folders:
        try:
            items = sorted(os.scandir(entry.path), key=lambda e: e.name)
        except OSError as exc:
            skipped.append({"file": entry.name + "/", "reason": f"unreadable folder: {exc.strerror}"})
            continue
        files = []
        for item in items:
            rel = f"{entry.name}/{item.name}"
            if item.name.startswith("."):
                continue
            if item.is_dir():
                skipped.append({"file": rel + "/", "reason": "nested folder (expected SRC/<identity>/<image>)"})
                continue
            files.append((rel, item.path, None))
        yield _Identity(entry.name, files)


def list_lst(lst_path: Path) -> tuple[list[_Identity], str]:
    fmt, entries = read_lst(lst_path)
    by_label: dict[int, list[tuple[str, str, tuple | None]]] = {}
    for e in entries:
        geometry = None
        if e.aligned is False and e.landmarks is not None:
            geometry = ("landmarks", e.landmarks)
        elif e.aligned is False and e.bbox is not None:
            geometry = ("bbox", e.bbox)
        by_label.setdefault(e.label, []).append((e.path, str(relative_to_lst(lst_path, e.path)), geometry))
    return [_Identity(str(label), by_label[label]) for label in sorted(by_label)], fmt


def _tasks(identities: Iterable[_Identity], size: int, quality: int, listed: list[_Identity]):
    """One task per image (one marker task per empty identity); `listed` grows as we go, ahead
    of the results that refer to it."""
    for n, ident in enumerate(identities):
        listed.append(ident)
        if not ident.files:
            yield (n, None, size, quality, None)
        for _, path, geometry in ident.files:
            yield (n, path, size, quality, geometry)


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


class _Duplicates:
    """Content hashes of every file read: 32 bytes a file, so millions of images fit."""

    def __init__(self):
        self._digests = bytearray()
        self._files: list[str] = []
        self._identities: list[str] = []

    def add(self, digest: bytes, rel: str, identity: str) -> None:
        self._digests += digest
        self._files.append(rel)
        self._identities.append(identity)

    def groups(self) -> list[dict]:
        """Files with identical bytes, by digest order; files in the order they were read."""
        if not self._files:
            return []
        digests = np.frombuffer(bytes(self._digests), dtype="V32")
        _, inverse, counts = np.unique(digests, return_inverse=True, return_counts=True)
        groups: dict[int, list[int]] = {}
        for i in np.flatnonzero(counts[inverse] > 1).tolist():
            groups.setdefault(int(inverse[i]), []).append(i)
        return [{"sha256": bytes(self._digests[m[0] * 32:m[0] * 32 + 32]).hex(),
                 "files": [self._files[i] for i in m],
                 "identities": sorted({self._identities[i] for i in m})}
                for _, m in sorted(groups.items())]


class _Packer:
    """The parent's side of packing: group worker results by identity, write them in order."""

    def __init__(self, cfg: PackConfig, out_dir: Path, n_identities: int, progress: bool):
        self.cfg = cfg
        self.writer = InsightFaceWriter(out_dir, cfg.prefix)
        self.lst_tmp = out_dir / f"{cfg.prefix}.lst.tmp"
        self.lst = open(self.lst_tmp, "w", encoding="utf-8", newline="\n")
        self.bar = Progress(n_identities, "pack", unit="id", enabled=progress)
        self.skipped: list[dict] = []
        self.dropped: list[dict] = []
        self.alignment: list[dict] = []
        self.fallbacks: list[str | None] = []  # per packed image aligned or cut: why not on landmarks
        self.duplicates = _Duplicates()
        self.seen = self.passthrough = 0

    def run(self, results: Iterator[tuple], listed: list) -> None:
        """`results` are (identity number, result) in order; `listed[n]` is identity n."""
        current, usable, j = -1, [], 0
        for n, result in results:
            if n != current:
                if current >= 0:
                    self.finish(listed[current], usable)
                    listed[current] = None  # done with its file list: memory stays flat
                current, usable, j = n, [], 0
            if result is None:  # an empty identity
                continue
            rel = listed[n].files[j][0]
            j += 1
            self.seen += 1
            if result[2] is not None:
                self.duplicates.add(result[2], rel, listed[n].name)
            if result[0] == "skip":
                self.skipped.append({"file": rel, "reason": result[1]})
            else:
                usable.append((rel, result))
        if current >= 0:
            self.finish(listed[current], usable)

    def finish(self, ident: _Identity, usable: list) -> None:
        self.bar.update(1, images=self.seen)
        if len(usable) < self.cfg.min_images:
            reason = ("empty folder" if not ident.files else
                      f"{len(usable)} usable image(s), fewer than min_images={self.cfg.min_images}")
            self.dropped.append({"identity": ident.name, "images": len(usable), "reason": reason})
            return
        class_id = self.writer.num_classes
        for rel, (_, jpeg, _, was_passthrough, used_landmarks) in usable:
            self.writer.add(jpeg, class_id)
            self.lst.write(lst_line(rel, class_id))
            self.passthrough += bool(was_passthrough)
            if used_landmarks is not None:
                landmarks, status, fallback = used_landmarks
                self.alignment.append({"file": rel, "landmarks": landmarks, "status": status})
                self.fallbacks.append(fallback)

    def close(self) -> None:
        self.bar.close()
        self.writer.close()
        self.lst.close()


def pack(cfg: PackConfig, src: str | Path, out_dir: str | Path, logger: RunLogger = NullLogger(),
         progress: bool = True) -> dict:
    """Pack `src` (identity tree or .lst) into an InsightFace RecordIO dataset in `out_dir`."""
    cfg.validate()
    src, out_dir = Path(src), Path(out_dir)
    if not src.exists():
        raise DataError("source not found (expected an identity-folder tree or a .lst file)", path=src)
    if src.is_dir() and (out_dir.resolve() == src.resolve() or src.resolve() in out_dir.resolve().parents):
        raise DataError(f"the output folder {out_dir} is inside the source tree; it would be packed "
                        f"as an identity (expected OUT outside SRC)", path=src)
    with replacing(out_dir, "recordio", marker=f"{cfg.prefix}.idx") as work:  # the old set stays until done
        return _pack_into(cfg, src, work, logger, progress)


def _pack_into(cfg: PackConfig, src: Path, out_dir: Path, logger: RunLogger, progress: bool) -> dict:
    listing_skips: list[dict] = []
    if src.is_dir():
        folders = identity_folders(src, listing_skips)
        identities, n_identities, source_kind = list_identity_tree(folders, listing_skips), len(folders), "identity_tree"
        images_hint = None
    else:
        identities, lst_format = list_lst(src)
        n_identities, source_kind = len(identities), f"lst ({lst_format})"
        images_hint = sum(len(i.files) for i in identities)
    workers = resolve_workers(cfg.workers)
    if images_hint is not None:
        workers = min(workers, max(1, images_hint))

    t0 = time.monotonic()
    packer = _Packer(cfg, out_dir, n_identities, progress)
    listed: list[_Identity] = []
    try:
        # The output does not depend on this choice, only the speed does.
        if src.is_dir():
            identities = _prefetch(identities, ahead=256)  # list folders while packing
        threads, identities = probe_passthrough(identities, cfg.size, cfg.detector, center_crop=cfg.center_crop)
        packer.run(_run(_tasks(identities, cfg.size, cfg.quality, listed), workers, cfg.detector, threads,
                        cfg.center_crop), listed)
    finally:
        packer.close()
    # listing and packing report skips from two threads: sort for a deterministic report
    skipped = sorted(listing_skips + packer.skipped, key=lambda s: s["file"])
    dropped, writer = packer.dropped, packer.writer
    if writer.num_images == 0:
        reasons = sorted({s["reason"] for s in skipped} | {d["reason"] for d in dropped})
        raise DataError(f"no images packed: {packer.seen} file(s) seen, {len(skipped)} skipped, "
                        f"{len(dropped)} identities dropped ({'; '.join(reasons[:3]) or 'nothing found'})",
                        path=src)
    os.replace(packer.lst_tmp, out_dir / f"{cfg.prefix}.lst")
    write_property(out_dir / "property", writer.num_classes, cfg.size, cfg.size)

    duplicates = packer.duplicates.groups()
    report = {
        "source": source_kind,
        "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "workers"},
        "images_seen": packer.seen,
        "images_packed": writer.num_images,
        "identities_packed": writer.num_classes,
        "images_passed_through": packer.passthrough,
        "images_reencoded": writer.num_images - packer.passthrough,
        "skipped_count": len(skipped),
        "skipped": skipped,
        "identities_dropped_count": len(dropped),
        "identities_dropped": dropped,
        "duplicate_groups": len(duplicates),
        "duplicate_files": sum(len(d["files"]) - 1 for d in duplicates),
        "duplicates_across_identities": sum(len(d["identities"]) > 1 for d in duplicates),
        "duplicates": duplicates,
    }
    if cfg.detector or packer.alignment:
        report["aligned_with_landmarks"] = sum(a["landmarks"] for a in packer.alignment)
        report["aligned_without_landmarks"] = len(packer.alignment) - report["aligned_with_landmarks"]
        report["alignment"] = packer.alignment
        from facepipe.gallery.align import alignment_summary

        report.update(alignment_summary(packer.fallbacks))  # alignment.aligned, .fallback, ... by reason
    # The report file holds no timings or paths of this machine, so reruns are byte-identical.
    (out_dir / REPORT).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    write_manifest(out_dir, kind="recordio", extra={"prefix": cfg.prefix, "num_images": writer.num_images,
                                                    "num_classes": writer.num_classes})

    seconds = time.monotonic() - t0
    metrics = {"images_packed": writer.num_images, "identities_packed": writer.num_classes,
               "skipped_count": len(skipped), "identities_dropped_count": len(dropped),
               "duplicate_files": report["duplicate_files"], "images_passed_through": packer.passthrough,
               "seconds": round(seconds, 3), "images_per_s": round(packer.seen / max(seconds, 1e-9), 1)}
    metrics.update({k: v for k, v in report.items() if k.startswith("alignment.") and v is not None})
    logger.log_metrics(metrics)
    logger.log_artifact(out_dir / REPORT)
    return {**report, **metrics, "workers": workers}


def _run(tasks: Iterator[tuple], workers: int, detector: str | None, threads: bool = False,
         center_crop: float = 1.0):
    """Yield (identity number, result) in task order: in this process, or from `workers` threads
    or processes.

    `tasks` is consumed lazily, so listing a large tree overlaps with packing it. Threads suit
    pass-through (file reads and hashing release the GIL, and nothing is pickled); processes
    suit decoding and re-encoding.
    """
    if workers <= 1:
        _init_worker(detector, in_pool=False, center_crop=center_crop)
        try:
            for task in tasks:
                yield _work(task)
        finally:
            _reset_worker()
        return
    if threads and not detector:
        yield from _ordered_thread_map(tasks, workers)
        return
    if detector:
        _load_aligner(detector)  # fail here with a clear error, not in a pool initializer (it would respawn)
    # A forked copy of a threaded process can hang on its thread pools' state: seen with
    # cv2.setNumThreads in a forked worker after the parent had used OpenCV's threads, and
    # libgomp (torch) is not fork-safe either. So: with a detector (torch), workers start from a
    # fork server; without, they fork (cheapest start) from a parent whose OpenCV was made
    # single-threaded first, so the workers inherit no pool to reconfigure and never touch it.
    if detector or not hasattr(os, "fork"):
        ctx = multiprocessing.get_context(
            "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn")
        pool = ctx.Pool(workers, initializer=_init_worker, initargs=(detector, True, False, center_crop))
    else:
        import cv2

        previous = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            pool = multiprocessing.get_context("fork").Pool(
                workers, initializer=_init_worker, initargs=(None, True, True, center_crop))
        finally:
            cv2.setNumThreads(previous)
    with pool:
        yield from pool.imap(_work, tasks, chunksize=16)


def _work_chunk(tasks: list[tuple]) -> list[tuple]:
    return [_work(task) for task in tasks]


def _ordered_thread_map(tasks: Iterator[tuple], workers: int, chunk: int = 16):
    """`map(_work, tasks)` on a thread pool, in order, in chunks (fewer futures), with a few
    chunks per thread in flight (Executor.map would submit every task up front and hold every
    result)."""
    from concurrent.futures import ThreadPoolExecutor

    pending: collections.deque = collections.deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="pack") as pool:
        try:
            while batch := list(itertools.islice(tasks, chunk)):
                pending.append(pool.submit(_work_chunk, batch))
                if len(pending) >= 4 * workers:
                    yield from pending.popleft().result()
            while pending:
                yield from pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def _prefetch(items: Iterator, ahead: int = 4096) -> Iterator:
    """Run an iterator in a background thread, `ahead` items ahead of the consumer."""
    import queue
    import threading

    done = object()
    buffer: queue.Queue = queue.Queue(ahead)
    stop = threading.Event()

    def produce():
        try:
            for item in items:
                if stop.is_set():
                    return
                buffer.put(item)
            buffer.put(done)
        except BaseException as exc:  # handed to the consumer, raised there
            buffer.put(exc)

    thread = threading.Thread(target=produce, name="pack-list", daemon=True)
    thread.start()
    try:
        while (item := buffer.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full buffer
            try:
                buffer.get_nowait()
            except queue.Empty:
                thread.join(0.01)


def probe_passthrough(identities: Iterable[_Identity], size: int, detector: str | None,
                      sample: int = 16, center_crop: float = 1.0) -> tuple[bool, Iterator[_Identity]]:
    """Whether the first `sample` images are already SIZE x SIZE colour JPEGs (a pre-aligned set
    being repacked), and the identities with the ones looked at put back in front."""
    it = iter(identities)
    if detector or center_crop < 1.0:
        return False, it
    head, checked = [], 0
    for ident in it:
        head.append(ident)
        for _, path, geometry in ident.files[: sample - checked]:
            if geometry is not None:
                return False, itertools.chain(head, it)
            try:
                info = jpeg_info(_read_file(path)[:65536])
            except OSError:
                continue
            if info != (size, size, 3):
                return False, itertools.chain(head, it)
            checked += 1
        if checked >= sample:
            break
    return checked > 0, itertools.chain(head, it)


def _reset_worker() -> None:
    """Undo _init_worker in the calling process (workers=1 runs there)."""
    global _ALIGNER, _CALLER_TORCH_THREADS, _CENTER_CROP
    _ALIGNER = None
    _CENTER_CROP = 1.0
    if _CALLER_TORCH_THREADS is not None:
        import torch

        torch.set_num_threads(_CALLER_TORCH_THREADS)
        _CALLER_TORCH_THREADS = None
