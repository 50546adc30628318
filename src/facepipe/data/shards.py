"""Data trees as a few large objects: one uncompressed tar ("shard") per top-level folder of a tree.

An artifact store moves a tree object by object (the KFP launcher copies each file of an input
artifact in turn), so a raw image tree of a million files takes hours to move while the same bytes
in a handful of objects take minutes. `shard_tree(root)` turns a complete tree (`faces/`,
`faces_eval/`, `detection/`, loose files, `manifest.json`) in place into `faces.tar`,
`faces_eval.tar`, `detection.tar`, the loose files, `tree.manifest.json` (the tree's own manifest)
and a new `manifest.json` (kind `sharded-tree`, written last). `unsharded(path)` hands a step the
folder it expects: a sharded tree's root, or one of its folders (`ROOT/detection` when only
`ROOT/detection.tar` exists), extracted into a temporary folder; any other path as it is. JPEGs are
already compressed, so the shards are not: a reader pays no decompression.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Iterator

from facepipe.errors import DataError
from facepipe.manifest import MANIFEST, read_manifest, write_manifest

KIND = "sharded-tree"
SUFFIX = ".tar"
TREE_MANIFEST = "tree.manifest.json"
# Where shards are extracted (a folder that exists; else the system's temp folder). On a cluster
# the pipeline's sized artifact disk (pipeline.pipeline.ARTIFACT_MOUNT), not the container's layer.
UNPACK_DIR_ENV = "FACEPIPE_UNPACK_DIR"


def _write_tar(folder: Path, arc_root: str, target: Path) -> dict:
    """`folder` as `target`, members under `arc_root/`, in name order with fixed owner, mode and time,
    so the same tree gives the same bytes. Returns its counts."""
    files = size = 0
    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames.sort()
            here = Path(dirpath)
            rel = here.relative_to(folder)
            entry = tarfile.TarInfo(str(Path(arc_root, rel).as_posix()))
            entry.type, entry.mode, entry.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(entry)
            for name in sorted(filenames):
                path = here / name
                if not path.is_file():
                    raise DataError("not a regular file (a broken link or a device); a data tree holds files only",
                                    path=path)
                entry = tarfile.TarInfo(str(Path(arc_root, rel, name).as_posix()))
                entry.size, entry.mode, entry.mtime = path.stat().st_size, 0o644, 0
                with open(path, "rb") as f:
                    tar.addfile(entry, f)
                files += 1
                size += entry.size
    return {"files": files, "bytes": size}


def shard_tree(root: str | Path) -> dict:
    """Replace each top-level folder of the complete tree `root` by its shard; returns the shards' counts.

    The shards are written (as `NAME.tar.partial`, renamed when whole) before anything is removed;
    the tree's manifest then becomes `tree.manifest.json`, so from there until the new manifest is
    written last the folder has none and reads as incomplete.
    """
    root = Path(root)
    tree = read_manifest(root)  # only a complete tree is sharded
    if tree.get("kind") == KIND:
        return tree["shards"]
    shards = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        partial = root / f"{folder.name}{SUFFIX}.partial"
        shards[folder.name] = _write_tar(folder, folder.name, partial)
        os.replace(partial, root / f"{folder.name}{SUFFIX}")
    os.replace(root / MANIFEST, root / TREE_MANIFEST)
    for name in shards:
        shutil.rmtree(root / name)
    write_manifest(root, KIND, {"shards": shards, "tree_kind": tree.get("kind", "")})
    return shards


def is_sharded(root: str | Path) -> bool:
    path = Path(root) / MANIFEST
    try:
        return path.is_file() and json.loads(path.read_text()).get("kind") == KIND
    except (OSError, ValueError, AttributeError):
        return False


def _extract(root: Path, name: str, dest: Path, manifest: dict) -> None:
    shard = root / f"{name}{SUFFIX}"
    listed = manifest["files"].get(shard.name)
    if not shard.is_file() or listed is None:
        raise DataError(f"shard {shard.name} is missing or not in the manifest of this sharded tree", path=shard)
    if shard.stat().st_size != listed["size"]:
        raise DataError(f"shard is {shard.stat().st_size} bytes, its manifest says {listed['size']} "
                        f"(cut short in transfer?)", path=shard)
    try:
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                parts = Path(member.name).parts
                if parts[:1] != (name,) or ".." in parts or not (member.isfile() or member.isdir()):
                    raise DataError(f"member {member.name!r} lies outside {name}/ or is not a plain file or "
                                    f"folder", path=shard)
            # The 'data' filter (Python >= 3.11.4; the images' Debian 3.11 may predate it) refuses the
            # same and more; the checks above hold without it.
            extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(dest, **extra)
    except (tarfile.TarError, EOFError) as exc:
        raise DataError(f"not a readable shard: {exc}", path=shard) from None


@contextlib.contextmanager
def unsharded(path: str | Path) -> Iterator[str | Path]:
    """The local folder a step reads for `path` (see the module doc); extractions are removed on exit.
    Anything else (a plain folder, a file, a URI) is given back as it came."""
    given, path = path, Path(path)
    whole = path.is_dir() and is_sharded(path)
    part = not path.exists() and is_sharded(path.parent) and (path.parent / f"{path.name}{SUFFIX}").is_file()
    if not (whole or part):
        yield given
        return
    unpack_dir = os.environ.get(UNPACK_DIR_ENV)
    root = path if whole else path.parent
    manifest = read_manifest(root)
    with tempfile.TemporaryDirectory(prefix="facepipe-tree-",
                                     dir=unpack_dir if unpack_dir and Path(unpack_dir).is_dir() else None) as tmp:
        dest = Path(tmp)
        if part:
            _extract(root, path.name, dest, manifest)
            yield str(dest / path.name)
            return
        for name in manifest["shards"]:
            _extract(root, name, dest, manifest)
        for rel in manifest["files"]:
            if not rel.endswith(SUFFIX) and "/" not in rel:
                shutil.copy2(root / rel, dest / (MANIFEST if rel == TREE_MANIFEST else rel))
        yield str(dest)
