"""Bench: a 500 MB model folder up and down through facepipe.storage vs plain boto3 upload_file/download_file.

Both go to the same local S3 server (nanio: SigV4-checking, file-backed; or moto with --server moto).
The reference is what a script would do without the storage layer: one boto3 `upload_file` /
`download_file` per file, in a loop, default transfer settings. The storage layer also hashes every
file (sha256), writes and verifies the manifest. Goal: ratio >= 1.0x both ways.

    .venv/bin/python bench/storage.py [--mb 500] [--small 400] [--server nanio|moto] [--repeat 1]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_folder(root: Path, total_mb: int, small: int) -> int:
    """A few large weight files plus many small files (plots, per-identity JSON); returns bytes."""
    root.mkdir(parents=True)
    small_bytes = 64 * 1024
    large_total = total_mb * 1_000_000 - small * small_bytes
    sizes = [int(large_total * f) for f in (0.4, 0.3, 0.2)]
    sizes.append(large_total - sum(sizes))
    chunk = os.urandom(1 << 20)
    for i, size in enumerate(sizes):
        with open(root / f"weights_{i}.pt", "wb") as f:
            left = size
            while left > 0:
                f.write(chunk[: min(left, len(chunk))])
                left -= len(chunk)
    for i in range(small):
        sub = root / "eval" / f"shard{i % 8}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"item{i:04d}.bin").write_bytes(os.urandom(small_bytes))
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def plain_upload(client, folder: Path, bucket: str, prefix: str) -> None:
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            client.upload_file(str(p), bucket, f"{prefix}/{p.relative_to(folder).as_posix()}")


def plain_download(client, bucket: str, prefix: str, dest: Path) -> None:
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix + "/"):
        for obj in page.get("Contents", []):
            target = dest / obj["Key"][len(prefix) + 1:]
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, obj["Key"], str(target))


@contextlib.contextmanager
def bench_server(prefix: str, kind: str = "nanio"):
    """A local S3 server and a scratch folder for one bench run, both gone afterwards."""
    from tests.fixtures.services import S3Server

    work = Path(tempfile.mkdtemp(prefix=prefix))
    server = S3Server.start_nanio(work / "s3") if kind == "nanio" else S3Server.start_moto(work / "s3")
    try:
        yield server, work
    finally:
        server.shutdown()
        shutil.rmtree(work, ignore_errors=True)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=500)
    ap.add_argument("--small", type=int, default=400, help="number of 64 KB files")
    ap.add_argument("--server", choices=["nanio", "moto"], default="nanio")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()

    from facepipe import storage

    with bench_server("facepipe-bench-storage-", args.server) as (server, work):
        os.environ.update(server.aws_env())
        client = server.client()
        server.create_bucket("bench")
        folder = work / "model"
        nbytes = make_folder(folder, args.mb, args.small)
        nfiles = sum(1 for p in folder.rglob("*") if p.is_file())
        mb = nbytes / 1e6
        print(f"folder: {nfiles} files, {mb:.0f} MB; server: {args.server} at {server.endpoint}; "
              f"cpus: {os.cpu_count()}")
        rows = []
        for r in range(args.repeat):
            up_plain = timed(lambda: plain_upload(client, folder, "bench", f"plain{r}"))
            up_ours = timed(lambda: storage.upload(folder, f"s3://bench/ours{r}", quiet=True))
            down_plain = timed(lambda: plain_download(client, "bench", f"plain{r}", work / f"dp{r}"))
            down_ours = timed(lambda: storage.download(f"s3://bench/ours{r}", work / f"do{r}", quiet=True))
            rows.append((up_plain, up_ours, down_plain, down_ours))
            shutil.rmtree(work / f"dp{r}")
            shutil.rmtree(work / f"do{r}")
        best = [min(col) for col in zip(*rows)]
        up_plain, up_ours, down_plain, down_ours = best
        print(f"upload   boto3 upload_file loop : {mb / up_plain:7.1f} MB/s ({up_plain:.2f} s)")
        print(f"upload   facepipe.storage       : {mb / up_ours:7.1f} MB/s ({up_ours:.2f} s)  "
              f"ratio {up_plain / up_ours:.2f}x (goal >= 1.0x)")
        print(f"download boto3 download_file loop: {mb / down_plain:7.1f} MB/s ({down_plain:.2f} s)")
        print(f"download facepipe.storage        : {mb / down_ours:7.1f} MB/s ({down_ours:.2f} s)  "
              f"ratio {down_plain / down_ours:.2f}x (goal >= 1.0x)")
        print("(facepipe.storage also computes sha256 of every file, writes the manifest last on upload "
              "and verifies every file against it on download)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
