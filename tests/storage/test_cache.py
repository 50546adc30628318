"""The node cache of input folders against the test S3 server: ranks racing for it download once."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest

from facepipe import storage
from facepipe.manifest import content_digest, files_digest, write_manifest
from facepipe.storage.cache import cache_dir, cached_folder
from facepipe.storage.uri import parse_uri
from tests.storage.model_folders import make_model_folder, tree, without_manifest


@pytest.fixture(autouse=True)
def no_ambient_cache(monkeypatch):
    monkeypatch.delenv("FACEPIPE_CACHE_DIR", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)


def _published(s3_env, tmp_path: Path, name: str, seed: int = 0) -> str:
    s3_env.create_bucket("data")
    src = make_model_folder(tmp_path / f"src-{name}", big_mb=4, seed=seed)
    write_manifest(src, "records")
    uri = f"s3://data/{name}"
    storage.upload(src, uri, quiet=True)
    return uri


def _rank(uri: str, root: str, barrier, results) -> None:
    """One rank of a node: waits for the other, then localizes the input through the cache."""
    barrier.wait()
    path, report = cached_folder(parse_uri(uri), Path(root), quiet=True)
    results.put((os.getpid(), str(path), report.files, report.bytes))


def test_two_processes_racing_download_once(s3_env, tmp_path):
    uri = _published(s3_env, tmp_path, "rec")
    root = tmp_path / "cache"
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(uri, str(root), barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    got = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    paths = {g[1] for g in got}
    fetched = sorted(g[2] for g in got)
    assert len(paths) == 1, got
    assert fetched[0] == 0 and fetched[1] > 0, f"exactly one rank downloads; the other waits and reuses: {got}"
    entry = Path(paths.pop())
    assert entry.name == content_digest(entry), "the entry is named by its manifest digest"
    assert without_manifest(tree(entry)) == without_manifest(tree(tmp_path / "src-rec"))
    assert sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock")) == [entry.name], \
        "no partial download is left beside the entry"


def test_next_job_reuses_and_changed_data_is_a_new_entry(s3_env, tmp_path):
    uri = _published(s3_env, tmp_path, "rec2")
    root = tmp_path / "cache"
    first, report = cached_folder(parse_uri(uri), root, quiet=True)
    assert report.files > 0
    again, report = cached_folder(parse_uri(uri), root, quiet=True)
    assert again == first and report.files == 0 and report.bytes == 0

    # the same URI republished with other contents must not be served from the old entry
    other = make_model_folder(tmp_path / "src-other", big_mb=1, seed=7)
    write_manifest(other, "records")
    storage.upload(other, uri, quiet=True)
    changed, report = cached_folder(parse_uri(uri), root, quiet=True)
    assert changed != first and report.files > 0
    assert without_manifest(tree(changed)) == without_manifest(tree(other))


def test_crashed_partial_is_replaced(s3_env, tmp_path):
    uri = _published(s3_env, tmp_path, "rec3")
    root = tmp_path / "cache"
    remote = json.loads(s3_env.client().get_object(Bucket="data", Key="rec3/manifest.json")["Body"].read())
    stale = root / f"{files_digest(remote['files'])}.partial-999999"  # a rank killed mid-download
    stale.mkdir(parents=True)
    (stale / "model.pt").write_bytes(b"half a file")
    entry, report = cached_folder(parse_uri(uri), root, quiet=True)
    assert report.files > 0 and not stale.exists()
    assert (entry / "model.pt").read_bytes() == (tmp_path / "src-rec3" / "model.pt").read_bytes()


def test_localize_uses_the_cache_only_for_several_local_ranks(s3_env, tmp_path, monkeypatch):
    uri = _published(s3_env, tmp_path, "rec4")
    assert cache_dir() is None
    with storage.localize(uri, quiet=True) as path:
        private = Path(path)
        assert (private / "manifest.json").is_file()
    assert not private.exists(), "without a cache the download is removed after the step"

    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # what torchrun sets on a node of 2 ranks
    monkeypatch.setenv("FACEPIPE_CACHE_DIR", str(tmp_path / "node-cache"))
    with storage.localize(uri, quiet=True) as path:
        cached = Path(path)
        assert cached.parent == tmp_path / "node-cache"
    assert (cached / "manifest.json").is_file(), "a cache entry outlives the step: the next job reuses it"
    monkeypatch.delenv("FACEPIPE_CACHE_DIR")
    assert cache_dir() is not None, "torchrun's LOCAL_WORLD_SIZE > 1 turns the cache on by itself"
