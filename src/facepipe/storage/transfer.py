"""Moving files and folders between any two places: the backend for a URI, parallel checksummed
transfers, manifest-last uploads and manifest-verified downloads."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from facepipe.errors import DataError, StorageError
from facepipe.manifest import MANIFEST, read_manifest, sha256_file
from facepipe.progress import Progress
from facepipe.secrets import redact
from facepipe.storage.backend import NotFound, ObjectInfo, log, part_size, with_retries
from facepipe.storage.local import LocalBackend
from facepipe.storage.obs import ObsBackend
from facepipe.storage.s3 import S3Backend
from facepipe.storage.uri import Location, parse_uri


def _workers() -> int:
    return max(1, int(os.environ.get("FACEPIPE_STORAGE_WORKERS", "16")))


_BACKENDS: dict[tuple, object] = {}
_BACKENDS_LOCK = threading.Lock()


def backend_for(loc: Location):
    """A client per scheme and environment (credentials and endpoint are re-read on each call)."""
    if loc.is_local:
        return LocalBackend()
    names = (("AWS_ENDPOINT_URL", "S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
              "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE")
             if loc.scheme == "s3" else
             ("OBS_ENDPOINT", "OBS_ACCESS_KEY_ID", "OBS_SECRET_ACCESS_KEY", "OBS_SECURITY_TOKEN",
              "OBS_REGION", "OBS_SIGNATURE", "OBS_PATH_STYLE"))
    key = (loc.scheme, part_size()) + tuple(os.environ.get(n) for n in names)
    with _BACKENDS_LOCK:
        if key not in _BACKENDS:
            _BACKENDS[key] = S3Backend() if loc.scheme == "s3" else ObsBackend()
        return _BACKENDS[key]


@dataclass
class TransferReport:
    """What a transfer did: files moved, files skipped as already identical, bytes, seconds."""

    files: int = 0
    skipped: int = 0
    bytes: int = 0
    seconds: float = 0.0

class _ByteProgress:
    """Thread-safe byte counter feeding a Progress in whole MB (transfer callbacks come in bytes)."""

    def __init__(self, total_bytes: int, desc: str, quiet: bool):
        self._lock = threading.Lock()
        self._bytes = self._shown = 0
        self._total = -(-total_bytes // 1_000_000)
        self._progress = Progress(self._total, desc, unit="MB", enabled=not quiet)

    def __call__(self, n: int) -> None:
        with self._lock:
            self._bytes += n
            mb = min(self._bytes // 1_000_000, self._total)
            if mb > self._shown:
                self._progress.update(mb - self._shown)
                self._shown = mb

    def close(self):
        if self._shown < self._total and self._bytes:
            self._progress.update(self._total - self._shown)
            self._shown = self._total
        self._progress.close()


def _local_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and p.as_posix() != (folder / MANIFEST).as_posix()
                  and not p.name.endswith((".tmp", ".part")))


def _run_parallel(tasks: list[Callable[[], None]], workers: int) -> None:
    """Run tasks on a thread pool; the first failure cancels what has not started and is raised."""
    if workers <= 1 or len(tasks) <= 1:
        for t in tasks:
            t()
        return
    with ThreadPoolExecutor(max_workers=min(workers, len(tasks))) as pool:
        futures = [pool.submit(t) for t in tasks]
        try:
            for f in futures:
                f.result()
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def upload(local_path: str | os.PathLike, uri: str | os.PathLike, *, workers: int | None = None,
           quiet: bool = False, on_file: Callable[[str], None] | None = None) -> TransferReport:
    """Copy a local file or folder to uri (any scheme). Folders get manifest.json written last.

    A folder that already has a manifest (a step's output) is uploaded as its manifest lists it,
    after checking every checksum; otherwise a manifest is made for it. `on_file(rel_path)` is
    called after each file lands (progress hooks, tests).
    """
    src = Path(local_path)
    dst = parse_uri(uri)
    if not src.exists():
        raise StorageError(f"{src}: no such file or folder to upload")
    t0 = time.monotonic()
    be = backend_for(dst)
    with_retries("upload", str(dst), be.endpoint, lambda: be.check_bucket(dst))
    if src.is_file():
        # Into a folder: an existing local one, or a remote prefix written with a trailing slash.
        if (dst.path.is_dir() if dst.is_local else (not dst.key or dst.key.endswith("/"))):
            dst = dst.child(src.name)
        report = _upload_file(src, dst, quiet)
    else:
        report = _upload_folder(src, dst, workers or _workers(), quiet, on_file)
    report.seconds = time.monotonic() - t0
    log.info(redact(f"uploaded {src} -> {dst}: {report.files} files, {report.skipped} unchanged, "
             f"{report.bytes / 1e6:.1f} MB in {report.seconds:.1f}s"))
    return report


def _upload_file(src: Path, dst: Location, quiet: bool) -> TransferReport:
    be = backend_for(dst)
    if dst.is_local and dst.path.resolve() == src.resolve():
        return TransferReport(skipped=1)
    digest = sha256_file(src)
    size = src.stat().st_size
    progress = _ByteProgress(size, f"upload {src.name}", quiet)
    try:
        with_retries("upload", str(dst), be.endpoint, lambda: be.put_file(src, dst, digest, progress))
    finally:
        progress.close()
    return TransferReport(files=1, bytes=size)


def _upload_folder(src: Path, dst: Location, workers: int, quiet: bool, on_file) -> TransferReport:
    be = backend_for(dst)
    if dst.is_local and dst.path.resolve() == src.resolve():
        return TransferReport(skipped=1)
    declared = None
    if (src / MANIFEST).is_file():
        declared = read_manifest(src)
        names = sorted(declared.get("files", {}))
        for rel in names:
            _safe_rel(rel, src / MANIFEST)
            if not (src / rel).is_file():
                raise DataError("listed in the manifest but missing", path=src / rel)
    else:
        names = _local_files(src)
    sizes = {rel: (src / rel).stat().st_size for rel in names}

    # Only files of the version being replaced count as stale; nothing else under dst is touched.
    previous = _previous_files(be, dst)
    # The remote folder is incomplete from here until the new manifest lands.
    with_retries("upload", str(dst), be.endpoint, lambda: be.delete(dst.child(MANIFEST)))
    remote = dict(with_retries("list", str(dst), be.endpoint, lambda: list(be.iter_objects(dst))))
    remote.pop(MANIFEST, None)

    digests: dict[str, str] = {}
    report = TransferReport()
    lock = threading.Lock()
    progress = _ByteProgress(sum(sizes.values()), f"upload {src.name}", quiet)

    def transfer(rel: str) -> None:
        path, target = src / rel, dst.child(rel)
        digest = sha256_file(path)
        if declared is not None and declared["files"][rel].get("sha256") != digest:
            raise DataError(f"checksum differs from the folder's manifest "
                            f"({declared['files'][rel].get('sha256')} listed, {digest} on disk)", path=path)
        digests[rel] = digest
        if remote.get(rel) == sizes[rel]:
            info = with_retries("check", str(target), be.endpoint, lambda: be.head(target))
            if info is not None and info.sha256 == digest:
                progress(sizes[rel])
                with lock:
                    report.skipped += 1
                return
        with_retries("upload", str(target), be.endpoint, lambda: be.put_file(path, target, digest, progress))
        with lock:
            report.files += 1
            report.bytes += sizes[rel]
        if on_file:
            on_file(rel)

    try:
        _run_parallel([lambda rel=rel: transfer(rel) for rel in names], workers)
    finally:
        progress.close()
    for stale in sorted((set(remote) & previous) - set(names)):
        loc = dst.child(stale)
        with_retries("delete", str(loc), be.endpoint, lambda: be.delete(loc))
    if declared is not None:
        body = (src / MANIFEST).read_bytes()
    else:
        files = {rel: {"sha256": digests[rel], "size": sizes[rel]} for rel in names}
        body = json.dumps({"kind": "folder", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "files": files}, indent=2, sort_keys=True).encode()
    mloc = dst.child(MANIFEST)
    with_retries("upload", str(mloc), be.endpoint, lambda: be.put_bytes(mloc, body))
    return report


def _previous_files(be, dst: Location) -> set[str]:
    """The files the manifest already at dst lists (empty when there is none or it is unreadable)."""
    mloc = dst.child(MANIFEST)
    try:
        raw = with_retries("download", str(mloc), be.endpoint, lambda: be.get_bytes(mloc), missing_ok=True)
        files = json.loads(raw).get("files", {})
        return set(files) if isinstance(files, dict) else set()
    except (NotFound, ValueError, AttributeError):
        return set()


def _safe_rel(rel: str, manifest_path) -> str:
    parts = rel.split("/")
    if rel.startswith("/") or ".." in parts or not rel or "\\" in rel:
        raise DataError(f"unsafe file name {rel!r} in the manifest (must stay inside the folder)",
                        path=manifest_path)
    return rel


def download(uri: str | os.PathLike, local_path: str | os.PathLike, *, workers: int | None = None,
             quiet: bool = False) -> Path:
    """Copy the file or complete folder at uri to local_path; returns the local path.

    A folder must have its manifest.json (else: StorageError, the upload did not finish); every
    file is checked against its sha256, and the local manifest is written last. Files already
    present locally with the right checksum are not fetched again.
    """
    src = parse_uri(uri)
    dest = Path(local_path)
    be = backend_for(src)
    t0 = time.monotonic()
    if src.is_local:
        if not src.path.exists():
            raise StorageError(f"{src}: no such file or folder")
        info = be.head(src)
    else:
        info = with_retries("check", str(src), be.endpoint, lambda: be.head(src))
    if info is not None:
        if dest.is_dir():
            dest = dest / (src.path.name if src.is_local else src.key.rsplit("/", 1)[-1])
        _download_file(be, src, dest, info, quiet)
        report = TransferReport(files=1, bytes=info.size)
    else:
        report = _download_folder(be, src, dest, workers or _workers(), quiet)
    report.seconds = time.monotonic() - t0
    log.info(redact(f"downloaded {src} -> {dest}: {report.files} files, {report.skipped} already present, "
             f"{report.bytes / 1e6:.1f} MB in {report.seconds:.1f}s"))
    return dest


def _download_file(be, src: Location, dest: Path, info: ObjectInfo, quiet: bool) -> None:
    if src.is_local and dest.exists() and dest.resolve() == src.path.resolve():
        return
    progress = _ByteProgress(info.size, f"download {dest.name}", quiet)
    try:
        _fetch_verified(be, src, dest, info.size, info.sha256, progress)
    finally:
        progress.close()


def _fetch_verified(be, src: Location, dest: Path, size: int | None, sha256: str | None, progress) -> None:
    try:
        with_retries("download", str(src), be.endpoint, lambda: be.get_file(src, dest, size, progress),
                      missing_ok=True)
    except NotFound as exc:
        raise StorageError(f"{src}: not found (endpoint {be.endpoint}): {exc}") from None
    if sha256 is not None:
        digest = sha256_file(dest)
        if digest != sha256:
            dest.unlink()
            raise StorageError(f"{src}: checksum mismatch after download (expected sha256 {sha256}, "
                               f"got {digest}); the stored object is corrupt or was replaced")
    if size is not None and dest.stat().st_size != size:
        dest.unlink()
        raise StorageError(f"{src}: size mismatch after download (expected {size} bytes, "
                           f"got {dest.stat().st_size})")


def _download_folder(be, src: Location, dest: Path, workers: int, quiet: bool,
                     raw: bytes | None = None) -> TransferReport:
    """`raw`: the folder's manifest as the caller already read it (the node cache keys on it, so the
    files fetched must be the ones it lists, even if the folder is replaced meanwhile)."""
    mloc = src.child(MANIFEST)
    if src.is_local and dest.exists() and dest.resolve() == src.path.resolve():
        _read_manifest_bytes(be, mloc, src)
        return TransferReport(skipped=1)
    raw = raw if raw is not None else _read_manifest_bytes(be, mloc, src)
    try:
        manifest = json.loads(raw)
        files = manifest["files"]
        if not isinstance(files, dict):
            raise TypeError("'files' is not a mapping")
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"not a facepipe manifest: {exc}", path=str(mloc)) from None

    dest.mkdir(parents=True, exist_ok=True)
    # Drop a stale local manifest first: the local copy is incomplete until the end.
    with contextlib.suppress(FileNotFoundError):
        (dest / MANIFEST).unlink()
    report = TransferReport()
    lock = threading.Lock()
    total = sum(int(f.get("size", 0)) for f in files.values())
    progress = _ByteProgress(total, f"download {dest.name}", quiet)

    def fetch(rel: str) -> None:
        info = files[rel]
        _safe_rel(rel, str(mloc))
        target = dest / rel
        if target.is_file() and target.stat().st_size == info.get("size") and sha256_file(target) == info["sha256"]:
            progress(target.stat().st_size)
            with lock:
                report.skipped += 1
            return
        _fetch_verified(be, src.child(rel), target, info.get("size"), info.get("sha256"), progress)
        with lock:
            report.files += 1
            report.bytes += target.stat().st_size

    try:
        _run_parallel([lambda rel=rel: fetch(rel) for rel in sorted(files)], workers)
    finally:
        progress.close()
    tmp = dest / (MANIFEST + ".tmp")
    tmp.write_bytes(raw)
    os.replace(tmp, dest / MANIFEST)
    return report


def _read_manifest_bytes(be, mloc: Location, folder: Location) -> bytes:
    try:
        return with_retries("download", str(mloc), be.endpoint, lambda: be.get_bytes(mloc), missing_ok=True)
    except NotFound:
        pass
    count = with_retries("list", str(folder), be.endpoint,
                          lambda: sum(1 for _ in be.iter_objects(folder)))
    if count:
        raise StorageError(f"{folder}: incomplete folder ({count} files but no {MANIFEST}); its upload "
                           f"or producer did not finish. Rerun the upload/step; nothing was downloaded")
    raise StorageError(f"{folder}: not found (no such file or folder; endpoint {be.endpoint})")
