"""Huawei OBS as a storage backend (esdk-obs-python, imported on first use)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

from facepipe.errors import StorageError
from facepipe.storage.backend import (NO_BUCKET, NotFound, ObjectInfo, Permanent, Transient, need_env, part_size,
                                      read_timeout_s)
from facepipe.storage.uri import Location


class ObsBackend:
    """Huawei OBS through esdk-obs-python (`obs.ObsClient`); resumable multipart for large files."""

    def __init__(self):
        from obs import ObsClient

        env = need_env(("OBS_ACCESS_KEY_ID", "OBS_SECRET_ACCESS_KEY", "OBS_ENDPOINT"), "obs")
        endpoint = env["OBS_ENDPOINT"]
        if "://" not in endpoint:
            endpoint = "https://" + endpoint
        parsed = urlparse(endpoint)
        host = parsed.hostname or ""
        region = os.environ.get("OBS_REGION")
        if not region:
            parts = host.split(".")
            # obs.<region>.myhuaweicloud.com names its region; test servers get the S3 default.
            region = parts[1] if len(parts) > 3 and parts[0] == "obs" else "us-east-1"
        path_style = os.environ.get("OBS_PATH_STYLE")
        # Huawei's own endpoints speak the native OBS signature; S3-compatible servers need v4.
        native = host.endswith("myhuaweicloud.com")
        path_style = (path_style == "1") if path_style else not native
        signature = os.environ.get("OBS_SIGNATURE") or ("obs" if native else "v4")
        if signature not in ("obs", "v2", "v4"):
            raise StorageError(f"OBS_SIGNATURE={signature!r}: expected obs, v2 or v4")
        self.endpoint = endpoint
        self.client = ObsClient(
            access_key_id=env["OBS_ACCESS_KEY_ID"], secret_access_key=env["OBS_SECRET_ACCESS_KEY"],
            security_token=os.environ.get("OBS_SECURITY_TOKEN") or None,
            server=f"{parsed.scheme}://{parsed.netloc}", is_secure=parsed.scheme == "https",
            signature=signature, region=region, path_style=path_style,
            max_retry_count=1, timeout=read_timeout_s())

    @staticmethod
    def _check(resp, what: str):
        if resp.status < 300:
            return resp
        msg = f"{resp.status} {resp.errorCode or resp.reason}: {resp.errorMessage or ''}".strip()
        if resp.status == 404 and resp.errorCode != "NoSuchBucket":
            raise NotFound(msg)
        if resp.errorCode == "NoSuchBucket":
            raise Permanent(f"{NO_BUCKET} ({msg})")
        if resp.status == 403:
            raise Permanent(f"access refused ({msg}); check OBS_ACCESS_KEY_ID / OBS_SECRET_ACCESS_KEY")
        if resp.status >= 500 or resp.status in (408, 429):
            raise Transient(msg)
        raise Permanent(f"{what}: {msg}")

    def _call(self, what: str, fn, *args, **kwargs):
        import http.client

        try:
            resp = fn(*args, **kwargs)
        except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
            raise Permanent(f"local file: {exc}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise Transient(f"{type(exc).__name__}: {exc}") from None
        except Exception as exc:
            if type(exc) is Exception:  # the SDK wraps transport failures in plain Exceptions
                raise Transient(str(exc)) from None
            raise
        return self._check(resp, what)

    def check_bucket(self, loc: Location) -> None:
        try:
            self._call("check", self.client.headBucket, loc.bucket)
        except NotFound:
            raise Permanent(f"{NO_BUCKET} (bucket {loc.bucket!r})") from None

    def head(self, loc: Location) -> ObjectInfo | None:
        if not loc.key:
            return None
        try:
            r = self._call("head", self.client.getObjectMetadata, loc.bucket, loc.key)
        except NotFound:
            return None
        meta = dict(r.header or [])
        return ObjectInfo(int(r.body.contentLength), meta.get("sha256"))

    def iter_objects(self, loc: Location) -> Iterator[tuple[str, int]]:
        prefix = loc.key.rstrip("/") + "/" if loc.key.strip("/") else ""
        marker = None
        while True:
            r = self._call("list", self.client.listObjects, loc.bucket, prefix=prefix or None,
                           marker=marker, max_keys=1000)
            contents = r.body.contents or []
            for obj in contents:
                yield obj.key[len(prefix):], int(obj.size)
            if not r.body.is_truncated or not contents:
                return
            marker = contents[-1].key

    def put_file(self, src: Path, loc: Location, sha256: str | None = None, on_bytes=None) -> None:
        meta = {"sha256": sha256} if sha256 else None
        size = src.stat().st_size
        if size > part_size():
            self._call("upload", self.client.uploadFile, loc.bucket, loc.key, str(src),
                       partSize=part_size(), taskNum=8, enableCheckpoint=False, metadata=meta)
        else:
            self._call("upload", self.client.putFile, loc.bucket, loc.key, str(src), metadata=meta)
        if on_bytes:
            on_bytes(size)

    def get_file(self, loc: Location, dest: Path, size: int | None = None, on_bytes=None) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        try:
            if size is not None and size > part_size():
                self._call("download", self.client.downloadFile, loc.bucket, loc.key,
                           downloadFile=str(tmp), partSize=part_size(), taskNum=8)
            else:
                self._call("download", self.client.getObject, loc.bucket, loc.key, downloadPath=str(tmp))
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        if on_bytes:
            on_bytes(dest.stat().st_size)

    def put_bytes(self, loc: Location, data: bytes) -> None:
        self._call("upload", self.client.putContent, loc.bucket, loc.key, content=data)

    def get_bytes(self, loc: Location) -> bytes:
        r = self._call("download", self.client.getObject, loc.bucket, loc.key, loadStreamInMemory=True)
        return bytes(r.body.buffer)

    def delete(self, loc: Location) -> None:
        self._call("delete", self.client.deleteObject, loc.bucket, loc.key)
