"""An S3 endpoint that dies mid-upload and comes back; credentials kept out of every log and message."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from facepipe import storage
from facepipe.errors import StorageError
from tests.fixtures.services import ACCESS_KEY, SECRET_KEY, S3Server
from tests.storage.model_folders import make_model_folder, tree, without_manifest


@pytest.fixture
def private_s3(tmp_path, monkeypatch):
    """A nanio server of this test's own, which the test may kill and restart."""
    server = S3Server.start_nanio(tmp_path / "nanio")
    server.create_bucket("models")
    for k, v in server.aws_env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("FACEPIPE_STORAGE_ATTEMPTS", "3")
    monkeypatch.setenv("FACEPIPE_STORAGE_BACKOFF_S", "0.01")
    monkeypatch.setenv("FACEPIPE_STORAGE_PART_MB", "5")
    yield server
    server.shutdown()


def upload_killed_after(server: S3Server, src, uri, n_files: int):
    """Upload one file at a time and kill the server after n_files have landed."""
    landed = []

    def on_file(rel):
        landed.append(rel)
        if len(landed) == n_files:
            server.stop()

    with pytest.raises(StorageError, match="failed after 3 attempts") as err:
        storage.upload(src, uri, workers=1, quiet=True, on_file=on_file)
    assert server.endpoint in str(err.value)
    return landed


def test_server_killed_inside_a_multipart_upload(private_s3, tmp_path, monkeypatch):
    """The endpoint dies while the parts of the 11 MB weights file are in flight."""
    src = make_model_folder(tmp_path / "v1", small=2)
    uri = "s3://models/run8/recognizer"
    counted = storage.transfer._ByteProgress.__call__
    sent = []

    def count_and_kill(self, n):
        sent.append(n)
        if sum(sent) > 6 << 20 and private_s3.running:  # past the first 5 MB part of model.pt
            private_s3.stop()
        counted(self, n)

    monkeypatch.setattr(storage.transfer._ByteProgress, "__call__", count_and_kill)
    with pytest.raises(StorageError, match="failed after 3 attempts"):
        storage.upload(src, uri, workers=1, quiet=True)
    monkeypatch.setattr(storage.transfer._ByteProgress, "__call__", counted)

    private_s3.start()
    assert not storage.is_complete(uri)
    keys = [o["Key"] for o in private_s3.client().list_objects_v2(Bucket="models").get("Contents", [])]
    assert "run8/recognizer/model.pt" not in keys, "a half-sent multipart upload is never an object"
    storage.upload(src, uri, quiet=True)
    out = storage.download(uri, tmp_path / "back", quiet=True)
    assert without_manifest(tree(out)) == tree(src)


def test_server_killed_mid_upload_then_restarted(private_s3, tmp_path):
    src = make_model_folder(tmp_path / "v1", small=8)
    uri = "s3://models/run7/recognizer"
    landed = upload_killed_after(private_s3, src, uri, n_files=3)
    assert len(landed) == 3

    private_s3.start()  # same port, same data: the endpoint is back
    assert storage.exists(uri), "some files did land before the crash"
    assert not storage.is_complete(uri)
    with pytest.raises(StorageError, match="incomplete folder"):
        storage.download(uri, tmp_path / "back", quiet=True)
    assert not (tmp_path / "back" / "manifest.json").exists()

    report = storage.upload(src, uri, quiet=True)  # the rerun
    assert report.skipped == 3, "files that landed intact are not sent again"
    assert report.files == len(tree(src)) - 3
    out = storage.download(uri, tmp_path / "back", quiet=True)
    assert without_manifest(tree(out)) == tree(src)


def test_interrupted_overwrite_never_mixes_versions(private_s3, tmp_path):
    """v1 complete, v2 upload dies halfway: the folder must not pass as complete (v1+v2 mixed)."""
    uri = "s3://models/latest/detector"
    v1 = make_model_folder(tmp_path / "v1", small=8, seed=1)
    storage.upload(v1, uri, quiet=True)
    assert storage.is_complete(uri)

    v2 = make_model_folder(tmp_path / "v2", small=8, seed=2)
    upload_killed_after(private_s3, v2, uri, n_files=4)
    private_s3.start()
    assert not storage.is_complete(uri)
    with pytest.raises(StorageError, match="incomplete folder"):
        with storage.localize(uri):
            pass

    storage.upload(v2, uri, quiet=True)
    with storage.localize(uri) as local:
        assert without_manifest(tree(local)) == tree(v2)


def test_secrets_never_in_logs_or_output(private_s3, tmp_path, caplog):
    src = make_model_folder(tmp_path / "src", big_mb=6, small=3)
    with caplog.at_level(logging.DEBUG):
        storage.upload(src, "s3://models/logged", quiet=False)
        storage.download("s3://models/logged", tmp_path / "back", quiet=False)
    assert caplog.records, "debug logging was captured"
    assert SECRET_KEY not in caplog.text
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("facepipe"))
    assert ACCESS_KEY not in ours

    # The CLI, on success and on failure (endpoint down after retries).
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cli = [sys.executable, "-m", "facepipe.cli", "storage"]
    ok = subprocess.run(cli + ["cp", str(src), "s3://models/cli"], env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    private_s3.stop()
    bad = subprocess.run(cli + ["cp", str(src), "s3://models/cli2"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "failed after 3 attempts" in bad.stderr
    for out in (ok.stdout, ok.stderr, bad.stdout, bad.stderr):
        assert SECRET_KEY not in out and ACCESS_KEY not in out


def test_finding_3_remote_output_is_checked_before_any_work(private_s3, monkeypatch):
    entered = []
    with pytest.raises(StorageError, match="write check s3://nobucket/run1 .*bucket does not exist"):
        with storage.output_dir("s3://nobucket/run1"):
            entered.append(True)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    with pytest.raises(StorageError, match="write check s3://models/run1 .*access refused"):
        with storage.output_dir("s3://models/run1"):
            entered.append(True)
    assert not entered, "the step never started"
    assert not private_s3.client().list_objects_v2(Bucket="models").get("Contents"), "the probe is deleted"


def test_finding_3_failed_upload_keeps_the_local_result_and_says_where(private_s3):
    import re
    import shutil

    from facepipe.manifest import write_manifest

    with pytest.raises(StorageError, match="the finished output is kept at") as err:
        with storage.output_dir("s3://models/trained") as local:
            (local / "model.pt").write_bytes(b"hours of training")
            write_manifest(local, "recognizer")
            private_s3.stop()  # the endpoint goes down as the upload starts
    kept = re.search(r"kept at (\S+) ", str(err.value)).group(1)
    with open(os.path.join(kept, "model.pt"), "rb") as f:
        assert f.read() == b"hours of training"
    private_s3.start()
    storage.publish(kept, "s3://models/trained", quiet=True)  # what the message tells the user to do
    assert storage.is_complete("s3://models/trained")
    shutil.rmtree(kept)


@pytest.mark.timeout(90)  # the bound: with the old 60 s read timeout and retries, many minutes
def test_finding_10_a_silent_endpoint_fails_in_bounded_time_with_its_password_redacted(monkeypatch):
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    held = []  # accepted and never answered

    def accept():
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    port = listener.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://admin:hunter2secret@127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("FACEPIPE_STORAGE_ATTEMPTS", "2")
    monkeypatch.setenv("FACEPIPE_STORAGE_BACKOFF_S", "0.01")
    monkeypatch.setenv("FACEPIPE_STORAGE_TIMEOUT_S", "1")
    try:
        with pytest.raises(StorageError, match="failed after 2 attempts") as err:
            storage.exists("s3://models/x")
    finally:
        listener.close()
        for conn in held:
            conn.close()
    assert "hunter2secret" not in str(err.value) and f"admin:***@127.0.0.1:{port}" in str(err.value)


@pytest.mark.timeout(120)
def test_server_stopped_mid_upload_and_restarted_within_the_retries_the_same_upload_succeeds(
        private_s3, tmp_path, monkeypatch):
    import threading

    monkeypatch.setenv("FACEPIPE_STORAGE_ATTEMPTS", "6")
    monkeypatch.setenv("FACEPIPE_STORAGE_BACKOFF_S", "0.5")  # waits 0.5, 1, 2, 4, 8 s: the restart fits
    src = make_model_folder(tmp_path / "v1", small=8)
    uri = "s3://models/run9/recognizer"
    landed, stopped, result = [], threading.Event(), {}

    def on_file(rel):
        landed.append(rel)
        if len(landed) == 3:
            private_s3.stop()
            stopped.set()

    def upload():
        try:
            result["report"] = storage.upload(src, uri, workers=1, quiet=True, on_file=on_file)
        except StorageError as exc:
            result["error"] = exc

    worker = threading.Thread(target=upload)
    worker.start()
    assert stopped.wait(60)
    private_s3.start()  # from this thread: the server dies with the thread that started it
    worker.join(90)
    assert "error" not in result, result.get("error")
    assert result["report"].files + result["report"].skipped == len(tree(src))
    assert storage.is_complete(uri)
    with storage.localize(uri) as local:
        assert without_manifest(tree(local)) == tree(src)


def test_a_burst_of_5xx_answers_is_retried_and_the_upload_completes(private_s3, tmp_path, monkeypatch):
    """A proxy in front of the server answers the first requests 503 (an overloaded endpoint)."""
    import http.client
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import urlparse

    target = urlparse(private_s3.endpoint)
    failures = {"left": 6, "sent": 0}
    lock = threading.Lock()

    class Proxy(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _any(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with lock:
                fail = failures["left"] > 0
                failures["left"] -= fail
                failures["sent"] += fail
            if fail:
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
            upstream.request(self.command, self.path, body, dict(self.headers))
            answer = upstream.getresponse()
            data = answer.read()
            self.send_response(answer.status)
            for k, v in answer.getheaders():
                if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            upstream.close()

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

        def log_message(self, *args):
            pass

    proxy = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.server_port}")
    monkeypatch.setenv("FACEPIPE_STORAGE_ATTEMPTS", "6")
    try:
        src = make_model_folder(tmp_path / "v1", big_mb=1, small=4)
        storage.upload(src, "s3://models/burst", workers=1, quiet=True)
        assert failures["sent"] == 6, "the burst was answered"
        assert storage.is_complete("s3://models/burst")
        with storage.localize("s3://models/burst") as local:
            assert without_manifest(tree(local)) == tree(src)
    finally:
        proxy.shutdown()
