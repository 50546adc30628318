"""The pipeline's evaluate step: one metrics.json with stable keys, plots, report; skipped parts recorded."""

from __future__ import annotations

import json
import re

from facepipe.evaluation.pipeline_eval import STABLE_KEYS, EvaluateConfig, evaluate_pipeline
from facepipe.gallery.build import GalleryConfig, build_gallery


def test_evaluate_step_on_synthetic_data(gallery_data, trained_recognizer, tmp_path):
    out = tmp_path / "eval"
    metrics = evaluate_pipeline(EvaluateConfig(enrol_per_identity=2), gallery_data["synth"], None,
                                trained_recognizer, None, out)
    on_disk = json.loads((out / "metrics.json").read_text())
    assert set(STABLE_KEYS) <= set(on_disk)
    assert on_disk["detection.ap50"] is None
    assert on_disk["evaluate.skipped"] == {"detection": "no detector given"}
    assert 0.5 <= metrics["verification.accuracy"] <= 1.0
    # Enrolled people were in training: identification of their other images is near perfect.
    assert metrics["identification.rank1"] >= 0.9
    assert metrics["identification.num_nonmated"] == 12 * 20  # faces_eval people are the distractors
    html = (out / "report.html").read_text()
    images = re.findall(r"<img src='([^']+)'", html)
    assert {"identification/cmc.png", "verification/roc.png"} <= set(images)
    assert all((out / p).is_file() for p in images)
    assert (out / "report.md").is_file() and (out / "manifest.json").is_file()
    # no detector: every face center-cropped, and said so per part
    assert metrics["identification.alignment.fallback_no_detector"] == metrics["identification.alignment.fallback"] > 0
    assert metrics["verification.alignment.fallback_rate"] == 1.0
    assert metrics["identification.far_at_gallery_threshold"] is not None


def test_evaluate_step_with_a_built_gallery_uses_the_images_it_did_not_enrol(gallery_data, trained_recognizer,
                                                                          tmp_path):
    gallery = tmp_path / "gallery"
    build_gallery(GalleryConfig(max_images_per_identity=3), gallery_data["synth"] / "faces", None,
                  trained_recognizer, gallery)
    metrics = evaluate_pipeline(EvaluateConfig(verification=False), gallery_data["synth"], None,
                                trained_recognizer, gallery, tmp_path / "eval")
    assert metrics["identification.num_mated"] == 24 * (20 - 3)
    assert metrics["identification.num_gallery"] == 24
    assert metrics["verification.accuracy"] is None
    assert metrics["evaluate.skipped"]["verification"] == "disabled in the config"
