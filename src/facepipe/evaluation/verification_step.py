"""The verification step: a recognizer model.pt scores a pairs set (LFW pairs.txt or InsightFace .bin).

Writes metrics.json, scores.csv, roc.png, det.png and manifest.json; the metrics themselves are
`facepipe.evaluation.verification`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from facepipe.evaluation.verification import plot_roc_det, verification_metrics
from facepipe.run_logger import NullLogger


def face_aligner(recognizer, detector_path=None, center_crop: float | None = None):
    """The aligner for verification faces: detector landmarks, else (or where they fail) a center
    crop of the share the recognizer was trained on."""
    from facepipe.gallery.align import FaceAligner
    from facepipe.gallery.build import fallback_crop

    return FaceAligner(detector_path, center_crop=fallback_crop(center_crop, recognizer))


def evaluate_verification(model_path, pairs_path, images_dir, out_dir, detector_path=None,
                          center_crop: float | None = None, logger=NullLogger()) -> dict:
    """Score every pair with the recognizer at `model_path`; write metrics.json, scores.csv,
    roc.png, det.png and manifest.json to `out_dir`; return the metrics."""
    from facepipe.evaluation.pairs import load_verification_set
    from facepipe.manifest import write_manifest
    from facepipe.recognition.embed import Recognizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    recognizer = Recognizer.load(model_path)
    aligner = face_aligner(recognizer, detector_path, center_crop)
    size = recognizer.input_size
    target = load_verification_set(pairs_path, images_dir, lambda image: aligner.align(image, size)[0])
    emb = recognizer.embed(target.faces)
    scores = np.sum(emb[target.left] * emb[target.right], axis=1)
    found = verification_metrics(scores, target.same, target.folds)
    metrics = {f"verification.{k}": v for k, v in found.items()}
    metrics["verification.pairs"] = int(len(scores))
    metrics.update(aligner.summary("verification."))
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    with open(out_dir / "scores.csv", "w") as f:
        for s, y in zip(scores, target.same):
            f.write(f"{s:.6f},{int(y)}\n")
    plots = plot_roc_det(scores, target.same, out_dir, Path(pairs_path).name)
    logger.log_metrics({k: v for k, v in metrics.items()})
    for p in [out_dir / "metrics.json", out_dir / "scores.csv", *plots]:
        logger.log_artifact(p)
    write_manifest(out_dir, "verification", {"model_digest": recognizer.digest,
                                             "pairs": str(pairs_path)})
    return metrics

