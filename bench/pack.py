"""Packing speed: facepipe pack vs MXNet's im2rec on the lfw-dev photos, and pass-through vs a copy.

    .venv/bin/python bench/pack.py [--workers 2] [--repeats 3]

1. Pack ../shared/data/lfw-dev/images (7,698 250x250 JPEGs) to 112x112 (center crop, quality 95)
   with `facepipe pack` and with MXNet 1.9.1's `tools/im2rec.py` (.venv-mxnet), same number of
   worker processes, each as a fresh process (start-up included); best of N runs. Goal >= 2x.
2. Pass-through: pack the already-112x112 JPEGs (unpacked from step 1) vs a plain copy of the
   same bytes into one file (list the tree, read every file, append it). Goal >= 0.5x copy speed.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LFW = ROOT.parent / "shared" / "data" / "lfw-dev" / "images"
FACEPIPE = ROOT / ".venv" / "bin" / "facepipe"
MXNET_PYTHON = ROOT / ".venv-mxnet" / "bin" / "python"


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _all_cpu() -> float:
    """CPU seconds of this process and its finished children (pool workers are joined)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime + _children_cpu()


def timed(cmd: list[str], **kw) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the command and all its processes)."""
    c0, t0 = _children_cpu(), time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    return time.perf_counter() - t0, _children_cpu() - c0


def im2rec_script() -> Path:
    out = subprocess.run([str(MXNET_PYTHON), "-c", "import mxnet, os; print(os.path.dirname(mxnet.__file__))"],
                         check=True, capture_output=True, text=True).stdout.strip()
    return Path(out) / "tools" / "im2rec.py"


def copy_bytes(tree: Path, dest: Path) -> tuple[float, float]:
    """List the tree (as pack must) and append every file's bytes to one file: (wall s, CPU s)."""
    c0, t0 = _all_cpu(), time.perf_counter()
    with open(dest, "wb") as out:
        for folder, _, names in sorted(os.walk(tree)):
            for name in sorted(names):
                with open(os.path.join(folder, name), "rb") as src:
                    out.write(src.read())
    return time.perf_counter() - t0, _all_cpu() - c0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if not LFW.is_dir():
        print(f"bench/pack.py: skipped: {LFW} not found (the lfw-dev photos are not on this machine)")
        return 0
    if not MXNET_PYTHON.exists():
        print(f"bench/pack.py: skipped: {MXNET_PYTHON} missing (run scripts/mxnet-venv.sh)")
        return 0
    n_images = sum(1 for _ in LFW.rglob("*.jpg"))
    w, r = args.workers, args.repeats
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory(prefix="bench-pack-") as tmp:
        tmp = Path(tmp)
        # 1. facepipe vs im2rec, fresh processes, same worker count
        im2rec = im2rec_script()
        (tmp / "mx").mkdir()
        list_s, _ = timed([str(MXNET_PYTHON), str(im2rec), "--list", "--recursive", str(tmp / "mx" / "lfw"),
                        str(LFW)], env=env)
        fp_cmd = [str(FACEPIPE), "pack", str(LFW), str(tmp / "fp"), "--size", "112", "--workers", str(w),
                  "--quality", "95", "--quiet"]
        mx_cmd = [str(MXNET_PYTHON), str(im2rec), str(tmp / "mx" / "lfw"), str(LFW), "--resize", "112",
                  "--center-crop", "--quality", "95", "--num-thread", str(w)]
        # alternate the two so that a busy spell on a shared machine hits both alike
        fp_runs, mx_runs = [], []
        for _ in range(r):
            fp_runs.append(timed(fp_cmd, env=env))
            mx_runs.append(timed(mx_cmd, env=env))
        (fp_s, fp_cpu), (mx_s, mx_cpu) = min(fp_runs), min(mx_runs)
        fp_rate, mx_rate = n_images / fp_s, n_images / mx_s
        print(f"images: {n_images} lfw-dev photos -> 112x112 JPEG q95, {w} workers each, best of {r}")
        print(f"load average (1 min) {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs shared with other work")
        print(f"facepipe pack          {fp_s:6.2f} s  {fp_rate:8.0f} images/s  {fp_cpu:6.2f} CPU-s")
        print(f"mxnet im2rec (pack)    {mx_s:6.2f} s  {mx_rate:8.0f} images/s  {mx_cpu:6.2f} CPU-s"
              f"   (+ {list_s:.2f} s to make its .lst)")
        print(f"ratio facepipe / im2rec: {fp_rate / mx_rate:.2f}x wall (goal >= 2x), "
              f"{mx_cpu / fp_cpu:.2f}x in CPU time (the fairer number when the machine is shared)")

        # 2. pass-through of already-112 JPEGs vs copying the same bytes into one file
        subprocess.run([str(FACEPIPE), "unpack", str(tmp / "fp" / "train.rec"), str(tmp / "tree112"), "--quiet"],
                       check=True, stdout=subprocess.DEVNULL)
        files = sorted(p for p in (tmp / "tree112").rglob("*.jpg"))
        total_bytes = sum(p.stat().st_size for p in files)
        sys.path.insert(0, str(ROOT / "src"))
        from facepipe.data.pack import PackConfig, pack

        def passthrough() -> tuple[float, float]:
            shutil.rmtree(tmp / "pt", ignore_errors=True)
            c0, t0 = _all_cpu(), time.perf_counter()
            report = pack(PackConfig(size=112, workers=w), tmp / "tree112", tmp / "pt", progress=False)
            assert report["images_passed_through"] == len(files), report["images_passed_through"]
            return time.perf_counter() - t0, _all_cpu() - c0

        pt_runs, copy_runs = [], []
        for _ in range(r):
            pt_runs.append(passthrough())
            copy_runs.append(copy_bytes(tmp / "tree112", tmp / "copy.bin"))
        (pt_s, pt_cpu), (copy_s, copy_cpu) = min(pt_runs), min(copy_runs)
        print(f"pass-through: {len(files)} JPEGs already 112x112, {total_bytes / 1e6:.1f} MB")
        print(f"facepipe pack (pass-through) {pt_s:6.2f} s  {len(files) / pt_s:8.0f} images/s  {pt_cpu:6.2f} CPU-s")
        print(f"plain copy into one file     {copy_s:6.2f} s  {len(files) / copy_s:8.0f} images/s  {copy_cpu:6.2f} CPU-s")
        print(f"ratio pack / copy: {copy_s / pt_s:.2f}x wall (goal >= 0.5x), {copy_cpu / pt_cpu:.2f}x in CPU time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
