"""The base image every facepipe image starts FROM: Debian bookworm minbase + python3 (3.11), made locally.

No base image can be pulled here (and offline builds must not need one), so it is made with
mmdebstrap from the Debian archive (or a local mirror) and `docker import`ed under BASE_IMAGE.
Python 3.11 from bookworm matches the cp311 wheels in requirements.lock.

    python -m images.base [--tar PATH] [--force]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

BASE_IMAGE = "facepipe-base:bookworm"
SUITE = "bookworm"
PACKAGES = ("python3", "python3-venv", "ca-certificates")
# Fixed so the same package set gives a byte-identical root file system (mmdebstrap is reproducible).
SOURCE_DATE_EPOCH = "1700000000"
IMAGE_CHANGES = ('ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
                 'CMD ["/usr/bin/python3"]')


class BaseImageError(RuntimeError):
    """The base image is missing and cannot be made here."""


def docker_json(args: list[str], env: dict | None = None):
    out = subprocess.run(["docker", *args], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        return None
    return json.loads(out.stdout)


def base_identity(image: str = BASE_IMAGE, env: dict | None = None) -> str | None:
    """A content hash of the base image (its layers and run config), or None when it is absent.

    `docker import` stamps a creation time into the image id, so the id changes with every import of
    the same file system; the layer diff ids and the config do not, which keeps content tags stable.
    """
    info = docker_json(["image", "inspect", image], env)
    if not info:
        return None
    cfg = info[0].get("Config") or {}
    body = {"layers": info[0]["RootFS"].get("Layers", []),
            "config": {k: cfg.get(k) for k in ("Env", "Cmd", "Entrypoint", "User", "WorkingDir")}}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def make_rootfs(tar: Path, mirror: str | None = None) -> None:
    """mmdebstrap a minimal bookworm with python3 into `tar` (docs, man pages and locales left out)."""
    if shutil.which("mmdebstrap") is None:
        raise BaseImageError("mmdebstrap not installed (apt-get install mmdebstrap, or run "
                             "scripts/install-system-deps.sh); or import your own bookworm+python3 root "
                             f"file system with `docker import ROOTFS.tar {BASE_IMAGE}`")
    tar.parent.mkdir(parents=True, exist_ok=True)
    part = tar.with_suffix(".part.tar")
    cmd = ["mmdebstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES),
           "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-include=/usr/share/doc/*/copyright",
           "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/locale/*",
           "--aptopt=Acquire::Retries \"3\"", SUITE, str(part)]
    if mirror:
        cmd.append(mirror)
    env = {**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        part.unlink(missing_ok=True)
        raise BaseImageError(f"mmdebstrap failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    os.replace(part, tar)


def ensure_base(image: str = BASE_IMAGE, tar: Path | None = None, force: bool = False,
                mirror: str | None = None, env: dict | None = None, log=print) -> str:
    """Make the base image if the engine lacks it; returns its content identity.

    With `tar`, an existing root file system there is imported as is (and a new one is kept there).
    """
    if not force and (ident := base_identity(image, env)):
        return ident
    started = time.monotonic()
    keep = tar is not None
    tar = tar or Path(os.environ.get("TMPDIR", "/tmp")) / f"facepipe-base-{os.getpid()}.tar"
    try:
        if force or not tar.exists():
            log(f"making {image} with mmdebstrap ({SUITE}: {', '.join(PACKAGES)}) ...")
            make_rootfs(tar, mirror)
        proc = subprocess.run(["docker", "import", *[a for c in IMAGE_CHANGES for a in ("--change", c)],
                               str(tar), image], env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BaseImageError(f"docker import {tar} {image} failed: {proc.stderr.strip()}")
    finally:
        if not keep:
            tar.unlink(missing_ok=True)
    ident = base_identity(image, env)
    if ident is None:
        raise BaseImageError(f"{image} still missing after docker import")
    log(f"base image {image} ready in {time.monotonic() - started:.0f} s")
    return ident


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m images.base", description=__doc__.splitlines()[0])
    p.add_argument("--image", default=BASE_IMAGE, help="name:tag the Dockerfiles' FROM expects")
    p.add_argument("--tar", type=Path, help="keep (or reuse) the root file system tarball here")
    p.add_argument("--mirror", help="Debian mirror URL (default: mmdebstrap's, deb.debian.org)")
    p.add_argument("--force", action="store_true", help="remake even if the image exists")
    a = p.parse_args(argv)
    try:
        ident = ensure_base(a.image, a.tar, a.force, a.mirror)
    except BaseImageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{a.image} identity sha256:{ident}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
