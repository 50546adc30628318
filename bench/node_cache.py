"""Bench: N ranks of one node localizing the same packed `.rec` from S3: the node cache vs a download per rank.

    .venv/bin/python bench/node_cache.py [--mb 200] [--ranks 4] [--server nanio|moto]

A `.rec`-like folder (one large `.rec`, its `.idx`, `property`, manifest) goes to the local test S3
server. Reference: what the ranks did before the cache, each `storage.localize` into its own temp
folder (N downloads at once, as under torchrun). Then the same N processes through the node cache
(`FACEPIPE_CACHE_DIR`, what LOCAL_WORLD_SIZE > 1 turns on): one downloads, the others wait on the
entry's lock; and a next job on the same data (a cache hit). Bytes fetched are what each process's
transfer report counted, summed; seconds are wall time until the last rank has its copy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RANK_CODE = """
import json, os, sys, time
from pathlib import Path
from facepipe import storage
from facepipe.storage.cache import cache_dir, cached_folder
from facepipe.storage.uri import parse_uri

from facepipe.storage.transfer import backend_for

uri, go = sys.argv[1], sys.argv[2]
root = cache_dir()
backend_for(parse_uri(uri))  # the S3 client is made before the clock, in both arms
Path(f"{go}.ready-{os.getpid()}").touch()
while not os.path.exists(go):  # start together, as torchrun's ranks do
    time.sleep(0.01)
if root is None:  # as before the cache: localize into a private temp folder
    with storage.localize(uri, quiet=True) as path:
        nbytes = sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
else:
    nbytes = cached_folder(parse_uri(uri), root, quiet=True)[1].bytes
print("RESULT " + json.dumps({"bytes": nbytes, "end": time.time()}))
"""


def make_rec(folder: Path, mb: int) -> int:
    from facepipe.manifest import write_manifest

    folder.mkdir(parents=True)
    chunk = os.urandom(1 << 20)
    with open(folder / "train.rec", "wb") as f:
        for _ in range(mb):
            f.write(chunk)
    (folder / "train.idx").write_text("".join(f"{i}\t{i << 16}\n" for i in range(mb * 16)))
    (folder / "property").write_text("1000,112,112\n")
    write_manifest(folder, "records")
    return sum(p.stat().st_size for p in folder.iterdir())


def ranks(n: int, uri: str, env: dict, work: Path) -> tuple[float, int]:
    """Start n rank processes together; (seconds until the last has its copy, bytes all fetched)."""
    go = work / f"go-{time.monotonic_ns()}"
    procs = [subprocess.Popen([sys.executable, "-c", RANK_CODE, uri, str(go)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(n)]
    while len(list(work.glob(f"{go.name}.ready-*"))) < n:  # every rank imported and has its client
        if any(p.poll() not in (None, 0) for p in procs):
            raise SystemExit(procs[0].communicate()[1][-3000:])
        time.sleep(0.05)
    t0 = time.time()
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        if p.returncode != 0:
            raise SystemExit(err[-3000:])
        results.append(json.loads([ln for ln in out.splitlines() if ln.startswith("RESULT ")][-1][7:]))
    return max(r["end"] for r in results) - t0, sum(r["bytes"] for r in results)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--server", choices=["nanio", "moto"], default="nanio")
    args = ap.parse_args()

    from bench.storage import bench_server
    from facepipe import storage

    with bench_server("facepipe-bench-cache-", args.server) as (server, work):
        os.environ.update(server.aws_env())
        server.create_bucket("bench")
        nbytes = make_rec(work / "rec", args.mb)
        storage.upload(work / "rec", "s3://bench/rec", quiet=True)
        env = {k: v for k, v in os.environ.items() if k not in ("FACEPIPE_CACHE_DIR", "LOCAL_WORLD_SIZE")}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")])
        per_rank = ranks(args.ranks, "s3://bench/rec", env, work)
        cache_env = {**env, "FACEPIPE_CACHE_DIR": str(work / "cache")}
        once = ranks(args.ranks, "s3://bench/rec", cache_env, work)
        hit = ranks(args.ranks, "s3://bench/rec", cache_env, work)
        print(f"packed set: {nbytes / 1e6:.0f} MB; {args.ranks} ranks on one node; server {args.server}; "
              f"{os.cpu_count()} CPUs")
        print(f"{'':<40}{'seconds':>9}{'MB fetched':>12}")
        for name, (sec, got) in (("download per rank (before)", per_rank), ("node cache, first job", once),
                                 ("node cache, next job (hit)", hit)):
            print(f"{name:<40}{sec:>9.2f}{got / 1e6:>12.0f}")
        print(f"ratio per-rank / cache: {per_rank[0] / once[0]:.2f}x seconds, "
              f"{per_rank[1] / max(once[1], 1):.2f}x bytes (goal: bytes = {args.ranks}x, one download per node)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
