"""`manifest.json`, written last in every output folder: a folder without it is incomplete."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from facepipe.errors import DataError

MANIFEST = "manifest.json"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def content_digest(path: str | Path) -> str:
    """What a folder holds: its manifest's file checksums (not its timestamp), else each top-level
    file's name and size; for a file, its sha256."""
    path = Path(path)
    if not path.is_dir():
        return sha256_file(path)
    if (path / MANIFEST).is_file():
        return files_digest(json.loads((path / MANIFEST).read_text()).get("files", {}))
    return files_digest(sorted((p.name, p.stat().st_size) for p in path.iterdir() if p.is_file()))


def files_digest(files) -> str:
    """The digest of a manifest's `files` (name -> sha256, size): the same for a folder and its copies
    wherever they are, so a remote folder's manifest says which local copy holds the same data."""
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def write_manifest(out_dir: str | Path, kind: str, extra: dict | None = None) -> Path:
    """Checksum every file under out_dir (except the manifest) and write the manifest atomically."""
    out_dir = Path(out_dir)
    files = {}
    for p in sorted(out_dir.rglob("*")):
        if p.is_file() and p.name != MANIFEST and not p.name.endswith(".tmp"):
            rel = p.relative_to(out_dir).as_posix()
            files[rel] = {"sha256": sha256_file(p), "size": p.stat().st_size}
    body = {"kind": kind, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "files": files, **(extra or {})}
    tmp = out_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(body, indent=2, sort_keys=True))
    os.replace(tmp, out_dir / MANIFEST)
    return out_dir / MANIFEST


def read_manifest(out_dir: str | Path, verify: bool = False) -> dict:
    """The manifest of a complete output folder; with verify, every checksum is checked."""
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        raise DataError(f"no {MANIFEST}: the folder is incomplete (its producer did not finish)", path=out_dir)
    try:
        body = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON: {exc}", path=path) from None
    if verify:
        for rel, info in body.get("files", {}).items():
            f = Path(out_dir) / rel
            if not f.exists():
                raise DataError("listed in the manifest but missing", path=f)
            digest = sha256_file(f)
            if digest != info["sha256"]:
                raise DataError(f"checksum mismatch: manifest says {info['sha256']}, file has {digest}", path=f)
    return body


def check_replaceable(final_dir: str | Path, kind: str, marker: str = "") -> None:
    """Only nothing, an empty folder, or an earlier output of `kind` (by its manifest, or holding
    `marker` where an unfinished one lacks it) may be replaced: never a user's unrelated folder."""
    final_dir = Path(final_dir)
    if final_dir.exists() and not final_dir.is_dir():
        raise DataError("exists and is a file, not a folder (choose a new or empty output folder)", path=final_dir)
    if not final_dir.exists() or not any(final_dir.iterdir()):
        return
    try:
        found = json.loads((final_dir / MANIFEST).read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        found = None
    if found != kind and not (marker and (final_dir / marker).exists()):
        raise DataError(f"exists and is not a facepipe {kind} output; refusing to replace it (choose a new "
                        f"or empty output folder)", path=final_dir)


@contextlib.contextmanager
def replacing(final_dir: str | Path, kind: str, marker: str = ""):
    """Yield `FINAL.partial` to write into; on success it is renamed to `final_dir` (the previous
    output removed only then), on failure removed: nothing half-made ever sits under the real name."""
    final_dir = Path(final_dir)
    check_replaceable(final_dir, kind, marker)
    tmp, old = (final_dir.with_name(final_dir.name + suffix) for suffix in (".partial", ".old"))
    if old.is_dir() and not final_dir.exists():  # a crash between the two renames below
        old.rename(final_dir)
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final_dir.exists():
        final_dir.rename(old)
    tmp.rename(final_dir)
    shutil.rmtree(old, ignore_errors=True)
