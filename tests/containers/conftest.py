"""The containers tier: a real dockerd and registry on 127.0.0.1, the base image made with mmdebstrap,
and `make push-images` into that registry. Everything started here is stopped by PID at the end.

DOCKER_HOST points at the sandbox engine only in the environments handed to subprocesses here;
the rest of the test session never sees it. FACEPIPE_BASE_TAR=PATH reuses (or keeps) the base root
file system tarball between runs, saving mmdebstrap's minute during development.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.containers.harness import PROJECT_ROOT, TIMINGS, make_push_images, summary_table


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        terminalreporter.section("containers tier: measured")
        for key, value in TIMINGS.items():
            terminalreporter.write_line(f"{key}: {value}")


@pytest.fixture(scope="session")
def sandbox():
    """dockerd + docker-registry under a short temp folder (a unix socket path must stay short)."""
    from images.sandbox import Sandbox, missing_tools

    missing = missing_tools()
    if missing and os.geteuid() == 0:
        subprocess.run(["bash", str(PROJECT_ROOT / "scripts" / "install-system-deps.sh")], check=False)
        missing = missing_tools()
    if missing:
        pytest.skip(f"containers tier needs {', '.join(missing)} (Debian: docker.io docker-registry mmdebstrap); "
                    "run scripts/install-system-deps.sh as root")
    root = Path(tempfile.mkdtemp(prefix="fp-dock-", dir="/tmp"))
    box = Sandbox(root)
    try:
        box.start()
    except RuntimeError as exc:
        box.stop()
        box.remove()
        pytest.fail(f"could not start the Docker sandbox: {exc}")
    try:
        yield box
    finally:
        box.stop()
        box.remove()


@pytest.fixture(scope="session")
def base_image(sandbox):
    """facepipe-base:bookworm made with mmdebstrap and `docker import` (images/base.py)."""
    cmd = [sys.executable, "-m", "images.base"]
    if os.environ.get("FACEPIPE_BASE_TAR"):
        cmd += ["--tar", os.environ["FACEPIPE_BASE_TAR"]]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, env=sandbox.env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    TIMINGS["base image (mmdebstrap + import)"] = f"{time.monotonic() - started:.0f} s"
    return proc.stdout.strip().split()[-1]


@pytest.fixture(scope="session")
def registry_password() -> str:
    return "fp-" + secrets.token_hex(12)


@pytest.fixture(scope="session")
def source(tmp_path_factory) -> Path:
    """A snapshot of the project's source: the images are built from it, so edits made to the
    checkout while the tier runs cannot change the content tags between the two pushes."""
    snap = tmp_path_factory.mktemp("source")
    shutil.copytree(PROJECT_ROOT / "src", snap / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy2(PROJECT_ROOT / "pyproject.toml", snap / "pyproject.toml")
    return snap


@pytest.fixture(scope="session")
def pushed(sandbox, base_image, tmp_path_factory, registry_password, source):
    """`make push-images` into the sandbox registry, with credentials in the environment (the
    registry accepts any: it proves the login path runs and that secrets stay out of everything)."""
    registry = f"{sandbox.registry_host}/facepipe"
    lock = tmp_path_factory.mktemp("lock") / "images.lock.json"
    creds = {"REGISTRY_USERNAME": "facepipe-ci", "REGISTRY_PASSWORD": registry_password}
    proc, seconds = make_push_images(sandbox, registry, lock, source, creds)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    TIMINGS["make push-images (first)"] = f"{seconds:.0f} s, summary:\n" + summary_table(output)
    return {"registry": registry, "lock": lock, "body": json.loads(lock.read_text()), "output": output,
            "source": source}
