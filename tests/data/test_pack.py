"""`facepipe pack`, `rec-info`, `unpack`: what a user gets from an identity tree or a .lst."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from facepipe.cli import main
from facepipe.config import load_config
from facepipe.data.insightface import FaceRecordSet, read_lst, read_property
from facepipe.data.pack import PackConfig, jpeg_complete, jpeg_info, pack
from facepipe.errors import ConfigError, DataError
from facepipe.manifest import read_manifest
from facepipe.run_logger import MemoryLogger


def photo(seed: int, h: int = 90, w: int = 70) -> np.ndarray:
    """A non-square photo with a distinct colour block in the centre (what a center-crop keeps)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 60, w, dtype=np.float32)[None, :, None] + rng.integers(0, 40, 3)
    img = np.broadcast_to(ramp, (h, w, 3)).astype(np.uint8).copy()
    cy, cx = h // 2, w // 2
    img[cy - 15:cy + 15, cx - 15:cx + 15] = [int(v) for v in rng.integers(100, 255, 3)]
    return img


def make_tree(root: Path, counts: dict[str, int], h: int = 90, w: int = 70) -> Path:
    """root/<identity>/<n>.jpg with `counts[identity]` photos each."""
    seed = 0
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for j in range(n):
            cv2.imwrite(str(root / name / f"{j:02d}.jpg"), photo(seed, h, w), [cv2.IMWRITE_JPEG_QUALITY, 95])
            seed += 1
    return root


def huge_png_header() -> bytes:
    """A PNG whose header claims 100000 x 100000 pixels (a decompression bomb)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))


def cfg(**kw) -> PackConfig:
    return load_config(PackConfig, sets={"workers": 1, "size": 32, **kw})


def test_pack_identity_tree(tmp_path):
    src = make_tree(tmp_path / "src", {"bob": 3, "alice": 2, "carol": 1})
    logger = MemoryLogger()
    report = pack(cfg(), src, tmp_path / "out", logger=logger, progress=False)
    out = tmp_path / "out"
    assert (report["images_packed"], report["identities_packed"], report["skipped_count"]) == (6, 3, 0)
    assert read_property(out / "property") == (3, 32, 32)
    # identities in name order, images in name order; the .lst says which file became which record
    _, entries = read_lst(out / "train.lst")
    assert [(e.path, e.label) for e in entries] == [
        ("alice/00.jpg", 0), ("alice/01.jpg", 0), ("bob/00.jpg", 1), ("bob/01.jpg", 1), ("bob/02.jpg", 1),
        ("carol/00.jpg", 2)]
    rs = FaceRecordSet(out)
    assert rs.labels.tolist() == [0, 0, 1, 1, 1, 2] and rs.image_size == (32, 32)
    img, label = rs.decode(5)  # carol's photo: seed 5; center crop 70x70 then resize to 32
    src_img = cv2.imread(str(src / "carol" / "00.jpg"))
    expected = cv2.resize(src_img[10:80, :], (32, 32), interpolation=cv2.INTER_AREA)
    assert img.shape == (32, 32, 3) and np.abs(img.astype(int) - expected.astype(int)).mean() < 3
    block = photo(5)[45, 35]  # the centre block's colour lands in the centre, not the crop's edge
    assert np.abs(img[16, 16].astype(int) - block).max() < 12 and np.abs(img[1, 16].astype(int) - block).min() > 40
    manifest = read_manifest(out, verify=True)
    assert set(manifest["files"]) == {"train.rec", "train.idx", "train.lst", "property", "pack_report.json"}
    assert json.loads((out / "pack_report.json").read_text())["images_packed"] == 6
    # Params are the edge's to log (facepipe.edge.call_step), not the step's.
    assert ("images_packed", 6.0, None) in logger.metrics and logger.params == {}


def test_same_input_gives_byte_identical_output_for_any_worker_count(tmp_path):
    src = make_tree(tmp_path / "src", {f"id{i}": 4 for i in range(6)})
    pack(cfg(workers=1), src, tmp_path / "a", progress=False)
    pack(cfg(workers=2), src, tmp_path / "b", progress=False)
    for name in ("train.rec", "train.idx", "train.lst", "property", "pack_report.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_jpegs_already_at_size_pass_through_unchanged(tmp_path):
    src = make_tree(tmp_path / "src", {"a": 2, "b": 1}, h=32, w=32)
    report = pack(cfg(), src, tmp_path / "out", progress=False)
    assert report["images_passed_through"] == 3 and report["images_reencoded"] == 0
    rs = FaceRecordSet(tmp_path / "out")
    assert rs.read(2)[0] == (src / "b" / "00.jpg").read_bytes()
    # a pre-aligned set is read by threads, not processes: the same bytes either way
    (src / "b" / "01.jpg").write_bytes(cv2.imencode(".jpg", photo(9, 40, 50))[1].tobytes())
    pack(cfg(workers=1), src, tmp_path / "one", progress=False)
    pack(cfg(workers=2), src, tmp_path / "two", progress=False)
    assert (tmp_path / "one" / "train.rec").read_bytes() == (tmp_path / "two" / "train.rec").read_bytes()


def test_bad_inputs_are_skipped_and_reported(tmp_path):
    src = make_tree(tmp_path / "src", {"good": 2, "mixed": 2})
    good = (src / "good" / "00.jpg").read_bytes()
    (src / "mixed" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (src / "mixed" / "corrupt.jpg").write_bytes(good[:2] + b"\x00" * 200)
    (src / "mixed" / "notes.jpg").write_text("not an image at all\n")
    (src / "mixed" / "unreadable.jpg").symlink_to(tmp_path / "gone.jpg")  # root can read any mode bits
    (src / "mixed" / "huge.png").write_bytes(huge_png_header())
    (src / "empty_person").mkdir()
    (src / "stray.jpg").write_bytes(good)
    report = pack(cfg(), src, tmp_path / "out", progress=False)
    reasons = {s["file"]: s["reason"] for s in report["skipped"]}
    assert reasons["mixed/truncated.jpg"].startswith("truncated JPEG")
    assert reasons["mixed/corrupt.jpg"].startswith("corrupt JPEG")
    assert reasons["mixed/notes.jpg"].startswith("not a decodable image")
    assert reasons["mixed/unreadable.jpg"].startswith("unreadable")
    assert reasons["mixed/huge.png"].startswith("not decodable")  # OpenCV refuses 10^10 pixels
    assert reasons["stray.jpg"] == "not inside an identity folder"
    assert report["skipped_count"] == 6
    assert report["identities_dropped"] == [{"identity": "empty_person", "images": 0, "reason": "empty folder"}]
    assert (report["images_packed"], report["identities_packed"]) == (4, 2)
    on_disk = json.loads((tmp_path / "out" / "pack_report.json").read_text())
    assert on_disk["skipped"] == report["skipped"]


def test_min_images_and_duplicates(tmp_path):
    src = make_tree(tmp_path / "src", {"a": 3, "b": 1, "c": 2})
    (src / "c" / "copy.jpg").write_bytes((src / "a" / "00.jpg").read_bytes())
    report = pack(cfg(min_images=3), src, tmp_path / "out", progress=False)
    assert [d["identity"] for d in report["identities_dropped"]] == ["b"]
    assert report["identities_packed"] == 2 and report["images_packed"] == 6
    assert report["duplicate_files"] == 1 and report["duplicates_across_identities"] == 1
    assert report["duplicates"][0]["files"] == ["a/00.jpg", "c/copy.jpg"]
    assert FaceRecordSet(tmp_path / "out").labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_pack_from_im2rec_lst(tmp_path):
    src = make_tree(tmp_path / "imgs", {"x": 2, "y": 2})
    lst = tmp_path / "list.lst"
    lst.write_text("0\t7\timgs/y/00.jpg\n1\t3\timgs/x/00.jpg\n2\t7\timgs/y/01.jpg\n3\t3\timgs/x/01.jpg\n")
    report = pack(cfg(prefix="val"), lst, tmp_path / "out", progress=False)
    assert report["source"] == "lst (im2rec)" and report["identities_packed"] == 2
    _, entries = read_lst(tmp_path / "out" / "val.lst")
    assert [(e.path, e.label) for e in entries] == [
        ("imgs/x/00.jpg", 0), ("imgs/x/01.jpg", 0), ("imgs/y/00.jpg", 1), ("imgs/y/01.jpg", 1)]
    assert len(FaceRecordSet(tmp_path / "out", prefix="val")) == 4
    assert src.exists()


def test_nothing_usable_is_an_error_naming_the_source(tmp_path):
    (tmp_path / "src" / "a").mkdir(parents=True)
    (tmp_path / "src" / "a" / "x.jpg").write_text("text")
    with pytest.raises(DataError, match=r"src: no images packed: 1 file\(s\) seen, 1 skipped"):
        pack(cfg(), tmp_path / "src", tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()
    with pytest.raises(DataError, match="source not found"):
        pack(cfg(), tmp_path / "nowhere", tmp_path / "out", progress=False)


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="PackConfig.quality: 101 is out of range"):
        cfg(quality=101)
    with pytest.raises(ConfigError, match="PackConfig.prefix"):
        cfg(prefix="a/b")
    with pytest.raises(ConfigError, match="PackConfig.detector.*not a file"):
        cfg(detector="/no/such/model.pt")


def test_jpeg_structure_checks():
    ok, buf = cv2.imencode(".jpg", photo(0, 40, 50))
    data = buf.tobytes()
    assert jpeg_info(data) == (50, 40, 3) and jpeg_complete(data)
    assert not jpeg_complete(data[:-100])
    assert jpeg_info(b"\x89PNG....") is None


def test_cli_pack_rec_info_unpack_round_trip(tmp_path, capsys):
    src = make_tree(tmp_path / "src", {"ann": 2, "ben": 3})
    assert main(["pack", str(src), str(tmp_path / "rec"), "--size", "32", "--workers", "2", "--quiet",
                 "--set", "quality=90"]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[0])
    assert summary["images_packed"] == 5 and summary["workers"] == 2
    assert json.loads((tmp_path / "rec" / "pack_report.json").read_text())["config"]["quality"] == 90
    assert main(["rec-info", str(tmp_path / "rec"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["images"], info["identities"], info["image_sizes"], info["layout"]) == (5, 2, {"32x32": 5}, "insightface")
    assert main(["unpack", str(tmp_path / "rec" / "train.rec"), str(tmp_path / "tree"), "--quiet"]) == 0
    capsys.readouterr()
    assert sorted(p.relative_to(tmp_path / "tree").as_posix() for p in (tmp_path / "tree").rglob("*.jpg")) == [
        "ann/00.jpg", "ann/01.jpg", "ben/00.jpg", "ben/01.jpg", "ben/02.jpg"]
    # the unpacked tree packs back to the same records (already 32x32: bytes pass through)
    assert main(["pack", str(tmp_path / "tree"), str(tmp_path / "again"), "--size", "32", "--quiet"]) == 0
    assert (tmp_path / "again" / "train.rec").read_bytes() == (tmp_path / "rec" / "train.rec").read_bytes()


def test_cli_errors_exit_2_with_the_file_named(tmp_path, capsys):
    bad = tmp_path / "bad.rec"
    bad.write_bytes(b"\x00" * 64)
    (tmp_path / "bad.idx").write_text("0\t0\n")
    assert main(["rec-info", str(bad)]) == 2
    assert "bad.rec, byte offset 0: wrong magic" in capsys.readouterr().err
    assert main(["pack", str(tmp_path / "missing"), str(tmp_path / "o")]) == 2
    assert f"{tmp_path / 'missing'}: no such file or folder" in capsys.readouterr().err


def test_workers_default_uses_all_cores(tmp_path):
    src = make_tree(tmp_path / "src", {"a": 3})
    report = pack(load_config(PackConfig, sets={"size": 32}), src, tmp_path / "out", progress=False)
    assert report["workers"] == min(3, len(os.sched_getaffinity(0)))


def test_detector_alignment_is_recorded_per_image(tmp_path):
    """An (untrained) detector model.pt end to end: every image aligned or center-cropped, and the
    report says which, per file."""
    torch = pytest.importorskip("torch")
    from facepipe.config import to_dict
    from facepipe.detection.config import DetectionTrainConfig
    from facepipe.detection.model import build_model

    det_cfg = DetectionTrainConfig()
    torch.manual_seed(0)
    model = build_model(det_cfg).eval()
    model_pt = tmp_path / "detector.pt"
    torch.save({"kind": "detector", "state_dict": model.state_dict(), "config": to_dict(det_cfg)}, model_pt)
    src = make_tree(tmp_path / "src", {"a": 2, "b": 1}, h=64, w=64)
    report = pack(cfg(detector=str(model_pt)), src, tmp_path / "out", progress=False)
    assert report["images_passed_through"] == 0  # alignment always re-renders the face
    assert [a["file"] for a in report["alignment"]] == ["a/00.jpg", "a/01.jpg", "b/00.jpg"]
    assert all(isinstance(a["landmarks"], bool) and a["status"] for a in report["alignment"])
    assert report["aligned_with_landmarks"] + report["aligned_without_landmarks"] == 3
    assert FaceRecordSet(tmp_path / "out").decode(2)[0].shape == (32, 32, 3)
    summary = {k: v for k, v in report.items() if k.startswith("alignment.")}  # the fallback, counted by reason
    assert summary["alignment.aligned"] == report["aligned_with_landmarks"]
    assert summary["alignment.fallback"] == report["aligned_without_landmarks"]
    assert json.loads((tmp_path / "out" / "pack_report.json").read_text())["alignment.fallback"] == summary["alignment.fallback"]
    assert sum(v for k, v in summary.items() if k.startswith("alignment.fallback_") and k != "alignment.fallback_rate") \
        == summary["alignment.fallback"]


@pytest.mark.parametrize("workers", [1, 2])
def test_center_crop_share_is_kept_by_plain_packing(tmp_path, workers):
    from facepipe.data.crop import center_crop_resize

    src = make_tree(tmp_path / "src", {"a": 2}, h=90, w=70)
    pack(cfg(center_crop=0.5, workers=workers), src, tmp_path / "out", progress=False)
    photo_ = cv2.imread(str(src / "a" / "01.jpg"))
    got = FaceRecordSet(tmp_path / "out").decode(1)[0].astype(int)
    half = np.abs(got - center_crop_resize(photo_, 32, 0.5).astype(int)).mean()
    whole = np.abs(got - center_crop_resize(photo_, 32, 1.0).astype(int)).mean()
    assert half < 5 and half < whole / 2, (half, whole)  # JPEG noise vs another crop
    # photos already 32 px are cropped too, not passed through as they are
    small = make_tree(tmp_path / "small", {"b": 2}, h=32, w=32)
    assert pack(cfg(center_crop=0.5), small, tmp_path / "out2", progress=False)["images_passed_through"] == 0
    assert pack(cfg(), small, tmp_path / "out3", progress=False)["images_passed_through"] == 2


def test_pack_from_insightface_lst_and_unpack_by_class(tmp_path, capsys):
    make_tree(tmp_path / "imgs", {"p": 1, "q": 2})
    lst = tmp_path / "faces.lst"
    lst.write_text(f"1\t{tmp_path}/imgs/q/00.jpg\t4\n1\timgs/p/00.jpg\t2\n1\timgs/q/01.jpg\t4\n")
    report = pack(cfg(), lst, tmp_path / "out", progress=False)
    assert report["source"] == "lst (insightface)" and report["identities_packed"] == 2
    assert FaceRecordSet(tmp_path / "out").labels.tolist() == [0, 1, 1]
    assert main(["unpack", str(tmp_path / "out"), str(tmp_path / "tree"), "--names", "class", "--quiet"]) == 0
    assert sorted(p.relative_to(tmp_path / "tree").as_posix() for p in (tmp_path / "tree").rglob("*.jpg")) == [
        "00000/00000001.jpg", "00001/00000002.jpg", "00001/00000003.jpg"]
    assert main(["rec-info", str(tmp_path / "out" / "train.rec")]) == 0
    text = capsys.readouterr().out
    assert "images        3" in text and "identities    2" in text and "32x32 x3" in text


def test_insightface_lst_landmarks_and_boxes_align_unaligned_faces(tmp_path):
    """face2rec2-style lines: aligned=0 with a box and landmarks (x1..x5 then y1..y5)."""
    from facepipe.gallery.align import align_face

    make_tree(tmp_path / "imgs", {"p": 2}, h=120, w=100)
    xs, ys = [40, 60, 50, 42, 58], [50, 50, 62, 74, 74]
    landmarks = "\t".join(str(v) for v in xs + ys)
    lst = tmp_path / "faces.lst"
    lst.write_text(f"0\timgs/p/00.jpg\t0\t30\t40\t70\t85\t{landmarks}\n"
                   f"0\timgs/p/01.jpg\t0\t30\t40\t70\t85\n")
    report = pack(cfg(size=32), lst, tmp_path / "out", progress=False)
    assert report["alignment"] == [{"file": "imgs/p/00.jpg", "landmarks": True, "status": "lst_landmarks"},
                                   {"file": "imgs/p/01.jpg", "landmarks": False, "status": "lst_box"}]
    rs = FaceRecordSet(tmp_path / "out")
    expected, used = align_face(cv2.imread(str(tmp_path / "imgs" / "p" / "00.jpg")), np.array(list(zip(xs, ys))), 32)
    assert used and np.abs(rs.decode(0)[0].astype(int) - expected.astype(int)).mean() < 3
    # the box widened by 22 px a side: x 8..92, y 18..107 of the 100x120 photo
    box = cv2.resize(cv2.imread(str(tmp_path / "imgs" / "p" / "01.jpg"))[18:107, 8:92], (32, 32))
    assert np.abs(rs.decode(1)[0].astype(int) - box.astype(int)).mean() < 3


def test_malformed_lst_geometry_names_the_line(tmp_path):
    lst = tmp_path / "faces.lst"
    lst.write_text("0\ta.jpg\t0\t1\t2\t3\t4\n0\tb.jpg\t0\t1\t2\t3\n")
    with pytest.raises(DataError, match=r"faces\.lst, line 2: expected 4 box values, or 4 box and 10 landmark"):
        pack(cfg(), lst, tmp_path / "out", progress=False)


def test_background_listing_hands_on_errors_and_stops_early():
    from facepipe.data.pack import _prefetch

    def listing():
        yield from range(3)
        raise OSError("folder vanished")

    got = []
    with pytest.raises(OSError, match="folder vanished"):
        for item in _prefetch(listing()):
            got.append(item)
    assert got == [0, 1, 2]
    endless = _prefetch(iter(range(10**9)), ahead=4)
    assert next(endless) == 0
    endless.close()  # the producer thread stops instead of running on


def test_rec_info_verify_checks_the_manifest(tmp_path, capsys):
    src = make_tree(tmp_path / "src", {"a": 2})
    pack(cfg(), src, tmp_path / "out", progress=False)
    assert main(["rec-info", str(tmp_path / "out"), "--verify"]) == 0
    assert "every file matches" in capsys.readouterr().out
    lst = tmp_path / "out" / "train.lst"
    lst.write_text(lst.read_text().replace("a/01.jpg", "a/99.jpg"))
    assert main(["rec-info", str(tmp_path / "out"), "--verify"]) == 2
    assert "train.lst: checksum mismatch" in capsys.readouterr().err


def test_real_lfw_photos(tmp_path, lfw_dev):
    """A few real identities (250x250 news photos): all packed, center-cropped to 112."""
    names = sorted(p.name for p in (lfw_dev / "images").iterdir())[:40]
    src = tmp_path / "src"
    src.mkdir()
    for name in names:
        (src / name).symlink_to(lfw_dev / "images" / name, target_is_directory=True)
    n_files = sum(len(list((src / name).iterdir())) for name in names)
    report = pack(load_config(PackConfig, sets={"workers": 2}), src, tmp_path / "out", progress=False)
    assert (report["images_packed"], report["identities_packed"], report["skipped_count"]) == (n_files, 40, 0)
    rs = FaceRecordSet(tmp_path / "out")
    image, label = rs.decode(len(rs) - 1)
    assert image.shape == (112, 112, 3) and label == 39 and rs.image_size == (112, 112)


def test_output_inside_the_source_tree_is_refused(tmp_path):
    src = make_tree(tmp_path / "src", {"a": 1})
    with pytest.raises(DataError, match="output folder .* is inside the source tree"):
        pack(cfg(), src, src / "packed", progress=False)


def test_worker_pool_after_opencv_threads_ran_in_the_caller(tmp_path):
    """Packing with processes from a caller whose OpenCV thread pool is running must not hang
    (a forked worker once deadlocked in cv2.setNumThreads). Run in a subprocess with a timeout."""
    src = make_tree(tmp_path / "src", {f"id{i}": 6 for i in range(4)})
    script = f"""
import cv2, numpy as np
from facepipe.config import load_config
from facepipe.data.pack import PackConfig, pack
cv2.setNumThreads(2)
big = np.random.default_rng(0).integers(0, 255, (2000, 2000, 3), dtype=np.uint8)
for i in range(3):
    for _ in range(20):
        cv2.resize(big, (1000, 1000))  # keeps OpenCV's worker threads busy in this process
    pack(load_config(PackConfig, sets={{"workers": 2, "size": 32}}), {str(src)!r}, {str(tmp_path)!r} + f"/out{{i}}", progress=False)
print("ok")
"""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_synth_and_pack_commands_run_without_torch(tmp_path):
    """The data image has no torch: synth, pack and rec-info must never import it."""
    import os
    import subprocess
    import sys

    blocker = tmp_path / "no-torch" / "torch"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker.parent), str(root / "src"), str(root)])}
    env.pop("MLFLOW_TRACKING_URI", None)
    for args in (["synth", str(tmp_path / "data"), "--identities", "3", "--images", "3", "--scenes", "2"],
                 ["pack", str(tmp_path / "data" / "faces"), str(tmp_path / "rec"), "--size", "32", "--workers", "1",
                  "--quiet"],
                 ["rec-info", str(tmp_path / "rec")]):
        done = subprocess.run([sys.executable, "-m", "facepipe.cli", *args], env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, f"facepipe {args[0]}: {done.stderr[-3000:]}"
