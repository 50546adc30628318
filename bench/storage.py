"""Bench: a 500 MB model folder up and down through facepipe.storage vs plain boto3 upload_file/download_file,
and a 200 MB training checkpoint uploaded by the training engine vs boto3 upload_file of its shard.

Both go to the same local S3 server (nanio: SigV4-checking, file-backed; or moto with --server moto).
The reference is what a script would do without the storage layer: one boto3 `upload_file` /
`download_file` per file, in a loop, default transfer settings. The storage layer also hashes every
file (sha256), writes and verifies the manifest. Goal: ratio >= 1.0x both ways.

Checkpoint: `Checkpoints.save` with a `checkpoint_uri` on the server (the local save, then the upload in
the background, manifest last) until `close()`, against `upload_file` of the same shard; and how long
`save` keeps training waiting with the upload against without one (goal: about the same).

    .venv/bin/python bench/storage.py [--mb 500] [--small 400] [--checkpoint-mb 200] [--server nanio|moto]
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


def checkpoint_upload(work: Path, client, mb: int) -> None:
    """One checkpoint of `mb` MB of weights through the engine's code path vs boto3 upload_file."""
    from types import SimpleNamespace

    import torch

    from facepipe.training.checkpoint import Checkpoints
    from facepipe.training.loop import TrainState

    ctx = SimpleNamespace(rank=0, world=1, main=True, device=torch.device("cpu"), barrier=lambda: None,
                          broadcast=lambda v: v)
    weights = torch.nn.Linear(1000, mb * 250, bias=False)  # 4-byte floats: mb * 1e6 bytes
    state = TrainState(step=100)
    local_only = Checkpoints(work / "ckpt-local", ctx, {}, ())
    stall_local = timed(lambda: local_only.save({"model": weights}, state))
    mirrored = Checkpoints(work / "ckpt-mirrored", ctx, {}, (), uri="s3://bench/checkpoints/run")
    t0 = time.perf_counter()
    mirrored.save({"model": weights}, state)
    stall_mirrored = time.perf_counter() - t0
    mirrored.close()
    ours = time.perf_counter() - t0
    shard = work / "ckpt-local" / "checkpoints" / "step-000000100" / "rank0.pt"
    size = shard.stat().st_size / 1e6
    plain = timed(lambda: client.upload_file(str(shard), "bench", "plain-checkpoint/rank0.pt"))
    print(f"checkpoint {size:.0f} MB: boto3 upload_file of the shard       : {plain:.2f} s")
    print(f"checkpoint {size:.0f} MB: engine save + upload to checkpoint_uri: {ours:.2f} s "
          f"(of which the local save {stall_local:.2f} s)  ratio {(stall_local + plain) / ours:.2f}x against "
          f"a local save then upload_file (goal >= 1.0x)")
    print(f"checkpoint {size:.0f} MB: training waits {stall_mirrored:.2f} s in save with the upload, "
          f"{stall_local:.2f} s without one (the upload runs in the background)")


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
    ap.add_argument("--checkpoint-mb", type=int, default=200, help="checkpoint size (0: skip that part)")
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
        if args.checkpoint_mb:
            checkpoint_upload(work, client, args.checkpoint_mb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
