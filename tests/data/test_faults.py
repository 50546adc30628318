"""Issue 15 findings on data (pack, unpack, rec-info): a failure never leaves output that looks complete."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest

from facepipe.cli import main
from facepipe.data.insightface import FaceRecordSet, InsightFaceWriter, write_property
from facepipe.errors import DataError
from tests.data.test_pack import cfg, make_tree, photo


def _pack_cli(src, out) -> int:
    return main(["pack", str(src), str(out), "--size", "32", "--workers", "1", "--quiet"])


def test_finding_1_failed_pack_leaves_nothing_that_looks_complete(tmp_path, capsys):
    src = make_tree(tmp_path / "src", {"ann": 2, "b\tc": 2, "zed": 2})  # fails at the tab, half-way
    assert _pack_cli(src, tmp_path / "out") == 2
    assert "contains a tab" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no out, no out.partial
    # a set pack started but did not finish (its report or a .tmp there, no manifest) is refused
    assert _pack_cli(make_tree(tmp_path / "good", {"ann": 2, "bob": 2}), tmp_path / "rec") == 0
    (tmp_path / "rec" / "manifest.json").unlink()
    capsys.readouterr()
    assert main(["rec-info", str(tmp_path / "rec")]) == 2
    assert "pack did not finish writing this set" in capsys.readouterr().err
    with pytest.raises(DataError, match="pack did not finish"):
        FaceRecordSet(tmp_path / "rec")


def test_finding_1_foreign_set_without_manifest_is_read_as_unverified(tmp_path, capsys):
    (tmp_path / "mx").mkdir()
    with InsightFaceWriter(tmp_path / "mx") as w:  # what MXNet/InsightFace tools write: no manifest
        for label in (0, 1):
            w.add(cv2.imencode(".jpg", photo(label, 32, 32))[1].tobytes(), label)
    write_property(tmp_path / "mx" / "property", 2, 32, 32)
    assert main(["rec-info", str(tmp_path / "mx")]) == 0
    out = capsys.readouterr()
    assert "UNVERIFIED" in out.err and "NONE: not written by facepipe pack" in out.out
    assert FaceRecordSet(tmp_path / "mx").verified is False


def test_finding_2_failed_pack_keeps_the_previous_dataset_intact(tmp_path, capsys):
    assert _pack_cli(make_tree(tmp_path / "good", {"ann": 2, "bob": 2}), tmp_path / "out") == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    assert _pack_cli(make_tree(tmp_path / "bad", {"ann": 2, "b\tc": 2}), tmp_path / "out") == 2
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    assert not (tmp_path / "out.partial").exists()
    # and a folder that is not a facepipe dataset is never replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert _pack_cli(tmp_path / "good", tmp_path / "mine") == 2
    assert "refusing to replace it" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def _set(folder, payloads):
    folder.mkdir()
    with InsightFaceWriter(folder) as w:
        for label, payload in enumerate(payloads):
            w.add(payload, label)
    write_property(folder / "property", len(payloads), 32, 32)
    return folder / "train.rec"


def test_finding_4_unpack_of_an_undecodable_payload_fails_and_writes_nothing(tmp_path, capsys):
    good = cv2.imencode(".jpg", photo(0, 32, 32))[1].tobytes()
    for name, bad in (("garbage", b"not an image at all"), ("truncated", good[: len(good) // 2])):
        rec = _set(tmp_path / name, [good, bad])
        assert main(["unpack", str(rec), str(tmp_path / f"{name}-tree"), "--quiet"]) == 2
        assert "train.rec, byte offset" in capsys.readouterr().err
        assert not (tmp_path / f"{name}-tree").exists() and not (tmp_path / f"{name}-tree.partial").exists()


def test_finding_8_tiny_images_are_skipped_by_pack(tmp_path):
    from facepipe.data.pack import pack

    src = make_tree(tmp_path / "src", {"ann": 2, "bob": 2})
    cv2.imwrite(str(src / "ann" / "tiny.png"), np.zeros((1, 1, 3), np.uint8))
    report = pack(cfg(), src, tmp_path / "out", progress=False)
    assert report["images_packed"] == 4
    assert [s["reason"] for s in report["skipped"]] == ["too small: 1x1 px (expected at least 8 a side)"]


def test_finding_8_property_size_disagreeing_with_the_images_is_flagged(tmp_path):
    rec = _set(tmp_path / "ds", [cv2.imencode(".jpg", photo(i, 32, 32))[1].tobytes() for i in range(2)])
    write_property(rec.parent / "property", 2, 112, 112)
    with pytest.raises(DataError, match=r"property, line 1: says images are 112x112, but the first image .* 32x32"):
        FaceRecordSet(rec.parent)


@pytest.mark.timeout(60)
def test_finding_11_pack_skips_a_fifo_named_jpg_instead_of_blocking(tmp_path):
    from facepipe.data.pack import pack

    src = make_tree(tmp_path / "src", {"ann": 2, "bob": 2})
    os.mkfifo(src / "ann" / "pipe.jpg")
    report = pack(cfg(), src, tmp_path / "out", progress=False)
    assert report["images_packed"] == 4
    assert [(s["file"], s["reason"]) for s in report["skipped"]] == [
        ("ann/pipe.jpg", "unreadable: not a regular file")]
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["num_images"] == 4
