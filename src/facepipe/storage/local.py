"""The local filesystem as a storage backend (plain paths and `file://`)."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

from facepipe.storage.backend import NotFound, ObjectInfo
from facepipe.storage.uri import Location


class LocalBackend:
    """The local filesystem: same operations, files moved into place atomically."""

    endpoint = "local filesystem"

    def check_bucket(self, loc: Location) -> None:
        pass

    def head(self, loc: Location) -> ObjectInfo | None:
        p = loc.path
        return ObjectInfo(p.stat().st_size, None) if p.is_file() else None

    def iter_objects(self, loc: Location) -> Iterator[tuple[str, int]]:
        root = loc.path
        if root.is_dir():
            for p in sorted(root.rglob("*")):
                if p.is_file():
                    yield p.relative_to(root).as_posix(), p.stat().st_size

    def put_file(self, src: Path, loc: Location, sha256: str | None = None, on_bytes=None) -> None:
        loc.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = loc.path.with_name(loc.path.name + ".part")
        shutil.copyfile(src, tmp)
        os.replace(tmp, loc.path)
        if on_bytes:
            on_bytes(loc.path.stat().st_size)

    def get_file(self, loc: Location, dest: Path, size: int | None = None, on_bytes=None) -> None:
        if not loc.path.is_file():
            raise NotFound(f"{loc.path} does not exist")
        self.put_file(loc.path, Location("file", path=dest), on_bytes=on_bytes)

    def put_bytes(self, loc: Location, data: bytes) -> None:
        loc.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = loc.path.with_name(loc.path.name + ".part")
        tmp.write_bytes(data)
        os.replace(tmp, loc.path)

    def get_bytes(self, loc: Location) -> bytes:
        try:
            return loc.path.read_bytes()
        except FileNotFoundError:
            raise NotFound(f"{loc.path} does not exist") from None

    def delete(self, loc: Location) -> None:
        with contextlib.suppress(FileNotFoundError):
            loc.path.unlink()
