"""Data trees as shards (facepipe.data.shards): one tar per folder, exact round trip, steps get the folder
they read, unsafe or cut shards are refused by name."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from facepipe.data.shards import SUFFIX, TREE_MANIFEST, is_sharded, shard_tree, unsharded
from facepipe.errors import DataError
from facepipe.manifest import MANIFEST, read_manifest, sha256_file


def tree_files(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def sharded(synth_small, tmp_path):
    root = tmp_path / "images"
    shutil.copytree(synth_small, root)
    shards = shard_tree(root)
    return root, shards


def test_a_tree_becomes_one_shard_per_folder_and_comes_back_exactly(synth_small, sharded):
    root, shards = sharded
    folders = sorted(p.name for p in synth_small.iterdir() if p.is_dir())
    assert sorted(shards) == folders and {"faces", "detection"} <= set(shards)
    # What an artifact store now moves: the shards, the loose files and two manifests.
    loose = sorted(p.name for p in synth_small.iterdir() if p.is_file() and p.name != MANIFEST)
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [f"{n}{SUFFIX}" for n in folders] + loose + [MANIFEST, TREE_MANIFEST])
    assert shards["faces"]["files"] == sum(1 for p in (synth_small / "faces").rglob("*") if p.is_file())
    read_manifest(root, verify=True)
    assert is_sharded(root) and shard_tree(root) == shards  # sharding twice changes nothing
    with unsharded(root) as whole:
        assert tree_files(Path(whole)) == tree_files(synth_small)  # manifest.json included
        read_manifest(whole, verify=True)
    assert not Path(whole).exists()  # the extraction is temporary


def test_the_same_tree_gives_the_same_shard_bytes(synth_small, sharded, tmp_path):
    root, _ = sharded
    again = tmp_path / "again"
    shutil.copytree(synth_small, again)
    for p in again.rglob("*"):  # other file times must not matter
        if p.is_file():
            p.touch()
    shard_tree(again)
    for name in ("faces", "detection"):
        assert sha256_file(again / f"{name}{SUFFIX}") == sha256_file(root / f"{name}{SUFFIX}")


def test_a_step_gets_just_the_folder_its_port_names(synth_small, sharded, tmp_path, monkeypatch):
    from facepipe import edge
    from facepipe.steps import STEPS

    root, _ = sharded
    monkeypatch.setenv("FACEPIPE_UNPACK_DIR", str(tmp_path / "disk"))
    (tmp_path / "disk").mkdir()
    step = STEPS["train_detection"]
    with edge.local_inputs(step, step.local_inputs({"images": str(root)})) as local:
        detection = Path(local["data_dir"])
        assert detection.name == "detection" and detection.is_relative_to(tmp_path / "disk")
        assert tree_files(detection) == tree_files(synth_small / "detection")
        assert not (detection.parent / "faces").exists()  # only detection.tar was extracted
    assert not detection.exists()
    # A tree that is not sharded passes through untouched, and so does a URI.
    with edge.local_inputs(step, step.local_inputs({"images": str(synth_small)})) as local:
        assert local["data_dir"] == str(synth_small / "detection")
    with unsharded("s3://bucket/images/detection") as given:
        assert given == "s3://bucket/images/detection"


def test_an_interrupted_sharding_reads_as_incomplete(synth_small, tmp_path, monkeypatch):
    root = tmp_path / "images"
    shutil.copytree(synth_small, root)
    monkeypatch.setattr(shutil, "rmtree", lambda *a, **k: (_ for _ in ()).throw(OSError("killed")))
    with pytest.raises(OSError, match="killed"):
        shard_tree(root)
    assert not (root / MANIFEST).exists() and not is_sharded(root)
    with pytest.raises(DataError, match="incomplete"):
        read_manifest(root)


def rewrite_shard(root: Path, name: str, entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    """Replace a shard by one holding `entries`, its manifest entry updated to match (as a forger would)."""
    shard = root / f"{name}{SUFFIX}"
    with tarfile.open(shard, "w") as tar:
        for info, data in entries:
            info.size = len(data or b"")
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    body = json.loads((root / MANIFEST).read_text())
    body["files"][shard.name] = {"sha256": sha256_file(shard), "size": shard.stat().st_size}
    (root / MANIFEST).write_text(json.dumps(body))


@pytest.mark.parametrize("member, match", [("../escape.txt", "outside detection/"),
                                           ("faces/x.jpg", "outside detection/"),
                                           ("/etc/detection.txt", "outside detection/"),
                                           ("detection/../../up.txt", "outside detection/")])
def test_a_shard_with_members_outside_its_folder_is_refused(sharded, member, match):
    root, _ = sharded
    rewrite_shard(root, "detection", [(tarfile.TarInfo(member), b"x")])
    with pytest.raises(DataError, match=match) as err:
        with unsharded(root / "detection"):
            pass
    assert "detection.tar" in str(err.value)


def test_a_link_in_a_shard_is_refused(sharded):
    root, _ = sharded
    link = tarfile.TarInfo("detection/passwd")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    rewrite_shard(root, "detection", [(link, None)])
    with pytest.raises(DataError, match="not a plain file or folder"):
        with unsharded(root / "detection"):
            pass


def test_a_cut_shard_is_refused_naming_it(sharded):
    root, _ = sharded
    shard = root / f"faces{SUFFIX}"
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    with pytest.raises(DataError, match=r"faces\.tar.*its manifest says"):
        with contextlib.ExitStack() as stack:
            stack.enter_context(unsharded(root))
