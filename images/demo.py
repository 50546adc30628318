"""`make demo-containers`: the compiled pipeline run with `facepipe run --runner docker`, every step in its image.

With a Docker engine configured (DOCKER_HOST, or the default socket answers), the steps run in
the images the images lock names (FACEPIPE_IMAGES_LOCK, else images/images.lock.json after
`make push-images`). Without one, the project's sandbox (images/sandbox.py: dockerd and
docker-registry on 127.0.0.1) is started, the base image made and `make push-images` run into
that registry with a temporary lock; both are stopped by PID afterwards.

    python -m images.demo [facepipe run arguments, e.g. --job tiny]
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from images.sandbox import Sandbox

PROJECT = Path(__file__).resolve().parents[1]


def engine_answers(env: dict) -> bool:
    return subprocess.run(["docker", "version"], env=env, capture_output=True).returncode == 0


def run(args: list[str], env: dict) -> int:
    cmd = [sys.executable, "-m", "facepipe.cli", "run", "--runner", "docker", *args]
    return subprocess.run(cmd, cwd=PROJECT, env=env).returncode


@contextlib.contextmanager
def docker_env(log=print):
    """The environment for `--runner docker`: the configured engine as it is, else a sandbox engine and
    registry with the images pushed there (FACEPIPE_IMAGES_LOCK names them), stopped by PID on exit."""
    if engine_answers(dict(os.environ)):
        yield dict(os.environ)
        return
    root = Path(tempfile.mkdtemp(prefix="fp-demo-", dir="/tmp"))
    box = Sandbox(root, die_with_parent=True)
    try:
        box.start()
        log(f"[demo-containers] no Docker engine configured: sandbox engine and registry started in {root}")
        subprocess.run([sys.executable, "-m", "images.base"], cwd=PROJECT, env=box.env, check=True)
        lock = root / "images.lock.json"
        subprocess.run(["make", "--no-print-directory", "push-images", f"REGISTRY={box.registry_host}/facepipe",
                        f"IMAGES_LOCK={lock}"], cwd=PROJECT, env=box.env, check=True)
        yield {**box.env, "FACEPIPE_IMAGES_LOCK": str(lock)}
    finally:
        box.stop()
        box.remove()


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    with docker_env() as env:
        return run(args, env)


if __name__ == "__main__":
    sys.exit(main())
