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
    # aligned unless no face was found or its landmarks failed the plausibility check; all counted
    assert all(r["used_landmarks"] == (r["fallback"] is None) for r in g.images)
    assert all(r["fallback"] in (None, "implausible_landmarks") for r in g.images if r["status"] != "no_face")
    fallbacks = [r["fallback"] for r in g.images if r["fallback"]]
    align = report
    assert align["alignment.aligned"] + align["alignment.fallback"] == 6
    assert align["alignment.fallback"] == len(fallbacks)
    assert align.get("alignment.fallback_no_face", 0) == statuses.count("no_face")
    summary = recognize(RecognizeConfig(score_threshold=0.9, annotate=False), data, out, untrained_detector,
                        untrained_recognizer, tmp_path / "rec")
    results = json.loads((tmp_path / "rec" / "results.json").read_text())
    assert summary["detector_digest"] == g.meta["detector_digest"]
    assert summary["faces"] == sum(len(r["faces"]) for r in results["images"])
    faces = [f for r in results["images"] for f in r["faces"]]
    assert all(len(f["box"]) == 4 and (f["alignment"] == "landmarks") == (f["fallback"] is None) for f in faces)
    assert summary["recognize.alignment.aligned"] + summary["recognize.alignment.fallback"] == len(faces)
