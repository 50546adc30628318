"""Synthetic data: layout, labels that match the drawings, determinism, identity stability, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from facepipe.cli import main
from facepipe.data.labels import load_split, read_labels
from facepipe.data.synth import (ARCFACE_TEMPLATE, SynthConfig, identity_rng, make_identity,
                                 render_face_image, synthesize)
from facepipe.errors import ConfigError
from facepipe.manifest import read_manifest
from facepipe.run_logger import MemoryLogger

TINY = dict(identities=3, images=3, scenes=4, eval_identities=2, pair_folds=1, pairs_per_fold=3,
            scene_size=128, faces_per_scene_max=3)


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "manifest.json"}


def test_identity_folders_scenes_report_and_manifest(synth_small, synth_small_config):
    cfg = synth_small_config
    ids = sorted(p.name for p in (synth_small / "faces").iterdir())
    assert len(ids) == cfg.identities
    for name in ids:
        files = sorted(p.name for p in (synth_small / "faces" / name).iterdir())
        assert files == [f"{name}_{k:04d}.jpg" for k in range(1, cfg.images + 1)]
    face = cv2.imread(str(synth_small / "faces" / ids[0] / f"{ids[0]}_0001.jpg"))
    assert face.shape == (cfg.face_size, cfg.face_size, 3)
    assert len(list((synth_small / "faces_eval").iterdir())) == cfg.eval_identities

    report = json.loads((synth_small / "synth_report.json").read_text())
    assert report["face_images"] == cfg.identities * cfg.images
    assert sum(report["scenes"].values()) == cfg.scenes
    assert report["scenes"]["val"] >= 1 and report["scenes"]["test"] >= 1
    preview = cv2.imread(str(synth_small / "preview.png"))
    assert preview is not None and preview.shape[1] == 8 * 64
    manifest = read_manifest(synth_small, verify=True)
    assert manifest["kind"] == "synth" and "detection/train/label.txt" in manifest["files"]


def test_scene_labels_match_the_images(synth_small, synth_small_config):
    total_faces, small, visible_checked = 0, 0, 0
    for split in ("train", "val", "test"):
        folder = synth_small / "detection" / split
        images, report = load_split(folder, strict=True)
        # Labels are clean: nothing clipped or dropped, every image file labelled.
        assert report["boxes_clipped"] == report["boxes_dropped_zero_area"] == report["boxes_dropped_outside"] == 0
        assert sorted(i.path for i in images) == sorted(p.name for p in (folder / "images").iterdir())
        for image in images:
            h, w = cv2.imread(str(folder / "images" / image.path)).shape[:2]
            for face in image.faces:
                total_faces += 1
                x, y, bw, bh = face.box
                assert 0 <= x and 0 <= y and x + bw <= w and y + bh <= h
                small += max(bw, bh) < 32
                if face.landmarks is None:
                    assert max(bw, bh) < synth_small_config.landmark_min_face
                    continue
                lm = face.landmarks
                margin = 0.1 * max(bw, bh)
                assert (lm[:, 0] >= x - margin).all() and (lm[:, 0] <= x + bw + margin).all()
                assert (lm[:, 1] >= y - margin).all() and (lm[:, 1] <= y + bh + margin).all()
                # Order: left eye, right eye, nose, left mouth corner, right mouth corner (image left).
                assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]
                assert lm[:2, 1].mean() < lm[2, 1] < lm[3:, 1].mean()
                visible_checked += 1
    assert total_faces > synth_small_config.scenes and small > 0 and visible_checked > 0


def test_face_pixels_differ_from_background_at_the_labelled_boxes(synth_small):
    """A box is where a face was drawn: skin-and-feature pixels, not untouched background."""
    folder = synth_small / "detection" / "train"
    images = read_labels(folder / "label.txt")
    hits = []
    for image in images:
        img = cv2.imread(str(folder / "images" / image.path)).astype(np.float32)
        for face in image.faces:
            if face.landmarks is None or (face.landmark_flags != 0).any():
                continue
            (lx, ly), (rx, ry) = face.landmarks[0], face.landmarks[1]
            # The eye whites are bright, the pupils dark: the eye region has strong contrast.
            r = max(2, int(0.08 * face.box[2]))
            patch = img[int(ly) - r:int(ly) + r + 1, int(lx) - r:int(lx) + r + 1]
            hits.append(patch.max() - patch.min() > 60)
    assert len(hits) > 10 and np.mean(hits) > 0.8


def test_aligned_crops_put_landmarks_near_the_arcface_template():
    ident = make_identity(identity_rng(0, 7))
    errors = []
    for k in range(20):
        _, lm = render_face_image(ident, np.random.default_rng([1, k]), size=112)
        errors.append(np.abs(lm - ARCFACE_TEMPLATE).mean())
    assert np.mean(errors) < 6.0
    _, lm = render_face_image(ident, np.random.default_rng(0), size=56, nuisance=0.0)
    assert np.abs(lm - ARCFACE_TEMPLATE / 2).max() < 4.0


def _gray_features(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    feats, labels, colours = [], [], []
    for i, person in enumerate(sorted(folder.iterdir())):
        for f in sorted(person.iterdir()):
            img = cv2.imread(str(f))
            g = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[24:104, 20:92]
            g = cv2.resize(g, (24, 28), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
            feats.append((g - g.mean()) / (g.std() + 1e-6))
            colours.append(img[30:100, 25:87].reshape(-1, 3).mean(0))
            labels.append(i)
    return np.array(feats), np.array(colours), np.array(labels)


def _nearest_neighbour_accuracy(features, labels) -> float:
    d = ((features[:, None] - features[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    return float((labels[d.argmin(1)] == labels).mean())


def test_identity_is_stable_across_images_but_not_given_away_by_colour(synth_small):
    feats, colours, labels = _gray_features(synth_small / "faces")
    d = ((feats[:, None] - feats[None]) ** 2).sum(-1)
    same = (labels[:, None] == labels[None]) & ~np.eye(len(labels), dtype=bool)
    assert d[same].mean() < 0.8 * d[labels[:, None] != labels[None]].mean()
    chance = 1 / len(set(labels))
    by_shape = _nearest_neighbour_accuracy(feats, labels)
    by_colour = _nearest_neighbour_accuracy(colours, labels)
    # Geometry identifies people well above chance; mean colour alone does much worse.
    assert by_shape > 5 * chance and by_colour < 0.5 * by_shape


def test_same_seed_same_bytes_whatever_the_worker_count(tmp_path):
    a = synthesize(SynthConfig(**TINY, seed=5), tmp_path / "a")
    synthesize(SynthConfig(**TINY, seed=5, workers=2), tmp_path / "b")
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")
    synthesize(SynthConfig(**TINY, seed=6), tmp_path / "c")
    other = _tree(tmp_path / "c")
    assert other.keys() == _tree(tmp_path / "a").keys()
    assert sum(other[k] != v for k, v in _tree(tmp_path / "a").items()) > len(other) // 2
    assert a["face_images"] == 9 and a["pairs"] == 6


def test_pairs_file_is_lfw_format_over_held_out_identities(synth_small, synth_small_config):
    cfg = synth_small_config
    lines = (synth_small / "faces_pairs.txt").read_text().splitlines()
    assert lines[0] == f"{cfg.pair_folds}\t{cfg.pairs_per_fold}"
    body = lines[1:]
    assert len(body) == cfg.pair_folds * cfg.pairs_per_fold * 2
    eval_root = synth_small / "faces_eval"
    for fold in range(cfg.pair_folds):
        chunk = body[fold * 2 * cfg.pairs_per_fold:(fold + 1) * 2 * cfg.pairs_per_fold]
        for n, line in enumerate(chunk):
            parts = line.split("\t")
            if n < cfg.pairs_per_fold:
                name, i, j = parts
                files = [(name, int(i)), (name, int(j))]
                assert i != j
            else:
                n1, i, n2, j = parts
                files = [(n1, int(i)), (n2, int(j))]
                assert n1 != n2
            for name, k in files:
                assert (eval_root / name / f"{name}_{k:04d}.jpg").is_file()
    # Held-out means held out: the eval images are not training images.
    eval_bytes = {p.read_bytes() for p in eval_root.rglob("*.jpg")}
    assert not eval_bytes & {p.read_bytes() for p in (synth_small / "faces").rglob("*.jpg")}


def test_cli_synth_flags_and_sets(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["synth", str(out), "--identities", "2", "--images", "2", "--scenes", "2", "--seed", "3",
               "--set", "nuisance=0.5", "--set", "eval_identities=0"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["face_images"] == 4 and summary["pairs"] == 0
    report = json.loads((out / "synth_report.json").read_text())
    assert report["config"]["nuisance"] == 0.5 and report["config"]["seed"] == 3
    assert not (out / "faces_pairs.txt").exists()
    # Running again over its own output replaces it.
    assert main(["synth", str(out), "--identities", "1", "--images", "1", "--scenes", "1"]) == 0
    assert len(list((out / "faces").iterdir())) == 1


def test_cli_rejects_bad_config_with_the_key_named(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "o"), "--set", "colour=red"]) == 2
    assert "unknown key(s) ['colour']" in capsys.readouterr().err
    assert main(["synth", str(tmp_path / "o"), "--set", "faces_per_scene_min=5",
                 "--set", "faces_per_scene_max=2"]) == 2
    assert "faces_per_scene_min (5) is above faces_per_scene_max (2)" in capsys.readouterr().err
    job = tmp_path / "job.yaml"
    job.write_text("synth:\n  identities: 0\n")
    assert main(["synth", str(tmp_path / "o"), "--config", str(job)]) == 2
    assert "SynthConfig.identities: 0 is out of range" in capsys.readouterr().err


def test_refuses_a_folder_that_is_not_a_synth_output(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not empty and not an earlier synth output"):
        synthesize(SynthConfig(**TINY), tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "keep me"
    other = tmp_path / "packed"  # another step's complete output keeps its manifest
    other.mkdir()
    (other / "manifest.json").write_text('{"kind": "pack", "files": {}}')
    with pytest.raises(ConfigError):
        synthesize(SynthConfig(**TINY), other)
    assert (other / "manifest.json").exists()


def test_reports_to_the_logger(tmp_path):
    logger = MemoryLogger()
    synthesize(SynthConfig(**{**TINY, "scenes": 0, "eval_identities": 0}), tmp_path / "o", logger=logger)
    assert logger.params == {}  # the edge logs the config (facepipe.edge.call_step)
    metrics = {k: v for k, v, _ in logger.metrics}
    assert metrics["face_images"] == 9 and metrics["faces_per_s"] > 0
    assert not read_labels(tmp_path / "o" / "detection" / "train" / "label.txt")


def test_every_split_gets_scenes_even_when_few_are_asked_for():
    from facepipe.data.synth import split_of

    cfg = SynthConfig(scenes=5)
    assert [split_of(cfg, i) for i in range(5)] == ["train"] * 3 + ["val", "test"]
    cfg = SynthConfig(scenes=100, test_fraction=0.0)
    splits = [split_of(cfg, i) for i in range(100)]
    assert splits.count("val") == 10 and splits.count("test") == 0
