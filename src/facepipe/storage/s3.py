"""S3 and S3-compatible servers as a storage backend (boto3, imported on first use)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from facepipe.storage.backend import (NO_BUCKET, NotFound, ObjectInfo, Permanent, Transient, need_env, part_size,
                                      read_timeout_s)
from facepipe.storage.uri import Location


class S3Backend:
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
            need_env(pair, "s3")
        session = boto3.session.Session()
        if session.get_credentials() is None:
            need_env(pair, "s3")
        region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
        config = Config(
            region_name=region, max_pool_connections=64, connect_timeout=5, read_timeout=read_timeout_s(),
            # One quick retry inside botocore for a dropped part; the outer loop does the backoff.
            retries={"max_attempts": 2, "mode": "standard"},
            s3={"addressing_style": "path" if self.endpoint else "auto"})
        self.client = session.client("s3", endpoint_url=self.endpoint, config=config)
        part = part_size()
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
                raise NotFound(msg) from None
            if code == "NoSuchBucket":
                raise Permanent(f"{NO_BUCKET} ({msg})") from None
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
                raise Permanent(f"access refused ({msg}); check AWS_ACCESS_KEY_ID / "
                                 f"AWS_SECRET_ACCESS_KEY") from None
            if status >= 500 or code in self._RETRY_CODES:
                raise Transient(msg) from None
            raise Permanent(msg) from None
        except NoCredentialsError:
            need_env(("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"), "s3")
            raise
        except S3UploadFailedError as exc:
            # boto3's managed transfer folds the ClientError into its message.
            text = str(exc)
            if "NoSuchBucket" in text:
                raise Permanent(f"{NO_BUCKET} ({text})") from None
            if any(c in text for c in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch")):
                raise Permanent(f"access refused ({text}); check AWS_ACCESS_KEY_ID / "
                                 f"AWS_SECRET_ACCESS_KEY") from None
            raise Transient(text) from None
        except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
            raise Permanent(f"local file: {exc}") from None  # retrying cannot fix the local side
        except (BotoCoreError, OSError) as exc:
            raise Transient(f"{type(exc).__name__}: {exc}") from None

    def check_bucket(self, loc: Location) -> None:
        try:
            self._call(self.client.head_bucket, Bucket=loc.bucket)
        except NotFound:
            raise Permanent(f"{NO_BUCKET} (bucket {loc.bucket!r})") from None

    def head(self, loc: Location) -> ObjectInfo | None:
        if not loc.key:
            return None
        try:
            r = self._call(self.client.head_object, Bucket=loc.bucket, Key=loc.key)
        except NotFound:
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
