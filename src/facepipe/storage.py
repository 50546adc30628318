"""One storage layer for step inputs and outputs: plain paths, ``file://``, ``s3://`` (boto3) and ``obs://`` (Huawei OBS SDK).

    upload(local_path, uri)      a file, or a folder (checksummed; manifest.json uploaded LAST)
    download(uri, local_path)    a file, or a folder (refused without a manifest; every file verified)
    exists(uri), ls(uri), localize(uri), publish(local_dir, uri), output_dir(uri)

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
  FACEPIPE_STORAGE_PART_MB (multipart part size, default 16).
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import os
import random
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlparse

from facepipe.errors import DataError, StorageError
from facepipe.manifest import MANIFEST, sha256_file
from facepipe.progress import Progress
from facepipe.secrets import redact

log = logging.getLogger("facepipe.storage")

SCHEMES = ("file", "s3", "obs")


# ----------------------------------------------------------------------------------- locations

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


# ------------------------------------------------------------------------------------ retries

class _Transient(Exception):
    """A failure worth retrying (connection refused or reset, timeout, 5xx, throttling)."""


class _Permanent(Exception):
    """A failure that a retry cannot fix (bad credentials, no such bucket or key, bad request)."""


class _NotFound(_Permanent):
    pass


_NO_BUCKET = "bucket does not exist; create it first"


def _attempts() -> int:
    return max(1, int(os.environ.get("FACEPIPE_STORAGE_ATTEMPTS", "5")))


def _backoff_s() -> float:
    return float(os.environ.get("FACEPIPE_STORAGE_BACKOFF_S", "0.5"))


def _with_retries(what: str, uri: str, endpoint: str, fn: Callable, missing_ok: bool = False):
    """Run fn, retrying transient failures with exponential backoff and jitter.

    With missing_ok, a missing object propagates as _NotFound for the caller to handle.
    """
    attempts, delay = _attempts(), _backoff_s()
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except _NotFound as exc:
            if missing_ok:
                raise
            raise StorageError(redact(f"{what} {uri}: not found (endpoint {endpoint}): {exc}")) from None
        except _Permanent as exc:
            raise StorageError(redact(f"{what} {uri} failed (endpoint {endpoint}): {exc}")) from None
        except _Transient as exc:
            if attempt == attempts:
                raise StorageError(redact(
                    f"{what} {uri} failed after {attempts} attempts (endpoint {endpoint}): {exc}; "
                    f"is the endpoint up and reachable?")) from None
            wait = min(delay * 2 ** (attempt - 1), 30.0) * (1 + 0.25 * random.random())
            log.warning(redact(f"{what} {uri}: {exc}; retry {attempt}/{attempts - 1} in {wait:.1f}s"))
            time.sleep(wait)


# ----------------------------------------------------------------------------------- backends

@dataclass
class ObjectInfo:
    size: int
    sha256: str | None  # from the object's metadata, when it was uploaded by facepipe


def _part_size() -> int:
    return int(float(os.environ.get("FACEPIPE_STORAGE_PART_MB", "16")) * (1 << 20))


def _workers() -> int:
    return max(1, int(os.environ.get("FACEPIPE_STORAGE_WORKERS", "16")))


class _LocalBackend:
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
            raise _NotFound(f"{loc.path} does not exist")
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
            raise _NotFound(f"{loc.path} does not exist") from None

    def delete(self, loc: Location) -> None:
        with contextlib.suppress(FileNotFoundError):
            loc.path.unlink()


def _need(names: tuple[str, ...], scheme: str) -> dict[str, str]:
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        which = (f"environment variable {missing[0]} is" if len(missing) == 1 else
                 f"environment variables {' and '.join(missing)} are")
        raise StorageError(f"{scheme}:// needs credentials: {which} not set (required: {', '.join(names)})")
    return {n: os.environ[n] for n in names}


class _S3Backend:
    """S3 and S3-compatible servers through boto3 (managed multipart transfers)."""

    _RETRY_CODES = {"SlowDown", "RequestTimeout", "Throttling", "ThrottlingException", "InternalError",
                    "ServiceUnavailable", "RequestTimeTooSkewed"}

    def __init__(self):
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("S3_ENDPOINT_URL") or None
        pair = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
        if any(os.environ.get(n) for n in pair):  # half a key pair: name the other half
            _need(pair, "s3")
        session = boto3.session.Session()
        if session.get_credentials() is None:
            _need(pair, "s3")
        region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
        config = Config(
            region_name=region, max_pool_connections=64, connect_timeout=5, read_timeout=60,
            # One quick retry inside botocore for a dropped part; the outer loop does the backoff.
            retries={"max_attempts": 2, "mode": "standard"},
            s3={"addressing_style": "path" if self.endpoint else "auto"})
        self.client = session.client("s3", endpoint_url=self.endpoint, config=config)
        part = _part_size()
        self.transfer = TransferConfig(multipart_threshold=part, multipart_chunksize=part,
                                       max_concurrency=8, use_threads=True)
        self.endpoint = self.endpoint or f"AWS S3 ({region})"

    def _call(self, fn, *args, **kwargs):
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            return fn(*args, **kwargs)
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            msg = f"{code or status}: {err.get('Message') or exc}"
            if code in ("NoSuchKey", "404", "NotFound"):
                raise _NotFound(msg) from None
            if code == "NoSuchBucket":
                raise _Permanent(f"{_NO_BUCKET} ({msg})") from None
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
                raise _Permanent(f"access refused ({msg}); check AWS_ACCESS_KEY_ID / "
                                 f"AWS_SECRET_ACCESS_KEY") from None
            if status >= 500 or code in self._RETRY_CODES:
                raise _Transient(msg) from None
            raise _Permanent(msg) from None
        except NoCredentialsError:
            _need(("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"), "s3")
            raise
        except S3UploadFailedError as exc:
            # boto3's managed transfer folds the ClientError into its message.
            text = str(exc)
            if "NoSuchBucket" in text:
                raise _Permanent(f"{_NO_BUCKET} ({text})") from None
            if any(c in text for c in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch")):
                raise _Permanent(f"access refused ({text}); check AWS_ACCESS_KEY_ID / "
                                 f"AWS_SECRET_ACCESS_KEY") from None
            raise _Transient(text) from None
        except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
            raise _Permanent(f"local file: {exc}") from None  # retrying cannot fix the local side
        except (BotoCoreError, OSError) as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}") from None

    def check_bucket(self, loc: Location) -> None:
        try:
            self._call(self.client.head_bucket, Bucket=loc.bucket)
        except _NotFound:
            raise _Permanent(f"{_NO_BUCKET} (bucket {loc.bucket!r})") from None

    def head(self, loc: Location) -> ObjectInfo | None:
        if not loc.key:
            return None
        try:
            r = self._call(self.client.head_object, Bucket=loc.bucket, Key=loc.key)
        except _NotFound:
            return None
        return ObjectInfo(int(r["ContentLength"]), r.get("Metadata", {}).get("sha256"))

    def iter_objects(self, loc: Location) -> Iterator[tuple[str, int]]:
        prefix = loc.key.rstrip("/") + "/" if loc.key.strip("/") else ""
        token = None
        while True:
            kwargs = {"Bucket": loc.bucket, "Prefix": prefix, "MaxKeys": 1000}
            if token:
                kwargs["ContinuationToken"] = token
            r = self._call(self.client.list_objects_v2, **kwargs)
            for obj in r.get("Contents", []):
                yield obj["Key"][len(prefix):], int(obj["Size"])
            token = r.get("NextContinuationToken")
            if not r.get("IsTruncated") or not token:
                return

    def put_file(self, src: Path, loc: Location, sha256: str | None = None, on_bytes=None) -> None:
        size = src.stat().st_size
        if size < self.transfer.multipart_threshold:
            # One PUT: the managed transfer's futures and threads cost more than small files do.
            self.put_bytes(loc, src.read_bytes(), sha256)
            if on_bytes:
                on_bytes(size)
            return
        extra = {"Metadata": {"sha256": sha256}} if sha256 else None
        self._call(self.client.upload_file, str(src), loc.bucket, loc.key, ExtraArgs=extra,
                   Config=self.transfer, Callback=on_bytes)

    def get_file(self, loc: Location, dest: Path, size: int | None = None, on_bytes=None) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        if size is not None and size < self.transfer.multipart_threshold:
            tmp = dest.with_name(dest.name + ".part")
            tmp.write_bytes(self.get_bytes(loc))
            os.replace(tmp, dest)
            if on_bytes:
                on_bytes(size)
            return
        # boto3 writes to a temporary name and renames, so dest is never half-written.
        self._call(self.client.download_file, loc.bucket, loc.key, str(dest), Config=self.transfer,
                   Callback=on_bytes)

    def put_bytes(self, loc: Location, data: bytes, sha256: str | None = None) -> None:
        extra = {"Metadata": {"sha256": sha256}} if sha256 else {}
        self._call(self.client.put_object, Bucket=loc.bucket, Key=loc.key, Body=data, **extra)

    def get_bytes(self, loc: Location) -> bytes:
        r = self._call(self.client.get_object, Bucket=loc.bucket, Key=loc.key)
        return self._call(r["Body"].read)

    def delete(self, loc: Location) -> None:
        self._call(self.client.delete_object, Bucket=loc.bucket, Key=loc.key)


class _ObsBackend:
    """Huawei OBS through esdk-obs-python (`obs.ObsClient`); resumable multipart for large files."""

    def __init__(self):
        from obs import ObsClient

        env = _need(("OBS_ACCESS_KEY_ID", "OBS_SECRET_ACCESS_KEY", "OBS_ENDPOINT"), "obs")
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
            max_retry_count=1, timeout=60)

    @staticmethod
    def _check(resp, what: str):
        if resp.status < 300:
            return resp
        msg = f"{resp.status} {resp.errorCode or resp.reason}: {resp.errorMessage or ''}".strip()
        if resp.status == 404 and resp.errorCode != "NoSuchBucket":
            raise _NotFound(msg)
        if resp.errorCode == "NoSuchBucket":
            raise _Permanent(f"{_NO_BUCKET} ({msg})")
        if resp.status == 403:
            raise _Permanent(f"access refused ({msg}); check OBS_ACCESS_KEY_ID / OBS_SECRET_ACCESS_KEY")
        if resp.status >= 500 or resp.status in (408, 429):
            raise _Transient(msg)
        raise _Permanent(f"{what}: {msg}")

    def _call(self, what: str, fn, *args, **kwargs):
        import http.client

        try:
            resp = fn(*args, **kwargs)
        except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
            raise _Permanent(f"local file: {exc}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}") from None
        except Exception as exc:
            if type(exc) is Exception:  # the SDK wraps transport failures in plain Exceptions
                raise _Transient(str(exc)) from None
            raise
        return self._check(resp, what)

    def check_bucket(self, loc: Location) -> None:
        try:
            self._call("check", self.client.headBucket, loc.bucket)
        except _NotFound:
            raise _Permanent(f"{_NO_BUCKET} (bucket {loc.bucket!r})") from None

    def head(self, loc: Location) -> ObjectInfo | None:
        if not loc.key:
            return None
        try:
            r = self._call("head", self.client.getObjectMetadata, loc.bucket, loc.key)
        except _NotFound:
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
        if size > _part_size():
            self._call("upload", self.client.uploadFile, loc.bucket, loc.key, str(src),
                       partSize=_part_size(), taskNum=8, enableCheckpoint=False, metadata=meta)
        else:
            self._call("upload", self.client.putFile, loc.bucket, loc.key, str(src), metadata=meta)
        if on_bytes:
            on_bytes(size)

    def get_file(self, loc: Location, dest: Path, size: int | None = None, on_bytes=None) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        try:
            if size is not None and size > _part_size():
                self._call("download", self.client.downloadFile, loc.bucket, loc.key,
                           downloadFile=str(tmp), partSize=_part_size(), taskNum=8)
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


_BACKENDS: dict[tuple, object] = {}
_BACKENDS_LOCK = threading.Lock()


def _backend(loc: Location):
    """A client per scheme and environment (credentials and endpoint are re-read on each call)."""
    if loc.is_local:
        return _LocalBackend()
    names = (("AWS_ENDPOINT_URL", "S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
              "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE")
             if loc.scheme == "s3" else
             ("OBS_ENDPOINT", "OBS_ACCESS_KEY_ID", "OBS_SECRET_ACCESS_KEY", "OBS_SECURITY_TOKEN",
              "OBS_REGION", "OBS_SIGNATURE", "OBS_PATH_STYLE"))
    key = (loc.scheme, _part_size()) + tuple(os.environ.get(n) for n in names)
    with _BACKENDS_LOCK:
        if key not in _BACKENDS:
            _BACKENDS[key] = _S3Backend() if loc.scheme == "s3" else _ObsBackend()
        return _BACKENDS[key]


# ------------------------------------------------------------------------------------ queries

def _manifest_loc(loc: Location) -> Location:
    return loc.child(MANIFEST)


def exists(uri: str | os.PathLike) -> bool:
    """True for an existing file/object, or a folder/prefix with anything in it."""
    loc = parse_uri(uri)
    if loc.is_local:
        return loc.path.exists()
    be = _backend(loc)
    if _with_retries("check", str(loc), be.endpoint, lambda: be.head(loc)) is not None:
        return True
    return _with_retries("list", str(loc), be.endpoint, lambda: next(iter(be.iter_objects(loc)), None)) is not None


def is_complete(uri: str | os.PathLike) -> bool:
    """True when the folder at uri has its manifest.json (its upload or producer finished)."""
    loc = parse_uri(uri)
    if loc.is_local:
        return (loc.path / MANIFEST).is_file()
    be = _backend(loc)
    return _with_retries("check", str(loc), be.endpoint, lambda: be.head(_manifest_loc(loc))) is not None


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
    be = _backend(loc)
    if loc.is_local and loc.path.is_file():
        return [Entry(loc.path.name, str(loc.path), loc.path.stat().st_size)]
    if not loc.is_local and loc.key and not loc.key.endswith("/"):
        info = _with_retries("check", str(loc), be.endpoint, lambda: be.head(loc))
        if info is not None:
            return [Entry(loc.key.rsplit("/", 1)[-1], str(loc), info.size)]
    objects = _with_retries("list", str(loc), be.endpoint, lambda: builtins.list(be.iter_objects(loc)))
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


# ---------------------------------------------------------------------------------- transfers

@dataclass
class TransferReport:
    """What a transfer did: files moved, files skipped as already identical, bytes, seconds."""

    files: int = 0
    skipped: int = 0
    bytes: int = 0
    seconds: float = 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / max(self.seconds, 1e-9)


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


def _local_files(folder: Path) -> builtins.list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and p.as_posix() != (folder / MANIFEST).as_posix()
                  and not p.name.endswith((".tmp", ".part")))


def _run_parallel(tasks: builtins.list[Callable[[], None]], workers: int) -> None:
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
    be = _backend(dst)
    _with_retries("upload", str(dst), be.endpoint, lambda: be.check_bucket(dst))
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
    be = _backend(dst)
    if dst.is_local and dst.path.resolve() == src.resolve():
        return TransferReport(skipped=1)
    digest = sha256_file(src)
    size = src.stat().st_size
    progress = _ByteProgress(size, f"upload {src.name}", quiet)
    try:
        _with_retries("upload", str(dst), be.endpoint, lambda: be.put_file(src, dst, digest, progress))
    finally:
        progress.close()
    return TransferReport(files=1, bytes=size)


def _upload_folder(src: Path, dst: Location, workers: int, quiet: bool, on_file) -> TransferReport:
    be = _backend(dst)
    if dst.is_local and dst.path.resolve() == src.resolve():
        return TransferReport(skipped=1)
    declared = None
    if (src / MANIFEST).is_file():
        from facepipe.manifest import read_manifest

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
    _with_retries("upload", str(dst), be.endpoint, lambda: be.delete(_manifest_loc(dst)))
    remote = dict(_with_retries("list", str(dst), be.endpoint, lambda: builtins.list(be.iter_objects(dst))))
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
            info = _with_retries("check", str(target), be.endpoint, lambda: be.head(target))
            if info is not None and info.sha256 == digest:
                progress(sizes[rel])
                with lock:
                    report.skipped += 1
                return
        _with_retries("upload", str(target), be.endpoint, lambda: be.put_file(path, target, digest, progress))
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
        _with_retries("delete", str(loc), be.endpoint, lambda: be.delete(loc))
    if declared is not None:
        body = (src / MANIFEST).read_bytes()
    else:
        files = {rel: {"sha256": digests[rel], "size": sizes[rel]} for rel in names}
        body = json.dumps({"kind": "folder", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "files": files}, indent=2, sort_keys=True).encode()
    mloc = _manifest_loc(dst)
    _with_retries("upload", str(mloc), be.endpoint, lambda: be.put_bytes(mloc, body))
    return report


def _previous_files(be, dst: Location) -> set[str]:
    """The files the manifest already at dst lists (empty when there is none or it is unreadable)."""
    mloc = _manifest_loc(dst)
    try:
        raw = _with_retries("download", str(mloc), be.endpoint, lambda: be.get_bytes(mloc), missing_ok=True)
        files = json.loads(raw).get("files", {})
        return set(files) if isinstance(files, dict) else set()
    except (_NotFound, ValueError, AttributeError):
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
    be = _backend(src)
    t0 = time.monotonic()
    if src.is_local:
        if not src.path.exists():
            raise StorageError(f"{src}: no such file or folder")
        info = be.head(src)
    else:
        info = _with_retries("check", str(src), be.endpoint, lambda: be.head(src))
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
        _with_retries("download", str(src), be.endpoint, lambda: be.get_file(src, dest, size, progress),
                      missing_ok=True)
    except _NotFound as exc:
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


def _download_folder(be, src: Location, dest: Path, workers: int, quiet: bool) -> TransferReport:
    mloc = _manifest_loc(src)
    if src.is_local and dest.exists() and dest.resolve() == src.path.resolve():
        _read_manifest_bytes(be, mloc, src)
        return TransferReport(skipped=1)
    raw = _read_manifest_bytes(be, mloc, src)
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
        return _with_retries("download", str(mloc), be.endpoint, lambda: be.get_bytes(mloc), missing_ok=True)
    except _NotFound:
        pass
    count = _with_retries("list", str(folder), be.endpoint,
                          lambda: sum(1 for _ in be.iter_objects(folder)))
    if count:
        raise StorageError(f"{folder}: incomplete folder ({count} files but no {MANIFEST}); its upload "
                           f"or producer did not finish. Rerun the upload/step; nothing was downloaded")
    raise StorageError(f"{folder}: not found (no such file or folder; endpoint {be.endpoint})")


# ------------------------------------------------------------------------------- step edges

@contextlib.contextmanager
def localize(uri: str | os.PathLike, *, quiet: bool = False):
    """Yield a local path for uri: a local path as it is, a remote one downloaded to a temp dir.

    The temporary copy is removed on exit.
    """
    loc = parse_uri(uri)
    if loc.is_local:
        if not loc.path.exists():
            raise StorageError(f"{loc.path}: no such file or folder")
        yield loc.path
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
    from facepipe.manifest import read_manifest

    src = Path(local_dir)
    read_manifest(src)
    upload(src, uri, quiet=quiet)
    return str(uri)


@contextlib.contextmanager
def output_dir(uri: str | os.PathLike, *, quiet: bool = False):
    """Yield a local folder for a step to write; a remote uri gets it published on success.

    A local uri is used directly (the step's own manifest marks it complete).
    """
    loc = parse_uri(uri)
    if loc.is_local:
        loc.path.mkdir(parents=True, exist_ok=True)
        yield loc.path
        return
    tmp = Path(tempfile.mkdtemp(prefix="facepipe-out-"))
    try:
        yield tmp
        publish(tmp, uri, quiet=quiet)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
