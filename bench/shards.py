"""Bench: an image tree moved between tasks file by file (what the KFP launcher does) vs as shards.

Reference: one boto3 `upload_file` per image, then one `download_file` per image, in a loop (the
launcher copies an artifact's objects one after the other). Ours: `facepipe.data.shards.shard_tree`
(one tar per folder), the same boto3 loop over the few resulting objects, then `unsharded` on the
downloaded copy extracting one folder, as a later step does. Same local S3 server (nanio). The
ratio is reference time / ours, both ways together. Goal: >= 5x at thousands of images.

    .venv/bin/python bench/shards.py [--images 2000] [--kb 20]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_tree(root: Path, images: int, kb: int) -> None:
    """`faces/<identity>/*.jpg` and `detection/train/images/*.jpg` with a label file, and a manifest."""
    from facepipe.manifest import write_manifest

    for i in range(images):
        folder = root / "faces" / f"id{i // 20:05d}" if i % 4 else root / "detection" / "train" / "images"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:06d}.jpg").write_bytes(os.urandom(kb * 1024))
    (root / "detection" / "train" / "label.txt").write_text("# images/000000.jpg\n")
    write_manifest(root, "synth")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--kb", type=int, default=20, help="size of each image file")
    args = ap.parse_args()

    from bench.storage import bench_server, plain_download, plain_upload
    from facepipe.data.shards import shard_tree, unsharded

    with bench_server("facepipe-bench-shards-") as (server, work):
        client = server.client()
        server.create_bucket("bench")
        tree = work / "tree"
        make_tree(tree, args.images, args.kb)
        nfiles = sum(1 for p in tree.rglob("*") if p.is_file())
        mb = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file()) / 1e6
        print(f"tree: {nfiles} files, {mb:.0f} MB; server: nanio at {server.endpoint}; cpus: {os.cpu_count()}")

        t0 = time.perf_counter()
        plain_upload(client, tree, "bench", "files")
        plain_download(client, "bench", "files", work / "files-down")
        reference = time.perf_counter() - t0

        t0 = time.perf_counter()
        shard_tree(tree)
        sharded_at = time.perf_counter() - t0
        objects = sum(1 for p in tree.iterdir() if p.is_file())
        plain_upload(client, tree, "bench", "shards")
        plain_download(client, "bench", "shards", work / "shards-down")
        with unsharded(work / "shards-down" / "detection") as detection:
            extracted = sum(1 for p in Path(detection).rglob("*") if p.is_file())
        ours = time.perf_counter() - t0
        print(f"file by file (boto3 loop, {nfiles} objects up and down): {reference:6.2f} s")
        print(f"sharded ({objects} objects; shard {sharded_at:.2f} s, then up, down, extract detection/ "
              f"= {extracted} files): {ours:6.2f} s   ratio {reference / ours:.1f}x (goal >= 5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
