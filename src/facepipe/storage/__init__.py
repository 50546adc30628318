"""One storage layer for step inputs and outputs: plain paths, ``file://``, ``s3://`` (boto3) and ``obs://`` (Huawei OBS SDK).

    upload(local_path, uri)      a file, or a folder (checksummed; manifest.json uploaded LAST)
    download(uri, local_path)    a file, or a folder (refused without a manifest; every file verified)
    exists(uri), ls(uri), localize(uri), publish(local_dir, uri), output_dir(uri)
    read_bytes(uri)              a small object's bytes, or None when there is none
    remove(uri)                  a folder/prefix and everything under it (its manifest first)

Folders: a folder is complete only when its ``manifest.json`` (sha256 and size of every file) is
there. An upload first removes the remote manifest, then transfers the files in parallel (large
files in parallel multipart parts), removes the files of the replaced version that the new one
lacks (nothing else), and writes the manifest last, so an interrupted upload never looks
complete; a rerun skips files already there with the same sha256.
A download refuses a prefix without a manifest and checks every file against it.

Environment (read on each call, never logged):
- ``s3://``: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (or another boto3 credential source),
  endpoint from AWS_ENDPOINT_URL or S3_ENDPOINT_URL (AWS when unset), AWS_DEFAULT_REGION.
- ``obs://``: OBS_ACCESS_KEY_ID, OBS_SECRET_ACCESS_KEY, OBS_ENDPOINT (e.g.
  ``https://obs.cn-north-4.myhuaweicloud.com``); optional OBS_SECURITY_TOKEN, OBS_REGION,
  OBS_SIGNATURE (``obs``, ``v2`` or ``v4``; default ``obs`` on
  myhuaweicloud.com, else v4), OBS_PATH_STYLE (1/0).
- FACEPIPE_STORAGE_ATTEMPTS (default 5), FACEPIPE_STORAGE_BACKOFF_S (first wait, default 0.5 s,
  doubling), FACEPIPE_STORAGE_WORKERS (parallel files, default 16),
  FACEPIPE_STORAGE_PART_MB (multipart part size, default 16), FACEPIPE_STORAGE_TIMEOUT_S (how long
  a request waits for an answer, default 20).
- FACEPIPE_CACHE_DIR: the node cache of input folders (``storage.cache``); unset, it is on only
  for several torchrun ranks on one node (in the temp folder).
"""

from __future__ import annotations

import builtins
import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from facepipe.errors import StorageError
from facepipe.manifest import MANIFEST, read_manifest
from facepipe.storage.backend import NotFound, with_retries
from facepipe.storage.cache import cache_dir, cached_folder
from facepipe.storage.transfer import TransferReport, backend_for, download, upload
from facepipe.storage.uri import SCHEMES, Location, parse_uri

__all__ = ["MANIFEST", "SCHEMES", "Entry", "Location", "StorageError", "TransferReport", "download", "exists",
           "check_writable", "is_complete", "localize", "ls", "output_dir", "parse_uri", "publish", "read_bytes", "remove", "upload"]


# ---- queries

def exists(uri: str | os.PathLike) -> bool:
    """True for an existing file/object, or a folder/prefix with anything in it."""
    loc = parse_uri(uri)
    if loc.is_local:
        return loc.path.exists()
    be = backend_for(loc)
    if with_retries("check", str(loc), be.endpoint, lambda: be.head(loc)) is not None:
        return True
    return with_retries("list", str(loc), be.endpoint, lambda: next(iter(be.iter_objects(loc)), None)) is not None


def is_complete(uri: str | os.PathLike) -> bool:
    """True when the folder at uri has its manifest.json (its upload or producer finished)."""
    loc = parse_uri(uri)
    if loc.is_local:
        return (loc.path / MANIFEST).is_file()
    be = backend_for(loc)
    return with_retries("check", str(loc), be.endpoint, lambda: be.head(loc.child(MANIFEST))) is not None


def read_bytes(uri: str | os.PathLike) -> bytes | None:
    """The content of a small file/object (a marker, a manifest), or None when it does not exist."""
    loc = parse_uri(uri)
    be = backend_for(loc)
    try:
        return with_retries("download", str(loc), be.endpoint, lambda: be.get_bytes(loc), missing_ok=True)
    except NotFound:
        return None


def remove(uri: str | os.PathLike) -> None:
    """Delete the folder/prefix at uri: its manifest first, so a half-removed folder never looks complete."""
    loc = parse_uri(uri)
    if loc.is_local:
        shutil.rmtree(loc.path, ignore_errors=True)
        return
    be = backend_for(loc)
    names = [rel for rel, _ in with_retries("list", str(loc), be.endpoint, lambda: builtins.list(be.iter_objects(loc)))]
    for rel in sorted(names, key=lambda rel: rel.rsplit("/", 1)[-1] != MANIFEST):
        target = loc.child(rel)
        with_retries("delete", str(target), be.endpoint, lambda: be.delete(target))


@dataclass(frozen=True)
class Entry:
    """One line of a listing: `name` relative to the listed URI (folders end with '/')."""

    name: str
    uri: str
    size: int
    is_dir: bool = False


def ls(uri: str | os.PathLike, recursive: bool = False) -> builtins.list[Entry]:
    """The files under uri (a folder or prefix), sorted; without recursive, subfolders collapsed."""
    loc = parse_uri(uri)
    be = backend_for(loc)
    if loc.is_local and loc.path.is_file():
        return [Entry(loc.path.name, str(loc.path), loc.path.stat().st_size)]
    if not loc.is_local and loc.key and not loc.key.endswith("/"):
        info = with_retries("check", str(loc), be.endpoint, lambda: be.head(loc))
        if info is not None:
            return [Entry(loc.key.rsplit("/", 1)[-1], str(loc), info.size)]
    objects = with_retries("list", str(loc), be.endpoint, lambda: builtins.list(be.iter_objects(loc)))
    if not objects and not (loc.is_local and loc.path.is_dir()):
        raise StorageError(f"{loc}: nothing there (no such file, folder or prefix)")
    entries: dict[str, Entry] = {}
    for rel, size in objects:
        if not recursive and "/" in rel:
            top = rel.split("/", 1)[0] + "/"
            old = entries.get(top)
            entries[top] = Entry(top, str(loc.child(top.rstrip("/"))) + "/",
                                 size + (old.size if old else 0), True)
        else:
            entries[rel] = Entry(rel, str(loc.child(rel)), size)
    return [entries[k] for k in sorted(entries)]


list = ls  # noqa: A001 - the public name the architecture documents; `ls` avoids shadowing inside


# ---- step edges

@contextlib.contextmanager
def localize(uri: str | os.PathLike, *, quiet: bool = False):
    """Yield a local path for uri: a local path as it is, a remote one downloaded to a temp dir.

    The temporary copy is removed on exit. Where a node cache is on (`storage.cache.cache_dir`: several
    torchrun ranks on this node, or FACEPIPE_CACHE_DIR), a remote folder comes from the cache instead:
    downloaded once per node and kept for the next job on the same data.
    """
    loc = parse_uri(uri)
    if loc.is_local:
        if not loc.path.exists():
            raise StorageError(f"{loc.path}: no such file or folder")
        yield loc.path
        return
    root = cache_dir()
    if root is not None and is_complete(str(loc)):  # a folder (files are small: models, not data sets)
        yield cached_folder(loc, root, quiet)[0]
        return
    tmp = Path(tempfile.mkdtemp(prefix="facepipe-in-"))
    try:
        name = loc.key.rstrip("/").rsplit("/", 1)[-1] or loc.bucket
        yield download(str(loc), tmp / name, quiet=quiet)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(local_dir: str | os.PathLike, uri: str | os.PathLike, *, quiet: bool = False) -> str:
    """Put a finished step output (a folder with its manifest.json) at uri; returns uri.

    Refuses a folder without a manifest: its producer did not finish.
    """
    src = Path(local_dir)
    read_manifest(src)
    upload(src, uri, quiet=quiet)
    return str(uri)


@contextlib.contextmanager
def output_dir(uri: str | os.PathLike, *, quiet: bool = False):
    """Yield a local folder for a step to write; a remote uri is checked writable first and gets the
    folder published on success (kept, and named in the error, when that upload fails).

    A local uri is used directly (the step's own manifest marks it complete).
    """
    loc = parse_uri(uri)
    if loc.is_local:
        made = not loc.path.exists()
        loc.path.mkdir(parents=True, exist_ok=True)
        try:
            yield loc.path
        except BaseException:
            if made:  # a failed step leaves no empty output folder behind
                with contextlib.suppress(OSError):
                    loc.path.rmdir()
            raise
        return
    check_writable(loc)  # before the work: a missing bucket found after hours of training loses them
    tmp = Path(tempfile.mkdtemp(prefix="facepipe-out-"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        publish(tmp, uri, quiet=quiet)
    except StorageError as exc:
        raise StorageError(f"{exc}; the finished output is kept at {tmp} (publish it with: facepipe storage cp "
                           f"{tmp} {uri})") from None
    shutil.rmtree(tmp, ignore_errors=True)


def check_writable(loc: Location) -> None:
    """Put and delete a small probe object under loc: the bucket exists, the credentials work and
    writing is allowed (StorageError naming the URI and endpoint otherwise)."""
    be = backend_for(loc)
    probe = loc.child(f".facepipe-write-check-{os.getpid()}")
    with_retries("write check", str(loc), be.endpoint, lambda: be.put_bytes(probe, b"facepipe write check"))
    with_retries("write check", str(loc), be.endpoint, lambda: be.delete(probe))
