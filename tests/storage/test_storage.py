"""The storage layer against real servers: round trips, checksums, incomplete folders, credentials, retries."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from facepipe import storage
from facepipe.errors import DataError, StorageError
from facepipe.manifest import write_manifest
from tests.fixtures.services import SECRET_KEY, free_port
from tests.storage.model_folders import make_model_folder, tree, without_manifest

PART_MB = 5  # S3's smallest part size: a 11 MB file goes up in 3 parts


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setenv("FACEPIPE_STORAGE_ATTEMPTS", "3")
    monkeypatch.setenv("FACEPIPE_STORAGE_BACKOFF_S", "0.01")
    monkeypatch.setenv("FACEPIPE_STORAGE_PART_MB", str(PART_MB))
    # Never pick up a developer's ~/.aws or an instance role: the tests control every credential.
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


# ---------------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("style", ["plain", "file_uri"])
def test_local_round_trip(tmp_path, style):
    src = make_model_folder(tmp_path / "src", big_mb=1)
    dst = tmp_path / "published" / "model"
    uri = str(dst) if style == "plain" else f"file://{dst}"
    storage.upload(src, uri, quiet=True)
    assert storage.is_complete(uri)
    out = storage.download(uri, tmp_path / "back", quiet=True)
    assert without_manifest(tree(out)) == tree(src)
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["files"]) == set(tree(src))


def test_s3_round_trip_folder_and_file(s3_env, tmp_path):
    s3_env.create_bucket("models")
    src = make_model_folder(tmp_path / "src")
    report = storage.upload(src, "s3://models/run1/recognizer", quiet=True)
    assert report.files == len(tree(src))

    client = s3_env.client()
    head = client.head_object(Bucket="models", Key="run1/recognizer/model.pt")
    assert head["ETag"].strip('"').endswith("-3"), "an 11 MB file should go up as a 3-part multipart upload"
    remote_manifest = json.loads(client.get_object(Bucket="models", Key="run1/recognizer/manifest.json")["Body"].read())
    assert remote_manifest["files"]["model.pt"]["size"] == 11 << 20

    out = storage.download("s3://models/run1/recognizer", tmp_path / "back", quiet=True)
    assert without_manifest(tree(out)) == tree(src)

    # Single files keep their sha256 in the object's metadata and come back verified.
    storage.upload(src / "model.pt", "s3://models/single/weights.pt", quiet=True)
    got = storage.download("s3://models/single/weights.pt", tmp_path / "w.pt", quiet=True)
    assert got.read_bytes() == (src / "model.pt").read_bytes()
    storage.upload(src / "model.pt", "s3://models/single/", quiet=True)  # into the prefix
    assert storage.download("s3://models/single/model.pt", tmp_path, quiet=True) == tmp_path / "model.pt"

    names = [e.name for e in storage.ls("s3://models/run1/recognizer")]
    assert names == ["empty.txt", "eval/", "manifest.json", "model.pt", "plots/"]
    assert storage.exists("s3://models/run1/recognizer") and storage.exists("s3://models/single/weights.pt")
    assert not storage.exists("s3://models/run2")


def test_s3_reupload_skips_unchanged_and_removes_stale(s3_env, tmp_path):
    s3_env.create_bucket("models")
    src = make_model_folder(tmp_path / "src", big_mb=1)
    storage.upload(src, "s3://models/reup", quiet=True)
    (src / "plots" / "part1.json").unlink()
    (src / "model.pt").write_bytes(b"new weights")
    report = storage.upload(src, "s3://models/reup", quiet=True)
    assert (report.files, report.skipped) == (1, len(tree(src)) - 1)
    listed = {e.name for e in storage.ls("s3://models/reup", recursive=True)}
    assert "plots/part1.json" not in listed
    out = storage.download("s3://models/reup", tmp_path / "back", quiet=True)
    assert without_manifest(tree(out)) == tree(src)


def test_obs_round_trip_with_the_obs_sdk(obs_env, tmp_path):
    obs_env.create_bucket("obs-models")
    src = make_model_folder(tmp_path / "src")
    storage.upload(src, "obs://obs-models/exp/detector", quiet=True)
    head = obs_env.client().head_object(Bucket="obs-models", Key="exp/detector/model.pt")
    assert head["ETag"].strip('"').endswith("-3"), "the OBS SDK should have used a multipart upload"
    assert head["Metadata"]["sha256"]
    out = storage.download("obs://obs-models/exp/detector", tmp_path / "back", quiet=True)
    assert without_manifest(tree(out)) == tree(src)
    with storage.localize("obs://obs-models/exp/detector/model.pt") as local:
        assert local.read_bytes() == (src / "model.pt").read_bytes()
    assert not local.exists(), "localize removes its temporary copy"


def test_producer_manifest_is_kept_and_checked(s3_env, tmp_path):
    s3_env.create_bucket("models")
    src = make_model_folder(tmp_path / "src", big_mb=1)
    write_manifest(src, kind="recognizer", extra={"backbone": "r18"})
    storage.publish(src, "s3://models/pub", quiet=True)
    out = storage.download("s3://models/pub", tmp_path / "back", quiet=True)
    assert json.loads((out / "manifest.json").read_text())["kind"] == "recognizer"

    (src / "model.pt").write_bytes(b"changed after the manifest was written")
    with pytest.raises(DataError, match="checksum differs from the folder's manifest"):
        storage.upload(src, "s3://models/pub2", quiet=True)
    assert not storage.is_complete("s3://models/pub2")

    bare = make_model_folder(tmp_path / "bare", big_mb=1)
    with pytest.raises(DataError, match="no manifest.json"):
        storage.publish(bare, "s3://models/pub3")


def test_output_dir_publishes_only_on_success(s3_env, tmp_path):
    s3_env.create_bucket("models")
    with storage.output_dir("s3://models/step-ok", quiet=True) as out:
        (out / "metrics.json").write_text("{}")
        write_manifest(out, kind="metrics")
    assert storage.is_complete("s3://models/step-ok")
    with pytest.raises(RuntimeError):
        with storage.output_dir("s3://models/step-failed", quiet=True) as out:
            (out / "metrics.json").write_text("{}")
            raise RuntimeError("the step crashed")
    assert not storage.exists("s3://models/step-failed")


# --------------------------------------------------------------------------- refusals and errors

def test_corrupt_object_is_refused(s3_env, tmp_path):
    s3_env.create_bucket("models")
    src = make_model_folder(tmp_path / "src", big_mb=1)
    storage.upload(src, "s3://models/corrupt", quiet=True)
    s3_env.client().put_object(Bucket="models", Key="corrupt/plots/part1.json", Body=b"tampered!" * 3)
    with pytest.raises(StorageError, match=r"corrupt/plots/part1.json: (checksum|size) mismatch"):
        storage.download("s3://models/corrupt", tmp_path / "back", quiet=True)
    assert not (tmp_path / "back" / "manifest.json").exists(), "a refused download must not look complete"
    assert not (tmp_path / "back" / "plots" / "part1.json").exists()


def test_same_size_tampering_is_caught_by_sha256(s3_env, tmp_path):
    s3_env.create_bucket("models")
    src = tmp_path / "one"
    src.mkdir()
    (src / "a.bin").write_bytes(b"A" * 1000)
    storage.upload(src, "s3://models/tamper", quiet=True)
    s3_env.client().put_object(Bucket="models", Key="tamper/a.bin", Body=b"B" * 1000)
    with pytest.raises(StorageError, match="checksum mismatch"):
        storage.download("s3://models/tamper", tmp_path / "back", quiet=True)


def test_incomplete_folder_is_refused(s3_env, tmp_path):
    s3_env.create_bucket("models")
    client = s3_env.client()
    for name in ("model.pt", "metrics.json"):
        client.put_object(Bucket="models", Key=f"half/{name}", Body=b"x")
    with pytest.raises(StorageError, match=r"incomplete folder \(2 files but no manifest.json\)"):
        storage.download("s3://models/half", tmp_path / "back", quiet=True)
    with pytest.raises(StorageError, match="incomplete"):
        with storage.localize("s3://models/half"):
            pass
    assert not (tmp_path / "back").exists()
    with pytest.raises(StorageError, match="not found"):
        storage.download("s3://models/nothing-here", tmp_path / "back", quiet=True)


@pytest.mark.parametrize("scheme, missing", [
    ("s3", "AWS_SECRET_ACCESS_KEY"), ("s3", "AWS_ACCESS_KEY_ID"),
    ("obs", "OBS_SECRET_ACCESS_KEY"), ("obs", "OBS_ACCESS_KEY_ID"), ("obs", "OBS_ENDPOINT"),
])
def test_missing_credentials_name_the_variable(monkeypatch, tmp_path, scheme, missing):
    for k, v in {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
                 "OBS_ACCESS_KEY_ID": "k", "OBS_SECRET_ACCESS_KEY": "s", "OBS_ENDPOINT": "http://127.0.0.1:9"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv(missing)
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(StorageError, match=f"environment variable {missing} is not set"):
        storage.upload(tmp_path / "f.txt", f"{scheme}://bucket/f.txt", quiet=True)


@pytest.mark.parametrize("scheme", ["s3", "obs"])
def test_endpoint_down_retries_then_names_uri_and_endpoint(monkeypatch, tmp_path, caplog, scheme):
    dead = f"http://127.0.0.1:{free_port()}"
    for k, v in {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_ENDPOINT_URL": dead,
                 "OBS_ACCESS_KEY_ID": "k", "OBS_SECRET_ACCESS_KEY": SECRET_KEY, "OBS_ENDPOINT": dead}.items():
        monkeypatch.setenv(k, v)
    src = make_model_folder(tmp_path / "src", big_mb=1, small=2)
    with caplog.at_level(logging.WARNING, logger="facepipe.storage"):
        with pytest.raises(StorageError) as err:
            storage.upload(src, f"{scheme}://bucket/down", quiet=True)
    text = str(err.value)
    assert f"{scheme}://bucket/down" in text and dead in text and "after 3 attempts" in text
    retries = [r for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 2
    assert SECRET_KEY not in text + caplog.text
    with pytest.raises(StorageError, match=rf"{scheme}://bucket/model.*after 3 attempts.*{dead}"):
        storage.download(f"{scheme}://bucket/model", tmp_path / "back", quiet=True)


def test_wrong_secret_is_not_retried_and_not_echoed(s3_env, monkeypatch, tmp_path):
    s3_env.create_bucket("models")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value-123")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(StorageError, match="access refused") as err:
        storage.upload(tmp_path / "f.txt", "s3://models/f.txt", quiet=True)
    assert "wrong-secret-value-123" not in str(err.value)


def test_bad_uris_are_explained():
    with pytest.raises(StorageError, match="unsupported URI scheme 'gs'"):
        storage.parse_uri("gs://bucket/x")
    with pytest.raises(StorageError, match="no bucket"):
        storage.parse_uri("s3:///x")
    assert storage.parse_uri("file:///data/x").path == Path("/data/x")
    assert storage.parse_uri("obs://b/k/x").key == "k/x"


def test_unsafe_manifest_paths_are_refused(s3_env, tmp_path):
    s3_env.create_bucket("models")
    body = {"kind": "folder", "files": {"../escape.txt": {"sha256": "0" * 64, "size": 1}}}
    s3_env.client().put_object(Bucket="models", Key="evil/manifest.json", Body=json.dumps(body).encode())
    with pytest.raises(DataError, match="unsafe file name"):
        storage.download("s3://models/evil", tmp_path / "back", quiet=True)
    assert not (tmp_path / "escape.txt").exists()


# ------------------------------------------------------------------------------------------ CLI

def test_cli_cp_and_ls(s3_env, tmp_path, capsys):
    from facepipe.cli import main

    s3_env.create_bucket("cli-bucket")
    src = make_model_folder(tmp_path / "src", big_mb=1, small=2)
    assert main(["storage", "cp", str(src), "s3://cli-bucket/m", "-q"]) == 0
    assert main(["storage", "ls", "s3://cli-bucket/m"]) == 0
    out = capsys.readouterr().out
    assert "manifest.json" in out and "model.pt" in out and "1.0 MB" in out
    assert main(["storage", "cp", "s3://cli-bucket/m", str(tmp_path / "back"), "-q"]) == 0
    assert without_manifest(tree(tmp_path / "back")) == tree(src)
    assert main(["storage", "cp", "s3://cli-bucket/m", "s3://cli-bucket/copy", "-q"]) == 0
    assert storage.is_complete("s3://cli-bucket/copy")

    s3_env.client().put_object(Bucket="cli-bucket", Key="partial/x.bin", Body=b"x")
    assert main(["storage", "ls", "s3://cli-bucket/partial"]) == 0
    assert "not a complete facepipe folder" in capsys.readouterr().out
    assert main(["storage", "cp", "s3://cli-bucket/partial", str(tmp_path / "p")]) == 2
    assert "incomplete folder" in capsys.readouterr().err


@pytest.mark.parametrize("scheme", ["s3", "obs"])
def test_missing_bucket_is_named_not_retried(s3_env, obs_env, tmp_path, scheme):
    (tmp_path / "f.txt").write_text("x")
    for src in (tmp_path / "f.txt", tmp_path):
        with pytest.raises(StorageError, match=rf"{scheme}://no-such-bucket/.*bucket does not exist; create it first"):
            storage.upload(src, f"{scheme}://no-such-bucket/x", quiet=True)


@pytest.mark.parametrize("endpoint, expected", [
    ("https://obs.cn-north-4.myhuaweicloud.com",
     {"signature": "obs", "region": "cn-north-4", "path_style": False, "is_secure": True, "port": 443}),
    ("http://127.0.0.1:9000",
     {"signature": "v4", "region": "us-east-1", "path_style": True, "is_secure": False, "port": 9000}),
])
def test_obs_client_settings_follow_the_endpoint(monkeypatch, endpoint, expected):
    """Huawei's endpoints get the native signature and their region; S3-compatible servers v4 + path style."""
    monkeypatch.setenv("OBS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("OBS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("OBS_ENDPOINT", endpoint)
    monkeypatch.delenv("OBS_REGION", raising=False)
    monkeypatch.delenv("OBS_SIGNATURE", raising=False)
    client = storage.backend_for(storage.parse_uri("obs://bucket/x")).client
    assert {k: getattr(client, k) for k in expected} == expected


def test_upload_leaves_unrelated_objects_alone(s3_env, tmp_path):
    """Only files of the version being replaced are removed, never other objects under the prefix."""
    s3_env.create_bucket("shared")
    client = s3_env.client()
    client.put_object(Bucket="shared", Key="team/notes.txt", Body=b"someone else's")
    src = make_model_folder(tmp_path / "src", big_mb=1, small=2)
    storage.upload(src, "s3://shared/team", quiet=True)
    storage.upload(src, "s3://shared/team", quiet=True)
    assert client.get_object(Bucket="shared", Key="team/notes.txt")["Body"].read() == b"someone else's"

    local = tmp_path / "home"
    local.mkdir()
    (local / "keep.txt").write_text("mine")
    storage.upload(src, local, quiet=True)
    (src / "empty.txt").unlink()
    storage.upload(src, local, quiet=True)
    assert (local / "keep.txt").read_text() == "mine"
    assert not (local / "empty.txt").exists(), "a file of the replaced version is removed"
