"""Helpers shared by the containers tier's fixtures and tests (one module, so TIMINGS is one dict)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# Measured numbers, printed after the run (image sizes, build and push times).
TIMINGS: dict[str, str] = {}


def docker(sandbox, *args, check=True, timeout=600) -> subprocess.CompletedProcess:
    proc = subprocess.run(["docker", *args], env=sandbox.env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc


def summary_table(output: str) -> str:
    """The table images.build prints last (image, tag, size, built, pushed, seconds)."""
    start = output.rfind("\nimage ")
    return output[start + 1:].rstrip() if start >= 0 else "(no summary printed)"


def make_push_images(sandbox, registry: str, lock: Path, source: Path, extra_env: dict | None = None):
    env = {**sandbox.env, **(extra_env or {})}
    started = time.monotonic()
    proc = subprocess.run(["make", "--no-print-directory", "push-images", f"REGISTRY={registry}",
                           f"IMAGES_LOCK={lock}", f"IMAGES_ARGS=--source {source}"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=1200)
    return proc, time.monotonic() - started
