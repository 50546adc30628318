"""Where step data lives: a URI (`s3://`, `obs://`, `file://` or a plain path) parsed into a Location."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from facepipe.errors import StorageError

SCHEMES = ("file", "s3", "obs")


@dataclass(frozen=True)
class Location:
    """A parsed URI: scheme ``file`` (with `path`), or ``s3``/``obs`` (with `bucket` and `key`)."""

    scheme: str
    bucket: str = ""
    key: str = ""
    path: Path | None = None

    @property
    def is_local(self) -> bool:
        return self.scheme == "file"

    def child(self, rel: str) -> "Location":
        if self.is_local:
            return Location("file", path=self.path / rel)
        return Location(self.scheme, self.bucket, _join(self.key, rel))

    def __str__(self) -> str:
        if self.is_local:
            return str(self.path)
        return f"{self.scheme}://{self.bucket}/{self.key}"


def _join(prefix: str, rel: str) -> str:
    return f"{prefix.rstrip('/')}/{rel}" if prefix.strip("/") else rel


def parse_uri(uri: str | os.PathLike) -> Location:
    """``s3://bucket/key``, ``obs://bucket/key``, ``file:///abs/path`` or a plain path."""
    text = os.fspath(uri)
    if "://" not in text:
        return Location("file", path=Path(text).expanduser())
    parsed = urlparse(text)
    scheme = parsed.scheme.lower()
    if scheme not in SCHEMES:
        raise StorageError(f"{text}: unsupported URI scheme {scheme!r}; expected one of "
                           f"{', '.join(s + '://' for s in SCHEMES)} or a plain path")
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise StorageError(f"{text}: file:// URIs take an absolute path (file:///data/x), "
                               f"not a host {parsed.netloc!r}")
        return Location("file", path=Path(parsed.path))
    if not parsed.netloc:
        raise StorageError(f"{text}: no bucket; expected {scheme}://BUCKET/KEY")
    return Location(scheme, parsed.netloc, parsed.path.lstrip("/"))
