"""Fixtures for the serving tier: a small gallery (untrained recognizer, every image a template) and
the real service on a free loopback port (uvicorn in a thread)."""

from __future__ import annotations

import shutil
import threading
import time

import pytest

from tests.fixtures.services import free_port
from tests.gallery.conftest import gallery_data, untrained_detector, untrained_recognizer  # noqa: F401  (fixtures)

TOKEN = "s3cret-token-for-tests"
ENROLLED = 4  # identities in the gallery; the fifth is enrolled by the tests


@pytest.fixture(scope="session")
def people(gallery_data, tmp_path_factory):
    """identity folders: the first ENROLLED go into the gallery, one more to enrol, one stranger."""
    root = tmp_path_factory.mktemp("people")
    names = sorted(p.name for p in gallery_data["gallery"].iterdir())
    for name in names[:ENROLLED + 2]:
        shutil.copytree(gallery_data["gallery"] / name, root / name, symlinks=False)
    return {"root": root, "enrolled": names[:ENROLLED], "newcomer": names[ENROLLED], "stranger": names[ENROLLED + 1]}


@pytest.fixture
def gallery_dir(people, untrained_recognizer, tmp_path):
    """A fresh gallery per test (tests edit it). `template: all`: an enrolled photo matches itself (1.0)."""
    from facepipe.gallery.build import GalleryConfig, build_gallery

    data = tmp_path / "enrol"
    for name in people["enrolled"]:
        shutil.copytree(people["root"] / name, data / name)
    build_gallery(GalleryConfig(template="all"), data, None, untrained_recognizer, tmp_path / "gallery")
    return tmp_path / "gallery"


class Server:
    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the service did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture
def serve(gallery_dir, untrained_recognizer):
    """`serve(token=..., **options)` -> a running Server (stopped at the end of the test)."""
    from facepipe.serving.app import create_app
    from facepipe.serving.online import OnlineRecognizer

    started = []

    def start(token=TOKEN, detector=None, cfg=None, **options):
        service = OnlineRecognizer(gallery_dir, detector, untrained_recognizer, cfg)
        server = Server(create_app(service, token, **options)).__enter__()
        started.append(server)
        server.service = service
        return server

    yield start
    for server in started:
        server.__exit__()
