"""The gallery and recognize with a real (untrained) Detector: digests recorded, every image accounted for."""

from __future__ import annotations

import json
import shutil

import pytest

from facepipe.gallery.build import GalleryConfig, build_gallery
from facepipe.gallery.recognize import RecognizeConfig, recognize
from facepipe.gallery.store import Gallery
from facepipe.manifest import sha256_file


def test_build_and_recognize_with_a_detector(gallery_data, untrained_detector, untrained_recognizer, tmp_path):
    data = tmp_path / "people"
    for name in sorted(p.name for p in gallery_data["gallery"].iterdir())[:3]:
        shutil.copytree(gallery_data["gallery"] / name, data / name, symlinks=True)
    out = tmp_path / "g"
    # An untrained detector finds faces at random: keep images without one as flagged center crops.
    report = build_gallery(GalleryConfig(no_face="center_crop", score_threshold=0.9), data, untrained_detector,
                           untrained_recognizer, out)
    g = Gallery.load(out)
    assert g.meta["detector_digest"] == sha256_file(untrained_detector) and g.meta["alignment"] == "landmarks"
    statuses = [r["status"] for r in g.images]
    assert len(statuses) == 6 and set(statuses) <= {"ok", "several_faces", "no_face"}
    assert len(report["no_face"]) == statuses.count("no_face")
    assert len(report["several_faces"]) == statuses.count("several_faces")
    assert all(r["used_landmarks"] == (r["status"] != "no_face") for r in g.images)
    summary = recognize(RecognizeConfig(score_threshold=0.9, annotate=False), data, out, untrained_detector,
                        untrained_recognizer, tmp_path / "rec")
    results = json.loads((tmp_path / "rec" / "results.json").read_text())
    assert summary["detector_digest"] == g.meta["detector_digest"]
    assert summary["faces"] == sum(len(r["faces"]) for r in results["images"])
    assert all(f["alignment"] == "landmarks" and len(f["box"]) == 4 for r in results["images"] for f in r["faces"])
